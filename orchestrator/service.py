"""What each command does, between the CLI (arguments, rendering, exit codes) and the
machinery (cluster, deploy, preflight, status, stage): the deployment lock, the run
history, the keeper of SSH connections, and opening and closing the session with the nodes.
Nothing here prints."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from . import bench as bench_mod
from . import keeper, state
from . import logs as logs_mod
from .cluster import Deployment, connected
from .deploy import UpOptions, UpResult
from .deploy import down as deploy_down
from .deploy import up as deploy_up
from .errors import InputError, OrchError
from .log import log
from .preflight import CHECKS, Report, run_checks, unknown_skips
from .probe import Api
from .smoke import SmokeResult, run_smoke
from .snapshot import Snapshot
from .status import Status, deployment_status


def resolve_inventory(path: Path | None) -> Path:
    """The inventory given, else the one of the last `orch up`."""
    if path is not None:
        return path
    last = state.last_inventory()
    if last is None:
        raise InputError("no inventory given and no earlier `orch up` remembered; pass INVENTORY")
    if not last.is_file():
        raise InputError(f"the inventory of the last `orch up` ({last}) no longer exists; pass INVENTORY")
    return last


def check_skips(skip: list[str]) -> None:
    bad = unknown_skips(skip)
    if bad:
        raise InputError(f"--skip-checks {', '.join(bad)}: no such check; checks: {', '.join(CHECKS)}")


async def up(dep: Deployment, opts: UpOptions, *, accept_new: bool = False) -> UpResult:
    """Deploy or repair under the deployment's lock; the result goes into the history."""
    name = dep.inv.deployment
    with state.DeploymentLock(name):
        try:
            async with connected(dep, accept_new=accept_new) as s:
                res = await deploy_up(s, opts)
        except OrchError as exc:
            state.append_history(name, {"action": "up", "result": "failed", "error": str(exc)[:500]})
            raise
        except (KeyboardInterrupt, asyncio.CancelledError):
            state.append_history(name, {"action": "up", "result": "interrupted"})
            raise
    state.remember_inventory(dep.inventory_path)
    state.append_history(name, {"action": "up", "changed": res.changed, "reason": res.reason,
                                "seconds": round(res.seconds, 1), "result": "serving",
                                "deployed": res.deployed})
    return res


async def down(dep: Deployment, *, accept_new: bool = False
               ) -> tuple[dict[str, list[str]], dict[str, BaseException]]:
    """Stop the keeper, remove every container of the deployment; (removed per node, the
    nodes not reached)."""
    stopped = keeper.stop(dep.inv.deployment)
    if stopped:
        log.info("stopped the keeper of SSH connections", pids=stopped)
    async with connected(dep, require_all=False, accept_new=accept_new) as s:
        with state.DeploymentLock(dep.inv.deployment):
            removed = await deploy_down(s)
        return removed, dict(s.unreachable)


async def check(dep: Deployment, skip: frozenset[str], *, accept_new: bool = False) -> Report:
    async with connected(dep, require_all=False, accept_new=accept_new) as s:
        fleet = await s.plan(tolerant=True)
        return await run_checks(s, fleet, skip)


async def snapshot(dep: Deployment, *, fresh: bool = False, accept_new: bool = False) -> Snapshot:
    """One look at every node: through this deployment's keeper when one lives (and may be
    used), else over fresh connections, after which a keeper is left for `ssh.persist` s."""
    keep = not (fresh or accept_new) and keeper.usable(dep)
    snap = await keeper.snapshot(dep) if keep else None
    if snap is None:
        async with connected(dep, require_all=False, accept_new=accept_new) as s:
            snap = await s.snapshot()
        if keep and snap.looks:  # a keeper of no connection would only retry and leave
            keeper.spawn(dep)
    return snap


async def status(dep: Deployment, *, probe: bool = True, fresh: bool = False,
                 accept_new: bool = False) -> Status:
    return await deployment_status(dep, await snapshot(dep, fresh=fresh, accept_new=accept_new),
                                   probe)


async def watch_status(dep: Deployment, every: float, show: Callable[[Status], None], *,
                       probe: bool = True, accept_new: bool = False) -> None:
    """Status every `every` seconds over kept connections, until cancelled."""
    async with connected(dep, require_all=False, accept_new=accept_new) as s:
        while True:
            show(await deployment_status(dep, await s.snapshot(kept=True), probe))
            await asyncio.sleep(every)


async def logs(dep: Deployment, nodes: list[str] | None, *, follow: bool, tail: int,
               since: str | None, emit: Callable[[str, str], None], accept_new: bool = False) -> None:
    async with connected(dep, require_all=False, accept_new=accept_new) as s:
        for bad, err in s.unreachable.items():
            emit(bad, f"[orch] unreachable: {err}")
        if follow:
            await logs_mod.follow(s, nodes, tail, emit)
        else:
            for _, name, text in await logs_mod.collect(s, nodes, tail, since):
                emit(name, text)


async def smoke(dep: Deployment, vision: bool | None, max_tokens: int, *,
                accept_new: bool = False) -> list[SmokeResult]:
    async with connected(dep, accept_new=accept_new) as s:
        fleet = await s.plan()
    g = fleet.groups[0]
    async with Api(fleet.api_url, dep.api_key, timeout=60) as api:
        return await run_smoke(api, fleet.served_name, g.model, vision, max_tokens)


async def bench(dep: Deployment, preset: str, num_prompts: int | None, timeout: float, *,
                accept_new: bool = False) -> tuple[dict[str, object], Path]:
    async with connected(dep, accept_new=accept_new) as s:
        fleet = await s.plan()
        return await bench_mod.run_in_head(s, fleet, preset, num_prompts, timeout)
