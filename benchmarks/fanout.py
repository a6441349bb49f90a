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

KEEP_S = 900  # ssh.persist of the benchmark's inventories: keepers outlive a repetition


CONNS = ("kept", "fresh")  # through the deployment's keeper / `--fresh` (new connections)


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
    invs = {n: C.inventory(lab, n, f"bench-fanout-{n}", persist=KEEP_S) for n in sizes}
    env = C.orch_env()
    check_cmd = "orch check INV"

    def check_argv(inv: Path) -> list[str]:
        return C.orch_argv("check", str(inv))

    def status_argv(n: int, conn: str) -> list[str]:
        extra = ["--fresh"] if conn == "fresh" else []
        return C.orch_argv("status", str(invs[n]), "--no-requests", "--json", *extra)

    def status(n: int, conn: str) -> C.Run:
        r = C.timed(status_argv(n, conn), env=env)
        st = json.loads(r.stdout) if r.stdout.strip().startswith("{") else {}
        bad = [x["name"] for x in st.get("nodes", []) if not x.get("reachable")]
        if not st or bad:
            raise SystemExit(f"status on {n} hosts: rc {r.rc}, unreachable {bad}: {r.stderr[-400:]}")
        kept = st["via"].startswith("kept connections")
        if kept != (conn == "kept") or any(x["containers_via"] != "api" for x in st["nodes"]):
            raise SystemExit(f"status on {n} hosts ({conn}) went through {st['via']}, "
                             f"containers via {sorted({x['containers_via'] for x in st['nodes']})}")
        return r

    raw: dict[str, dict[str, dict[int, list[C.Run]]]] = {
        m: {k: {n: [] for n in sizes} for k in (*CONNS, "check")} for m in shells}
    imports: list[C.Run] = []
    stale = 0
    try:
        for m in shells:  # warm-up: host keys, page cache, podman storage; a plain status
            C.set_shell(lab, m)  # over fresh connections starts each inventory's keeper
            for n in sizes:
                C.timed(status_argv(n, "kept"), env=env)
                stale += C.pyenv_stale_lock()
        for n in sizes:
            C.wait_keeper(invs[n], env)
        for rep in range(a.reps):
            C.say(f"fan-out repetition {rep + 1}/{a.reps}")
            imports.append(C.timed([C.PY, "-c", "import orchestrator.cli"], env=env))
            for m in shells:
                C.set_shell(lab, m)
                for n in sizes:
                    msg = f"  {m:>5} {n:>3} hosts:"
                    for conn in CONNS:
                        r = status(n, conn)
                        raw[m][conn][n].append(r)
                        msg += f" status {conn} {r.wall:.2f}s,"
                    if m in check_shells:
                        r = C.timed(check_argv(invs[n]), env=env)
                        raw[m]["check"][n].append(r)
                        msg += f" check {r.wall:.2f}s (rc {r.rc})"
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
        C.stop_keepers()

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

    def medians(m: str, k: str) -> dict[int, float]:
        return {n: C.med([x.wall for x in raw[m][k][n]]) for n in sizes}

    md = C.header("orch status and orch check vs number of hosts", cmd)
    md += (f"- lab: {len(lab.hosts)} hosts (podman, its API service on /run/podman/podman.sock), "
           f"inventories over the first N hosts, playbook cpu-lab-dp with `overrides: "
           f"{{data_parallel: N}}`, `ssh: {{persist: {KEEP_S}}}`, nothing deployed\n"
           f"- status: `orch status INV --no-requests --json` (exit 1: nothing runs): **kept** = "
           f"through the deployment's keeper (started by the warm-up run; every run checked to "
           f"say `kept connections`), **fresh** = the same with `--fresh` (new SSH connections, "
           f"no keeper); every run checked to read containers through the runtime's API socket; "
           f"check: `{check_cmd}`; medians of {a.reps} runs, sizes, shell modes and kept/fresh "
           f"interleaved per run, after one warm-up\n"
           f"- shell modes: **norc** = the lab's ssh sessions get SHLVL=1, so root's login "
           f"shell (bash) skips ~/.bashrc; **as-is** = the lab as `orch lab up` makes it: every "
           f"exec runs this machine's root ~/.bashrc, whose `pyenv init` runs `pyenv rehash` "
           f"(~0.3 s CPU, under a lock file all lab hosts share); the keeper's long-lived shells "
           f"paid it once, when they started\n"
           f"- orch CPU = user+sys of the orch command (not of the keeper, a process of its "
           f"own); machine CPU = busy CPU seconds of the whole machine during the run (the "
           f"keeper, sshd, shells, ip, the runtime of the lab hosts run on the same "
           f"{__import__('os').cpu_count()} cores)\n"
           f"- `python -c 'import orchestrator.cli'` alone: median {imp:.2f}s\n")
    if stale:
        md += f"- stale pyenv rehash locks removed during the run: {stale}\n"
    for m in shells:
        parts = []
        for k in (*CONNS, *(("check",) if m in check_shells else ())):
            med = medians(m, k)
            parts.append(f"{'status ' + k if k != 'check' else 'check'}@{big} / @{base} = "
                         f"{med[big] / med[base]:.2f}")
        md += f"- **{m}: " + "; ".join(parts) + "**\n"
    for m in shells:
        rows = []
        for n in sizes:
            row: list[object] = [n]
            for k in (*CONNS, *(("check",) if m in check_shells else ())):
                runs = raw[m][k][n]
                med = medians(m, k)
                row += [f"{med[n]:.2f} ({C.spread([x.wall for x in runs])})", f"{med[n] / med[base]:.2f}",
                        C.med([x.cpu for x in runs]), C.med([x.machine_cpu for x in runs])]
                if k == "check":
                    row.append("/".join(sorted({str(x.rc) for x in runs})))
            rows.append(row)
        hdr = ["hosts"]
        for k in (*CONNS, *(("check",) if m in check_shells else ())):
            name = f"status {k}" if k != "check" else "check"
            hdr += [f"{name} s (min-max)", f"/ @{base}", "orch CPU s", "machine CPU s"]
            if k == "check":
                hdr.append("check exit")
        md += f"\n**{m}**\n\n" + C.table(hdr, rows) + "\n"
    ph = ["connect", "facts", "containers", "cli", "snapshot", "kept", "keeper", "api"]
    md += (f"\nIn-process breakdown (benchmarks/phases.py, median of {a.phase_reps}; wall / CPU "
           "seconds of orch's own process): `connect` SSH to every node; `facts` the facts "
           "script, one exec per node; `containers` the container list through the runtime's "
           "API socket; `cli` the same with `podman ps` (the fallback); `snapshot` facts and "
           "containers at once (a fresh status); `kept` the same on kept connections with the "
           "facts in a long-lived shell (what the keeper does per request); `keeper` one "
           "request to the keeper from another process; `api` the head's HTTP API:\n")
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
