"""orch's own fan-out path, launching a container on every node: `cluster.open_session`,
then `Session.each` + `Host.run` of `RUNTIME run -d ... IMAGE sleep 300` on every host,
then `Session.each` of `RUNTIME rm -f NAME` (two phases, like Ansible's linear strategy
and like `orch up` launching then later removing).  The same argv as
benchmarks/ansible/launch.yml.

    python benchmarks/orch_launch.py INVENTORY
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.cluster import Deployment, open_session  # noqa: E402
from orchestrator.log import setup  # noqa: E402
from orchestrator.remote import Host  # noqa: E402

PREFIX = "orchbench-launch-"


def run_argv(runtime: str, image: str, node: str) -> list[str]:
    return [runtime, "run", "-d", "--name", PREFIX + node, "--net=host",
            "--label", "orch.bench=launch", image, "sleep", "300"]


def rm_argv(runtime: str, node: str) -> list[str]:
    return [runtime, "rm", "-f", "-t", "0", PREFIX + node]


async def main(path: Path) -> dict[str, object]:
    t0 = time.perf_counter()
    dep = Deployment.load(path, with_secrets=False)
    rt, image = dep.inv.runtime, dep.inv.image
    s = await open_session(dep)
    t1 = time.perf_counter()
    try:
        async def start(h: Host) -> str:
            return (await h.run(run_argv(rt, image, h.name), timeout=120)).stdout.strip()

        async def remove(h: Host) -> str:
            return (await h.run(rm_argv(rt, h.name), timeout=120)).stdout.strip()

        started = await s.each(start)
        t2 = time.perf_counter()
        removed = await s.each(remove)
        t3 = time.perf_counter()
    finally:
        s.close()
    errors = {k: str(v) for d in (started, removed) for k, v in d.items()
              if isinstance(v, BaseException)}
    return {"nodes": len(dep.inv.nodes), "connect_s": round(t1 - t0, 3),
            "run_s": round(t2 - t1, 3), "rm_s": round(t3 - t2, 3), "errors": errors}


if __name__ == "__main__":
    setup(quiet=True)
    out = asyncio.run(main(Path(sys.argv[1])))
    print(json.dumps(out))
    sys.exit(1 if out["errors"] else 0)
