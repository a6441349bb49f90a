"""Table 1: `orch status` and `orch check` wall time as the number of hosts grows.

One lab with max(--hosts) hosts; per size N an inventory over the first N hosts
(playbook cpu-lab-dp, data_parallel N, nothing deployed).  Sizes are interleaved in every
repetition so that load from others spreads over all of them.  Then the in-process phase
breakdown (benchmarks/phases.py) per size and a cProfile at the largest size.

    python benchmarks/fanout.py [--hosts 1,4,16,64] [--reps 5] [--no-write] [--keep-lab]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as C  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", default="1,4,16,64")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--phase-reps", type=int, default=5)
    ap.add_argument("--shells", default="norc,as-is",
                    help="login-shell modes of the lab hosts to measure (see common.set_shell)")
    ap.add_argument("--check-shells", default="norc",
                    help="modes in which `orch check` is timed too (as-is: see the docs)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs alone")
    ap.add_argument("--keep-lab", action="store_true", help="leave the lab up")
    a = ap.parse_args()
    sizes = [int(x) for x in a.hosts.split(",")]
    shells = [x for x in a.shells.split(",") if x]
    check_shells = [x for x in a.check_shells.split(",") if x in shells]
    if any(x not in C.SHELL_MODES for x in shells):
        raise SystemExit(f"--shells: {C.SHELL_MODES}")
    cmd = C.this_command()
    lab = C.lab_up(max(sizes))
    invs = {n: C.inventory(lab, n, f"bench-fanout-{n}") for n in sizes}
    env = C.orch_env()
    check_cmd = "orch check INV"

    def check_argv(inv: Path) -> list[str]:
        return C.orch_argv("check", str(inv))

    def status_argv(n: int) -> list[str]:
        return C.orch_argv("status", str(invs[n]), "--no-requests", "--json")

    raw: dict[str, dict[str, dict[int, list[C.Run]]]] = {
        m: {"status": {n: [] for n in sizes}, "check": {n: [] for n in sizes}} for m in shells}
    imports: list[C.Run] = []
    stale = 0
    try:
        for m in shells:  # warm-up: host keys, page cache, podman storage
            C.set_shell(lab, m)
            for n in sizes:
                C.timed(status_argv(n), env=env)
                stale += C.pyenv_stale_lock()
        for rep in range(a.reps):
            C.say(f"fan-out repetition {rep + 1}/{a.reps}")
            imports.append(C.timed([C.PY, "-c", "import orchestrator.cli"], env=env))
            for m in shells:
                C.set_shell(lab, m)
                for n in sizes:
                    r = C.timed(status_argv(n), env=env)
                    st = json.loads(r.stdout) if r.stdout.strip().startswith("{") else {}
                    bad = [x["name"] for x in st.get("nodes", []) if not x.get("reachable")]
                    if not st or bad:
                        raise SystemExit(f"status on {n} hosts: rc {r.rc}, unreachable {bad}: "
                                         f"{r.stderr[-400:]}")
                    raw[m]["status"][n].append(r)
                    msg = f"  {m:>5} {n:>3} hosts: status {r.wall:.2f}s"
                    if m in check_shells:
                        r = C.timed(check_argv(invs[n]), env=env)
                        raw[m]["check"][n].append(r)
                        msg += f", check {r.wall:.2f}s (rc {r.rc})"
                    stale += C.pyenv_stale_lock()
                    C.say(msg)

        phases: dict[str, dict[int, list[dict]]] = {m: {} for m in shells}
        prof = {m: C.WORK / "results" / f"status-profile-{m}-{max(sizes)}.txt" for m in shells}
        for m in shells:
            C.set_shell(lab, m)
            for n in sizes:
                C.say(f"phase breakdown, {m}, {n} hosts")
                extra = ["--profile", str(prof[m])] if n == max(sizes) else []
                r = C.timed([C.PY, str(C.ROOT / "benchmarks" / "phases.py"), str(invs[n]),
                             "--reps", str(a.phase_reps), *extra], env=env)
                if r.rc != 0:
                    raise SystemExit(f"phases on {n}: {r.stderr[-800:]}")
                phases[m][n] = json.loads(r.stdout)["runs"]
                stale += C.pyenv_stale_lock()
    finally:
        C.set_shell(lab, "as-is")

    def jr(x: C.Run) -> dict:
        return vars(x) | {"stdout": x.stdout[-2000:], "stderr": x.stderr[-2000:]}

    C.dump("fanout", {"sizes": sizes, "stale_locks": stale,
                      "imports": [x.wall for x in imports],
                      "runs": {m: {k: {n: [jr(x) for x in v] for n, v in d.items()}
                                   for k, d in dm.items()} for m, dm in raw.items()},
                      "phases": phases})

    # --- tables ---
    base = 4 if 4 in sizes else sizes[0]
    big = max(sizes)
    imp = C.med([x.wall for x in imports])
    md = C.header("orch status and orch check vs number of hosts", cmd)
    md += (f"- lab: {len(lab.hosts)} hosts (podman), inventories over the first N hosts, playbook "
           f"cpu-lab-dp with `overrides: {{data_parallel: N}}`, nothing deployed\n"
           f"- status: `orch status INV --no-requests --json` (exit 1: nothing runs); check: "
           f"`{check_cmd}`; medians of {a.reps} runs, sizes and shell modes interleaved per "
           f"run, after one warm-up\n"
           f"- shell modes: **norc** = the lab's ssh sessions get SHLVL=1, so root's login "
           f"shell (bash) skips ~/.bashrc; **as-is** = the lab as `orch lab up` makes it: every "
           f"exec runs this machine's root ~/.bashrc, whose `pyenv init` runs `pyenv rehash` "
           f"(~0.3 s CPU, under a lock file all lab hosts share)\n"
           f"- orch CPU = user+sys of the orch process; machine CPU = busy CPU seconds of the "
           f"whole machine during the run (sshd, shells, ip, podman of the lab hosts run on "
           f"the same {__import__('os').cpu_count()} cores)\n"
           f"- `python -c 'import orchestrator.cli'` alone: median {imp:.2f}s\n")
    if stale:
        md += f"- stale pyenv rehash locks removed during the run: {stale}\n"
    for m in shells:
        sm = {n: C.med([x.wall for x in raw[m]["status"][n]]) for n in sizes}
        has_check = m in check_shells
        cm = {n: C.med([x.wall for x in raw[m]["check"][n]]) for n in sizes} if has_check else {}
        md += f"- **{m}: status@{big} / status@{base} = {sm[big] / sm[base]:.2f}**"
        if has_check:
            md += f"; check@{big} / check@{base} = {cm[big] / cm[base]:.2f}"
        md += "\n"
    for m in shells:
        sm = {n: C.med([x.wall for x in raw[m]["status"][n]]) for n in sizes}
        has_check = m in check_shells
        rows = []
        for n in sizes:
            s_ = raw[m]["status"][n]
            row = [n, f"{sm[n]:.2f} ({C.spread([x.wall for x in s_])})",
                   f"{sm[n] / sm[base]:.2f}", C.med([x.cpu for x in s_]),
                   C.med([x.machine_cpu for x in s_])]
            if has_check:
                c = raw[m]["check"][n]
                cmed = C.med([x.wall for x in c])
                cbase = C.med([x.wall for x in raw[m]["check"][base]])
                row += [f"{cmed:.2f} ({C.spread([x.wall for x in c])})", f"{cmed / cbase:.2f}",
                        C.med([x.cpu for x in c]), C.med([x.machine_cpu for x in c]),
                        "/".join(sorted({str(x.rc) for x in c}))]
            rows.append(row)
        hdr = ["hosts", "status s (min-max)", f"/ status@{base}", "orch CPU s", "machine CPU s"]
        if has_check:
            hdr += ["check s (min-max)", f"/ check@{base}", "orch CPU s", "machine CPU s",
                    "check exit"]
        md += f"\n**{m}**\n\n" + C.table(hdr, rows) + "\n"
    ph = ["connect", "facts", "ps", "api", "status", "noop_exec", "merged"]
    md += (f"\nIn-process breakdown (benchmarks/phases.py, median of {a.phase_reps}; wall / CPU "
           "seconds of orch's own process; `status` = the command's body after connecting "
           "(facts + ps + api); `noop_exec` (one `true` per host) and `merged` (facts and ps in "
           "one exec per host) are prototypes):\n")
    for m in shells:
        rows2 = []
        for n in sizes:
            runs = phases[m][n]
            rows2.append([n] + [f"{C.med([r[p]['wall'] for r in runs]):.2f} / "
                                f"{C.med([r[p]['cpu'] for r in runs]):.2f}" for p in ph])
        md += f"\n**{m}**\n\n" + C.table(["hosts"] + ph, rows2) + "\n"
    for m in shells:
        top = _profile_top(prof[m])
        if top:
            md += (f"\ncProfile of one phases.py run at {big} hosts ({m}), top functions by "
                   "own time:\n\n```\n" + top + "\n```\n")
    C.publish("fanout", md, write=not a.no_write)
    if not a.keep_lab:
        C.lab_down()


def _profile_top(path: Path, n: int = 12) -> str:
    if not path.exists():
        return ""
    lines = path.read_text().splitlines()
    out, on = [], False
    for ln in lines:
        if "ncalls" in ln and "tottime" in ln:
            if on:
                break
            on = True
            out.append(ln.strip())
            continue
        if on and ln.strip():
            out.append(ln.strip()[:150])
            if len(out) > n:
                break
    return "\n".join(out)


if __name__ == "__main__":
    main()
