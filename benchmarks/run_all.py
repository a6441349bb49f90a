"""Every benchmark table, one script run per table, then the lab down.

    sudo .venv/bin/python benchmarks/run_all.py [--quick] [--no-write]

  fanout.py          table 1: orch status / orch check vs 1, 4, 16, 64 hosts (+ breakdown)
  ansible_compare.py table 4: Ansible (forks 5 / forks = hosts) vs orch, 4, 16, 64 hosts
  deploy.py          tables 2 and 3: first / no-op / repair `orch up`; readiness and death
                     detection latency (a real 2-node vLLM deployment)

Each script brings the lab up as it needs it (reusing a healthy one that is big enough),
waits while another engineer's lab tests run (pgrep "pytest.*tests/lab", `orch-`
containers, /tmp/orch-lab.lock), and writes its section of docs/benchmarks.md.
Needs root (the lab).  About 30-40 minutes on 2 cores; --quick: fewer repetitions.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as C  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="3 repetitions, up to 16 hosts")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--keep-lab", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="1 repetition of everything, small")
    ap.add_argument("--only", default="", help="comma-separated: fanout,ansible_compare,deploy")
    a = ap.parse_args()
    extra = ["--no-write"] if a.no_write else []
    hosts = "1,4,16" if a.quick else "1,4,16,64"
    reps = "3" if a.quick else "5"
    here = Path(__file__).resolve().parent
    steps = [
        [sys.executable, str(here / "fanout.py"), "--hosts", hosts, "--reps", reps, "--keep-lab"],
        [sys.executable, str(here / "ansible_compare.py"), "--hosts", hosts.removeprefix("1,"),
         "--reps", reps, "--big-reps", "3", "--keep-lab"],
        [sys.executable, str(here / "deploy.py"), "--noop-reps", "5",
         "--cycles", "2" if a.quick else "3", "--keep-lab"],
    ]
    if a.smoke:  # check that every script works end to end: minutes, nothing written
        extra = ["--no-write"]
        steps = [
            [sys.executable, str(here / "fanout.py"), "--hosts", "1,4", "--reps", "1",
             "--phase-reps", "1", "--keep-lab"],
            [sys.executable, str(here / "ansible_compare.py"), "--hosts", "4", "--reps", "1",
             "--keep-lab"],
            [sys.executable, str(here / "deploy.py"), "--noop-reps", "1", "--cycles", "1",
             "--keep-lab"],
        ]
    only = [x for x in a.only.split(",") if x]
    steps = [s for s in steps if not only or Path(s[1]).stem in only]
    C.hold_lab_lock()  # held across all the scripts: nobody takes the lab in between
    env = {**os.environ, "ORCH_BENCH_LOCK_HELD": "1"}
    failed = []
    for argv in steps:
        C.say("running " + " ".join(Path(x).name if x.startswith("/") else x for x in argv[1:]))
        if subprocess.run(argv + extra, cwd=C.ROOT, env=env).returncode != 0:
            failed.append(Path(argv[1]).name)
    if not a.keep_lab:
        C.lab_down()
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
