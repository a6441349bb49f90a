"""Launching containers, and the guarantee that a failed or interrupted launch leaves
nothing half-started behind."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from .. import state
from ..cluster import Session
from ..log import log
from ..plan import NodeSpec
from ..runtime import Container
from .containers import collect_tails, group_select, remove


async def launch(s: Session, spec: NodeSpec) -> str:
    """`<runtime> run -d` one planned container (secrets on stdin); its id."""
    h = s.hosts[spec.name]
    log.info("launching", node=spec.name, role=spec.role, container=spec.container)
    env_file = s.dep.secrets.env_file() if (spec.secret_env and s.dep.secrets) else None
    r = await h.run(spec.argv, timeout=300, input=env_file)
    return r.stdout.strip()


class Launches:
    """The launch steps of one group, with its cleanup guaranteed.

    A `run -d` is never cut in half: each launch is shielded from cancellation, and when the
    block fails or is interrupted (Ctrl-C, SIGTERM) the cleanup first waits for launches in
    flight, so no container appears after it; then it saves log tails and removes the group's
    containers on its nodes (those `select` picks; unless keep).  The exception is re-raised."""

    def __init__(self, s: Session, deployment: str, nodes: list[str], keep: bool,
                 select: Callable[[Container], bool] = group_select) -> None:
        self.s, self.deployment, self.nodes, self.keep, self.select = s, deployment, nodes, keep, select
        self._futures: list[asyncio.Future[str]] = []

    async def start(self, spec: NodeSpec) -> str:
        fut = asyncio.ensure_future(launch(self.s, spec))
        self._futures.append(fut)
        return await asyncio.shield(fut)

    async def start_all(self, specs: list[NodeSpec]) -> list[str]:
        futs = [asyncio.ensure_future(launch(self.s, n)) for n in specs]
        self._futures += futs
        return list(await asyncio.shield(asyncio.gather(*futs)))

    async def __aenter__(self) -> Launches:
        return self

    async def __aexit__(self, et: type[BaseException] | None, exc: BaseException | None,
                        tb: object) -> bool:
        if exc is None:
            return False
        pending = [f for f in self._futures if not f.done()]
        if pending:
            await asyncio.wait(pending, timeout=120)
        await asyncio.shield(self._cleanup(exc))
        return False

    async def _cleanup(self, exc: BaseException) -> None:
        try:
            tails = await collect_tails(self.s, self.nodes, self.select)
            if tails:
                where = state.save_log_tails(self.deployment, tails)
                log.warning("saved log tails", path=str(where))
            if self.keep:
                log.warning("leaving the failed group running (--keep-on-failure)")
                return
            removed = await remove(self.s, self.nodes, self.select)
            log.warning("removed the failed group", containers={k: v for k, v in removed.items() if v},
                        cause=type(exc).__name__)
        except Exception as cleanup_exc:  # cleanup must not hide the original failure
            log.error("cleanup after failure failed", error=str(cleanup_exc))
