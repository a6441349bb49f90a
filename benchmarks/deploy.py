"""Tables 2 and 3, from one run on a real 2-node vLLM deployment (lab h0 head, h1 headless):

  2. `orch up` from nothing, then --noop-reps no-op `orch up` (the cron case: healthy and
     unchanged), then --cycles repair ups (after a killed rank).
  3. (a) readiness: head container log line "Application startup complete" (podman logs
     --timestamps) -> orch's "api ready" event (JSON lines on stderr) -> `orch up` exits;
     one sample per deploying up.
     (b) death: `podman kill` of the headless rank's container while the loop of
     `orch status --watch 1` runs (benchmarks/watch.py), and a one-shot
     `orch status --no-requests --json` started right after the kill: seconds from the kill
     to orch reporting the rank not running.

    python benchmarks/deploy.py [--noop-reps 5] [--cycles 3] [--interval 1]
"""

from __future__ import annotations

import argparse
import json
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as C  # noqa: E402

from orchestrator.runtime import parse_time  # noqa: E402

DEPLOYMENT = "bench-up"
STARTUP_LINE = "Application startup complete"


def ts(v: str) -> float:
    """RFC 3339 / ISO 8601 (nanoseconds allowed, Z or offset) -> epoch seconds."""
    t = parse_time(v)
    if t is None:
        raise ValueError(f"not a timestamp: {v!r}")
    return t.timestamp()


def events(stderr: str) -> list[dict]:
    out = []
    for ln in stderr.splitlines():
        if ln.startswith("{"):
            try:
                out.append(json.loads(ln))
            except json.JSONDecodeError:
                pass
    return out


def event_time(evs: list[dict], name: str) -> float | None:
    for e in evs:
        if e.get("event") == name and "timestamp" in e:
            return ts(e["timestamp"])
    return None


def startup_time(lab, host: str, container: str) -> float | None:  # type: ignore[no-untyped-def]
    cp = lab.run_on(host, ["podman", "logs", "--timestamps", container], timeout=60)
    for ln in (cp.stdout + cp.stderr).splitlines():
        if STARTUP_LINE in ln:
            return ts(ln.split(" ", 1)[0])
    return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--noop-reps", type=int, default=5)
    ap.add_argument("--cycles", type=int, default=3, help="kill / detect / repair cycles")
    ap.add_argument("--interval", type=float, default=1.0, help="the watch loop's sleep")
    ap.add_argument("--shells", default="norc,as-is",
                    help="login-shell modes for the no-op ups (first: everything else)")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--keep-lab", action="store_true")
    a = ap.parse_args()
    cmd = C.this_command()
    lab = C.lab_up(2)
    inv = C.inventory(lab, 2, DEPLOYMENT)
    env = C.orch_env()
    plan = json.loads(subprocess.run(C.orch_argv("plan", str(inv), "--json"), capture_output=True,
                                     text=True, check=True, cwd=C.ROOT).stdout)
    head, rank = plan["nodes"][0], plan["nodes"][1]
    ours = ("orch-" + DEPLOYMENT,)
    C.wait_lab_free(ours=ours)
    C.timed(C.orch_argv("down", str(inv)), env=env)

    ups: list[dict] = []

    def do_up(kind: str) -> dict:
        r = C.timed(C.orch_argv("up", str(inv), "--json", "--timeout", "600"), env=env,
                    timeout=900)
        if r.rc != 0:
            raise SystemExit(f"orch up ({kind}): rc {r.rc}\n{r.stderr[-3000:]}")
        out = json.loads(r.stdout)
        evs = events(r.stderr)
        row = {"kind": kind, "wall": r.wall, "cpu": r.cpu, "changed": out["changed"],
               "reason": out["reason"], "orch_seconds": out["seconds"]}
        if out["changed"]:
            t_launch = event_time(evs, "launching")
            t_ready = event_time(evs, "api ready")
            t_serving = event_time(evs, "serving")
            t_start = startup_time(lab, head["name"], head["container"])
            row.update(launch=t_launch, startup=t_start, api_ready=t_ready, serving=t_serving)
        ups.append(row)
        C.say(f"orch up ({kind}): {r.wall:.2f}s, changed {out['changed']}: {out['reason']}")
        return row

    shells = [x for x in a.shells.split(",") if x]
    main_shell = shells[0]
    C.wait_lab_free(ours=ours)
    C.set_shell(lab, main_shell)
    try:
        do_up("first")
        for _ in range(a.noop_reps):
            for m in shells:
                C.set_shell(lab, m)
                row = do_up(f"no-op {m}")
                if row["changed"]:
                    raise SystemExit("a no-op up redeployed: the deployment is not stable")
        C.set_shell(lab, main_shell)
        cycles(a, lab, inv, env, rank, head, do_up)
    finally:
        C.set_shell(lab, "as-is")
        C.pyenv_stale_lock()
    C.timed(C.orch_argv("down", str(inv)), env=env)
    C.dump("deploy", {"ups": ups, "deaths": DEATHS})
    tables(a, cmd, ups, DEATHS, shells)
    if not a.keep_lab:
        C.lab_down()


DEATHS: list[dict] = []


def cycles(a, lab, inv, env, rank, head, do_up) -> None:  # type: ignore[no-untyped-def]
    deaths = DEATHS
    for cyc in range(a.cycles):
        C.say(f"death cycle {cyc + 1}/{a.cycles}")
        w = subprocess.Popen([C.PY, str(C.ROOT / "benchmarks" / "watch.py"), str(inv),
                              "--interval", str(a.interval)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env, cwd=C.ROOT)
        lines: queue.Queue[dict] = queue.Queue()
        def pump(out=w.stdout, q=lines) -> None:  # type: ignore[no-untyped-def]
            for x in out:
                q.put(json.loads(x))

        threading.Thread(target=pump, daemon=True).start()
        try:
            healthy = 0
            t_end = time.time() + 120
            passes = []
            while healthy < 2 and time.time() < t_end:
                p = lines.get(timeout=120)
                passes.append(p["end"] - p["start"])
                healthy += bool(p["healthy"])
            if healthy < 2:
                raise SystemExit(f"the watch loop never saw the deployment healthy: {w.stderr.read()[-2000:]}")  # type: ignore[union-attr]
            while not lines.empty():
                lines.get()
            t_kill0 = time.time()
            cp = lab.run_on(rank["name"], ["podman", "kill", rank["container"]], timeout=60)
            t_kill = time.time()
            if cp.returncode != 0:
                raise SystemExit(f"podman kill: {cp.stderr}")
            one = C.timed(C.orch_argv("status", str(inv), "--no-requests", "--json", "--fresh"),
                          env=env)
            st = json.loads(one.stdout)
            one_state = next(n["state"] for n in st["nodes"] if n["name"] == rank["name"])
            detected = None
            while time.time() < t_kill + 120:
                p = lines.get(timeout=120)
                if p["states"].get(rank["name"]) != "running":
                    detected = p
                    break
            deaths.append({"kill_cmd_s": t_kill - t_kill0,
                           "watch_latency": (detected["end"] - t_kill) if detected else None,
                           "watch_state": detected and detected["states"], "watch_pass_s": C.med(passes),
                           "oneshot_latency": one.wall, "oneshot_state": one_state})
            C.say(f"  killed {rank['container']}: watch reported after "
                  f"{deaths[-1]['watch_latency']}s, one-shot status {one.wall:.2f}s ({one_state})")
        finally:
            w.terminate()
            w.wait(timeout=30)
        do_up("repair")


def tables(a, cmd, ups, deaths, shells) -> None:  # type: ignore[no-untyped-def]
    first = ups[0]
    noop = [u for u in ups if u["kind"] == f"no-op {shells[0]}"]
    rep = [u for u in ups if u["kind"] == "repair"]
    nm = C.med([u["wall"] for u in noop])
    md = C.header("orch up: first deploy, no-op (cron) and repair", cmd)
    md += ("- lab 2-node DP deployment (playbook cpu-lab-dp, vLLM CPU 0.32.0, tiny model, "
           "podman): h0 head, h1 headless; `orch up INV --json`, wall time of the command\n"
           f"- lab hosts' login shell: {shells[0]} (see the first table) unless the row says "
           "otherwise; no-op ups of the shell modes interleaved\n"
           f"- **no-op up median {nm:.2f}s = {nm / first['wall']:.3f} x the first up "
           f"({first['wall']:.1f}s)**\n\n")
    rows = [["first up (nothing running)", 1, f"{first['wall']:.2f}", "-", f"{first['cpu']:.2f}",
             first["reason"][:60]],
            ]
    for m in shells:
        nx = [u for u in ups if u["kind"] == f"no-op {m}"]
        rows.append([f"no-op up (healthy, unchanged), {m}", len(nx),
                     f"{C.med([u['wall'] for u in nx]):.2f}", C.spread([u["wall"] for u in nx]),
                     f"{C.med([u['cpu'] for u in nx]):.2f}", nx[0]["reason"][:60] if nx else "-"])
    if rep:
        rows.append(["repair up (headless rank killed)", len(rep),
                     f"{C.med([u['wall'] for u in rep]):.2f}", C.spread([u["wall"] for u in rep]),
                     f"{C.med([u['cpu'] for u in rep]):.2f}", rep[0]["reason"][:60]])
    md += C.table(["run", "n", "median s", "min-max", "orch CPU s", "reason"], rows) + "\n"
    C.publish("up", md, write=not a.no_write)

    dep_ups = [u for u in ups if u["changed"] and u.get("startup") and u.get("api_ready")]
    lag = [u["api_ready"] - u["startup"] for u in dep_ups]
    boot = [u["startup"] - u["launch"] for u in dep_ups if u.get("launch")]
    tail = [u["serving"] - u["api_ready"] for u in dep_ups if u.get("serving")]
    wl = [d["watch_latency"] for d in deaths if d["watch_latency"] is not None]
    ol = [d["oneshot_latency"] for d in deaths]
    md = C.header("Detection latency: head ready, rank dead", cmd)
    md += (f"- lab hosts' login shell: {shells[0]}\n"
           "- same run and deployment as the table above; readiness: one sample per deploying "
           "`orch up` (first + repairs): the head container's log line \"Application startup "
           "complete\" (`podman logs --timestamps`) vs orch's `api ready` JSON log event "
           f"(orch polls every {2.0:.0f}s: deploy.POLL_S, after inspecting every rank)\n"
           "- death: `podman kill` of h1's container; watch = the `orch status --watch "
           f"{a.interval:g}` loop (benchmarks/watch.py) already running, first pass that "
           "reports h1 not running, from the kill's return; one-shot = `orch status INV "
           "--no-requests --json --fresh` (new connections, as with no keeper) started right "
           "after the kill (runs concurrently with the watch loop), its whole wall time\n\n")
    rows = [
        ["launch -> head \"Application startup complete\"", len(boot), C.med(boot), C.spread(boot)],
        ["head \"Application startup complete\" -> orch \"api ready\"", len(lag), C.med(lag), C.spread(lag)],
        ["orch \"api ready\" -> \"serving\" (first completion)", len(tail), C.med(tail), C.spread(tail)],
        ["healthy watch pass (snapshot + status with group probe)", len(deaths),
         C.med([d["watch_pass_s"] for d in deaths]), C.spread([d["watch_pass_s"] for d in deaths])],
        [f"rank killed -> watch loop reports it (interval {a.interval:g}s)", len(wl), C.med(wl), C.spread(wl)],
        ["rank killed -> one-shot `orch status` reports it (whole command)", len(ol), C.med(ol), C.spread(ol)],
    ]
    md += C.table(["interval", "n", "median s", "min-max"], rows) + "\n"
    states = sorted({d["oneshot_state"] for d in deaths})
    md += f"\nState reported for h1 after the kill: {', '.join(states)}.\n"
    C.publish("latency", md, write=not a.no_write)


if __name__ == "__main__":
    main()
