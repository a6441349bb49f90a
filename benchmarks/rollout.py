"""What a redeploy costs the clients of a fleet: a client loop through the router while
`orch up` replaces the replicas after a serve-flag change, one at a time (the default) or all
at once (`--max-unavailable 2`: the whole group, as orch did before fleets).

Lab: 3 hosts (podman); 2 replicas of cpu-lab-single on h0 and h1, vllm-router on h2; the
client loop (2 threads, one completion after another, max_tokens 4) through the router.
Modes interleaved per repetition, each from a healthy fleet.

    python benchmarks/rollout.py [--reps 2] [--no-write] [--keep-lab]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as C  # noqa: E402

from orchestrator.lab.loadgen import ClientLoop  # noqa: E402

ROUTER = "http://10.77.0.13:8080"
MODES = {"rolling (max-unavailable 1)": [], "whole group (max-unavailable 2)": ["--max-unavailable", "2"]}


def fleet_inventory(lab, seqs: int) -> Path:  # type: ignore[no-untyped-def]
    p = C.inventory(lab, 3, "bench-rollout", playbook="cpu-lab-single", dp=1)
    doc = yaml.safe_load(p.read_text())
    doc.pop("head", None)
    doc.pop("overrides", None)
    doc.update(groups=[["h0"], ["h1"]], router={"node": "h2"},
               overrides={"args": {"--max-num-seqs": seqs}})
    p.write_text(yaml.safe_dump(doc))
    return p


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--keep-lab", action="store_true")
    a = ap.parse_args()
    cmd = C.this_command()
    lab = C.lab_up(3)
    env = C.orch_env()
    seqs = 8
    inv = fleet_inventory(lab, seqs)
    r = C.timed(C.orch_argv("up", str(inv), "--timeout", "900"), env=env)
    if r.rc != 0:
        raise SystemExit(f"orch up: {r.stderr[-2000:]}")
    results: dict[str, list[dict]] = {m: [] for m in MODES}
    try:
        for rep in range(a.reps):
            for mode, extra in MODES.items():
                seqs = 16 if seqs == 8 else 8
                inv = fleet_inventory(lab, seqs)
                C.say(f"repetition {rep + 1}/{a.reps}: {mode}")
                with ClientLoop(ROUTER) as loop:
                    time.sleep(3)
                    t0 = time.monotonic()
                    r = C.timed(C.orch_argv("up", str(inv), "--timeout", "900", *extra), env=env)
                    t1 = time.monotonic()
                    time.sleep(3)
                if r.rc != 0:
                    raise SystemExit(f"orch up ({mode}): {r.stderr[-2000:]}")
                during = ClientLoop.summary(loop.between(t0, t1))
                down = [s for s in loop.between(t0, t1) if not s.ok]
                outage = (max(s.start for s in down) - min(s.start for s in down)) if down else 0.0
                results[mode].append({**during, "up_s": round(r.wall, 1), "outage_s": round(outage, 1)})
                C.say(f"  {results[mode][-1]}")
    finally:
        C.timed(C.orch_argv("down", str(inv)), env=env)
    C.dump("rollout", results)
    md = C.header("Redeploying a fleet: rolling vs the whole group at once", cmd)
    md += ("- lab: 3 hosts (podman); 2 replicas of cpu-lab-single (h0, h1) behind vllm-router "
           "(h2); the change: `--max-num-seqs` 8 <-> 16, so every replica must be replaced\n"
           "- client: 2 threads through the router, one completion after another (max_tokens "
           "4, timeout 60 s); figures over the requests sent while `orch up` ran; outage = "
           "first to last failed request; medians over "
           f"{a.reps} repetitions, the modes interleaved\n")
    rows = []
    for mode, runs in results.items():
        rows.append([mode, C.med([x["requests"] for x in runs]), C.med([x["failed"] for x in runs]),
                     C.med([x["outage_s"] for x in runs]), C.med([x["p50_s"] for x in runs]),
                     C.med([x["p99_s"] for x in runs]), C.med([x["max_s"] for x in runs]),
                     C.med([x["up_s"] for x in runs])])
    md += "\n" + C.table(["mode", "requests", "failed", "outage s", "p50 s", "p99 s", "max s",
                          "orch up s"], rows) + "\n"
    md += "\nEvery run: " + json.dumps(results) + "\n"
    C.publish("rollout", md, write=not a.no_write)
    if not a.keep_lab:
        C.lab_down()


if __name__ == "__main__":
    main()
