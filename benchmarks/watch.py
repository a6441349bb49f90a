"""The loop of `orch status --watch SECONDS` without the terminal UI: one session, then
forever `Session.snapshot(kept=True)` + `status.deployment_status` (with the group probe, as
the command does) and a
sleep; one JSON line per pass on stdout: start/end (epoch s), healthy, state per node.

    python benchmarks/watch.py INVENTORY [--interval 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.cluster import Deployment, open_session  # noqa: E402
from orchestrator.log import setup  # noqa: E402
from orchestrator.status import deployment_status  # noqa: E402


async def main(path: Path, interval: float, requests: bool) -> None:
    dep = Deployment.load(path)
    s = await open_session(dep, require_all=False)
    try:
        while True:
            t0 = time.time()
            st = await deployment_status(dep, await s.snapshot(kept=True), requests)
            print(json.dumps({"start": t0, "end": time.time(), "healthy": st.healthy,
                              "api_ready": st.api_ready,
                              "states": {n.name: n.state for n in st.nodes}}), flush=True)
            await asyncio.sleep(interval)
    finally:
        s.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("inventory", type=Path)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--no-requests", action="store_true")
    a = ap.parse_args()
    setup(quiet=True)
    try:
        asyncio.run(main(a.inventory, a.interval, not a.no_requests))
    except KeyboardInterrupt:
        pass
