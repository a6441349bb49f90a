"""Staging throughput on the lab: `orch stage` copying a model directory from h0 to 1 and to 2
other hosts (node-to-node through the source's temporary rsync daemon), next to a plain
`scp -r` of the same files from h0 in the same run; and the cost of the manifests (hashing
cold vs cached).

The hosts have private /srv/orch-lab dirs (their own mount namespaces); the data: --mb MB of
random bytes in 4 files plus the tiny model's files, on h0.  Cases interleaved per repetition;
the targets' copies removed before each run.

    python benchmarks/stage.py [--mb 1024] [--reps 3] [--no-write] [--keep-lab]
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

MODEL = "/srv/orch-lab/bench-model"


def inventory(lab, n: int) -> Path:  # type: ignore[no-untyped-def]
    p = C.inventory(lab, n, f"bench-stage-{n}")  # DP over the n nodes: planned, never launched
    doc = yaml.safe_load(p.read_text())
    doc["model"]["path"] = MODEL
    p.write_text(yaml.safe_dump(doc))
    return p


def clear(lab, hosts: list[str]) -> None:  # type: ignore[no-untyped-def]
    for h in hosts:
        lab.run_on(h, ["sh", "-c", f"rm -rf {MODEL} /srv/orch-lab/.bench-model.orch-staging "
                       "/srv/orch-lab/scp-copy /var/cache/orch/manifests"], check=True)


def scp(lab, targets: list[str]) -> float:  # type: ignore[no-untyped-def]
    """Wall seconds of `scp -r` from h0 to every target at once (node to node)."""
    key, kh = str(lab.ssh_key), str(lab.known_hosts)
    jobs = " ".join(f"scp -q -r -i {key} -o UserKnownHostsFile={kh} -o StrictHostKeyChecking=yes "
                    f"{MODEL} root@{lab.host(t).ip}:/srv/orch-lab/scp-copy &" for t in targets)
    t0 = time.monotonic()
    r = lab.run_on("h0", ["sh", "-c", f"{jobs} wait"], timeout=1800)
    if r.returncode != 0:
        raise SystemExit(f"scp: {r.stderr[-500:]}")
    return time.monotonic() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--keep-lab", action="store_true")
    a = ap.parse_args()
    cmd = C.this_command()
    lab = C.lab_up(3)
    if lab.runtime != "podman":
        raise SystemExit("needs the podman lab (private /srv/orch-lab per host)")
    env = C.orch_env()
    clear(lab, ["h0", "h1", "h2"])
    per = a.mb // 4
    lab.run_on("h0", ["sh", "-c", f"mkdir -p {MODEL} && cp -a {lab.model_path}/. {MODEL}/ && "
                      f"for i in 0 1 2 3; do head -c {per}M /dev/urandom > {MODEL}/w$i.safetensors; done"],
               check=True, timeout=600)
    total = int(lab.run_on("h0", ["du", "-sb", MODEL], check=True).stdout.split()[0])
    invs = {n: inventory(lab, n) for n in (2, 3)}
    hashing = {}
    for label in ("cold", "cached"):  # the manifest of h0's directory, first and second time
        r = C.timed(C.orch_argv("check", str(invs[2]), "--json", "--skip-checks", "stale"), env=env)
        hashing[label] = r.wall
    runs: dict[str, list[dict]] = {}
    for rep in range(a.reps):
        for n in (2, 3):
            targets = [f"h{i}" for i in range(1, n)]
            C.say(f"repetition {rep + 1}/{a.reps}: {n - 1} target(s)")
            clear(lab, targets)
            r = C.timed(C.orch_argv("stage", str(invs[n]), "--no-image", "--json"), env=env, timeout=1800)
            if r.rc != 0:
                raise SystemExit(f"orch stage: {r.stderr[-2000:]}")
            doc = json.loads(r.stdout)["weights"]
            nodes = {c["node"]: c["bytes"] / 1e6 / c["seconds"] for c in doc["copies"]}
            runs.setdefault(f"orch stage {n - 1}", []).append(
                {"wall": r.wall, "per_node": nodes, "total": total * (n - 1) / 1e6 / r.wall})
            clear(lab, targets)
            w = scp(lab, targets)
            runs.setdefault(f"scp {n - 1}", []).append({"wall": w, "total": total * (n - 1) / 1e6 / w})
            C.say(f"  stage {r.wall:.1f}s, scp {w:.1f}s")
    clear(lab, ["h0", "h1", "h2"])
    C.dump("stage", {"bytes": total, "hashing": hashing, "runs": runs})
    md = C.header("Staging a model directory: orch stage vs scp", cmd)
    md += (f"- lab: 3 hosts (podman, private /srv/orch-lab each, one veth bridge on one machine); "
           f"data: {total / 1e6:.0f} MB in {4 + 5} files on h0 (4 random {per} MB weight files + "
           "the tiny model); targets emptied before every run; medians of "
           f"{a.reps} runs, cases interleaved\n"
           "- orch stage: the whole command (connect, manifests on every node, rsync daemon on h0, "
           "targets pull at once, verify the copy's manifest, swap in); per node = bytes / the "
           "pull's seconds; total = bytes to all targets / wall\n"
           "- scp: `scp -r` from h0 to every target at once (the lab's key), wall time\n"
           f"- manifests: `orch check` on 2 hosts hashing h0's {total / 1e6:.0f} MB the first time "
           f"{hashing['cold']:.1f}s, again (cached) {hashing['cached']:.1f}s\n")
    rows = []
    for n in (2, 3):
        s, p = runs[f"orch stage {n - 1}"], runs[f"scp {n - 1}"]
        per_node = [v for x in s for v in x["per_node"].values()]
        rows.append([f"1 -> {n - 1}", f"{C.med([x['wall'] for x in s]):.1f}", f"{C.med(per_node):.0f}",
                     f"{C.med([x['total'] for x in s]):.0f}", f"{C.med([x['wall'] for x in p]):.1f}",
                     f"{C.med([x['total'] for x in p]):.0f}"])
    md += "\n" + C.table(["copy", "orch stage s", "MB/s per node", "MB/s total", "scp s",
                          "scp MB/s total"], rows) + "\n"
    C.publish("stage", md, write=not a.no_write)
    if not a.keep_lab:
        C.lab_down()


if __name__ == "__main__":
    main()
