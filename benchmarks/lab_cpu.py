"""The lab hosts' CPU for one `orch check` (or fresh `orch status`) at N hosts, beside orch's own.

Wall time on this shared 2-core machine moves +-15% from run to run; CPU time moves much
less.  Every process in the lab's network namespaces (sshd, the podman API services, and so
everything a session starts there) is moved into one cpuacct cgroup (cgroup v1) and its
`cpuacct.usage` read around each run; orch's CPU is its rusage.  Moved back at the end.
Prints only (no docs section): a tool for telling one change's effect from the noise.

    python benchmarks/lab_cpu.py [--hosts 64] [--reps 5] [--what check|status] [--keep-lab]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as C  # noqa: E402

CPUACCT = Path("/sys/fs/cgroup/cpuacct")


def lab_pids(lab) -> list[str]:  # type: ignore[no-untyped-def]
    inos = set()
    for h in lab.hosts:
        try:
            inos.add(os.stat(f"/run/netns/{h.netns}").st_ino)
        except OSError:
            continue
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                if os.stat(f"/proc/{p}/ns/net").st_ino in inos:
                    out.append(p)
            except OSError:
                continue
    return out


def move(pids: list[str], cg: Path) -> None:
    for p in pids:
        try:
            (cg / "cgroup.procs").write_text(p)
        except OSError:
            continue  # ended meanwhile


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--what", choices=("check", "status"), default="check")
    ap.add_argument("--keep-lab", action="store_true")
    a = ap.parse_args()
    if not (CPUACCT / "cpuacct.usage").exists():
        raise SystemExit(f"needs the cgroup v1 cpuacct controller at {CPUACCT}")
    lab = C.lab_up(a.hosts)
    C.set_shell(lab, "norc")
    inv = C.inventory(lab, a.hosts, f"bench-fanout-{a.hosts}", persist=900)
    argv = (C.orch_argv("check", str(inv)) if a.what == "check" else
            C.orch_argv("status", str(inv), "--no-requests", "--json", "--fresh"))
    cg = CPUACCT / f"orch-bench-{os.getpid()}"
    cg.mkdir()
    rows: list[tuple[float, float, float]] = []
    try:
        for i in range(a.reps):
            move(lab_pids(lab), cg)
            u0 = int((cg / "cpuacct.usage").read_text())
            r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.monotonic()
            p = subprocess.run(argv, env=C.orch_env(), capture_output=True, text=True)
            wall = time.monotonic() - t0
            r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            lab_s = (int((cg / "cpuacct.usage").read_text()) - u0) / 1e9
            orch_s = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
            rows.append((wall, lab_s, orch_s))
            C.say(f"{i + 1}/{a.reps}: rc {p.returncode}, wall {wall:.2f}s, lab hosts' CPU "
                  f"{lab_s:.2f}s, orch's CPU {orch_s:.2f}s")
    finally:
        move((cg / "cgroup.procs").read_text().split(), CPUACCT)
        cg.rmdir()
        if not a.keep_lab:
            C.lab_down()
    print(f"{a.what} at {a.hosts} hosts, medians of {a.reps}: wall {C.med([r[0] for r in rows]):.2f}s, "
          f"lab hosts' CPU {C.med([r[1] for r in rows]):.2f}s, orch's CPU {C.med([r[2] for r in rows]):.2f}s")


if __name__ == "__main__":
    main()
