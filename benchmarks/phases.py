"""Where `orch status` spends its time, in-process: the same calls as the command, timed one
by one (wall and this process's CPU), plus variants that prototype fixes by composing orch's
own functions differently (nothing in orchestrator/ is changed):

  connect      cluster.open_session (asyncssh connect to every node, at once)
  facts        Session.nets: FACTS_SCRIPT on every node (1 SSH exec each)
  ps           Session.each(Session.containers): `podman ps` (+ inspect if any) on every node
  api          probe.Api.state on the head (connection refused when nothing runs)
  --- prototypes ---
  noop_exec    one `true` exec on every node (floor of one round trip: channel + sshd session)
  merged       facts + ps in ONE exec per node (what a merged round trip would cost)

    python benchmarks/phases.py INVENTORY [--reps 5] [--profile FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import shlex
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator import netinfo, runtime  # noqa: E402
from orchestrator.cluster import Deployment, open_session  # noqa: E402
from orchestrator.log import setup  # noqa: E402
from orchestrator.probe import Api  # noqa: E402
from orchestrator.remote import Host  # noqa: E402
from orchestrator.status import status as do_status  # noqa: E402


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


async def one(path: Path) -> dict[str, dict[str, float]]:
    c = Clock()
    with c("load"):
        dep = Deployment.load(path)
    with c("connect"):
        s = await open_session(dep, require_all=False)
    try:
        with c("facts"):
            nets = await s.nets(tolerant=True)
        plan = dep.static_plan(nets)
        with c("ps"):
            await s.each(s.containers)
        with c("api"):
            async with Api(plan.api_url, dep.api_key, timeout=5) as api:
                await api.state(plan.served_name)
        with c("noop_exec"):
            await s.each(lambda h: h.run(["true"], timeout=60))
        ps = runtime.ps_ids(dep.inv.runtime, dep.inv.deployment, None)
        merged = netinfo.FACTS_SCRIPT + '; echo "==== ps"; ' + shlex.join(ps)

        async def both(h: Host) -> Any:
            return await h.sh(merged, timeout=60)

        with c("merged"):
            await s.each(both)
        with c("status"):  # the command's whole body after connecting, as orch runs it
            p = await s.plan(tolerant=True)
            await do_status(s, p, dep.api_key, probe=False)
    finally:
        s.close()
    if s.unreachable:
        raise SystemExit(f"unreachable: {list(s.unreachable)}")
    return c.out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("inventory", type=Path)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--profile", type=Path, help="cProfile one more run; top functions there")
    a = ap.parse_args()
    setup(quiet=True)
    runs = [asyncio.run(one(a.inventory)) for _ in range(a.reps)]
    res: dict[str, Any] = {"runs": runs}
    if a.profile:
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
