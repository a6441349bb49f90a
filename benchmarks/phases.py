"""Where `orch status` spends its time, in-process: the same calls as the command, timed one
by one (wall and this process's CPU):

  connect      cluster.open_session (asyncssh connect to every node, at once)
  facts        the facts script on every node, one SSH exec each (what a fresh status runs)
  containers   this deployment's containers on every node through the runtime's API socket
               (one SSH channel to the socket, no process on the node)
  cli          the same through the CLI (`podman ps`, one SSH exec each): the fallback
  snapshot     Session.snapshot(): facts and containers at once on every node (fresh status)
  kept         Session.snapshot(kept=True) again on the same connections, facts in the
               long-lived shell per node: what a keeper does per request
  keeper       one request to this deployment's keeper (keeper.snapshot; started here)
  api          probe.Api.state on the head (connection refused when nothing runs)

    python benchmarks/phases.py INVENTORY [--reps 5] [--profile FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator import keeper, runtime  # noqa: E402
from orchestrator.cluster import Deployment, Session, open_session  # noqa: E402
from orchestrator.log import setup  # noqa: E402
from orchestrator.probe import Api  # noqa: E402
from orchestrator.remote import Host  # noqa: E402


class Clock:
    def __init__(self) -> None:
        self.out: dict[str, dict[str, float]] = {}

    def __call__(self, name: str):  # type: ignore[no-untyped-def]
        clock = self

        class _C:
            def __enter__(self) -> None:
                self.w, self.c = time.perf_counter(), time.process_time()

            def __exit__(self, *a: object) -> None:
                clock.out[name] = {"wall": time.perf_counter() - self.w,
                                   "cpu": time.process_time() - self.c}
        return _C()


def _cli(s: Session) -> Any:
    async def one(h: Host) -> Any:
        return await h.run(runtime.ps_ids(s.runtime, s.dep.inv.deployment, h.name), timeout=60)
    return one


async def one(path: Path) -> dict[str, dict[str, float]]:
    c = Clock()
    dep = Deployment.load(path)
    with c("connect"):
        s = await open_session(dep, require_all=False)
    try:
        with c("facts"):
            await s.each(s.facts)
        with c("containers"):
            await s.each(s.inspect_containers)
        with c("cli"):
            await s.each(_cli(s))
        with c("snapshot"):
            snap = await s.snapshot()
        await s.snapshot(kept=True)  # starts the shells
        with c("kept"):
            await s.snapshot(kept=True)
        if await keeper.snapshot(dep) is None:
            raise SystemExit("no keeper answers: start one first (main does)")
        with c("keeper"):
            await keeper.snapshot(dep)
        plan = dep.plan(snap.nets(dep.inv))
        with c("api"):
            async with Api(plan.api_url, dep.api_key, timeout=5) as api:
                await api.state(plan.served_name)
    finally:
        s.close()
    if s.unreachable:
        raise SystemExit(f"unreachable: {list(s.unreachable)}")
    return c.out


async def _wait_keeper(dep: Deployment, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if await keeper.snapshot(dep) is not None:
            return
        await asyncio.sleep(0.5)
    raise SystemExit("the keeper did not come up")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("inventory", type=Path)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--profile", type=Path, help="cProfile one more run; top functions there")
    a = ap.parse_args()
    setup(quiet=True)
    dep = Deployment.load(a.inventory)
    keeper.spawn(dep)
    asyncio.run(_wait_keeper(dep))
    runs = [asyncio.run(one(a.inventory)) for _ in range(a.reps)]
    res: dict[str, Any] = {"runs": runs}
    if a.profile:
        a.profile.parent.mkdir(parents=True, exist_ok=True)
        pr = cProfile.Profile()
        pr.enable()
        asyncio.run(one(a.inventory))
        pr.disable()
        with a.profile.open("w") as f:
            st = pstats.Stats(pr, stream=f)
            st.sort_stats("tottime").print_stats(25)
            st.sort_stats("cumulative").print_stats(40)
        res["profile"] = str(a.profile)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
