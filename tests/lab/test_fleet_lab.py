"""A fleet on the lab: 2 replicas of the single-node lab playbook (h0, h1; 2 cores hold two
vLLM CPU instances and a router, not two 2-node DP groups) behind vllm-router on h2, with a
client loop sending real completions through the router the whole time:

  - a replica's rank killed: the router stops sending to it (its health check, retries of
    refused connections); `orch up` takes it out, redeploys it alone, proves it, puts it back,
    and it serves again; no failed request after the router dropped it
  - a serve flag changed: the replicas are replaced one at a time, no failed request
  - a new replica that cannot start: `orch up` exits non-zero naming the node, the old
    replica still serves, still no failed request

Runtime-independent: on the podman lab only."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
import yaml

from orchestrator.lab.loadgen import ClientLoop
from tests.lab.conftest import LAUNCH_TIMEOUT, containers, wait_for

ROUTER = "http://10.77.0.13:8080"
R0, R1 = "http://10.77.0.11:8000", "http://10.77.0.12:8000"
# the router's health check runs every 2 s and drops a replica after 2 failures; a killed
# replica refuses connections at once, which the router retries on the other one
DROP_BOUND_S = 8.0


def fleet_inventory(lab, tmp_path: Path, name: str, **overrides) -> Path:  # type: ignore[no-untyped-def]
    from orchestrator.lab import write_inventory

    p = write_inventory(tmp_path / f"{name}.yaml", lab.hosts, lab.runtime, nodes=3, deployment=name,
                        playbook="cpu-lab-single")
    doc = yaml.safe_load(p.read_text())
    doc.pop("head", None)
    doc.update(groups=[["h0"], ["h1"]], router={"node": "h2"})
    if overrides:
        doc["overrides"] = overrides
    p.write_text(yaml.safe_dump(doc))
    return p


def workers() -> list[str]:
    return httpx.get(f"{ROUTER}/list_workers", trust_env=False, timeout=10).json()["urls"]


def finished(url: str) -> float:
    text = httpx.get(f"{url}/metrics", trust_env=False, timeout=10).text
    return sum(float(ln.split()[-1]) for ln in text.splitlines()
               if ln.startswith("vllm:request_success_total{"))


def ids(lab) -> dict[str, list[str]]:  # type: ignore[no-untyped-def]
    return {h: [c["id"] for c in cs] for h, cs in containers(lab).items()}


@pytest.fixture
def podman_only(lab):  # type: ignore[no-untyped-def]
    if lab.runtime != "podman":
        pytest.skip("runtime-independent: runs on the podman lab only")
    return lab


def test_a_killed_replica_is_dropped_redeployed_alone_and_serves_again(podman_only, orch, tmp_path):
    lab = podman_only
    inv = fleet_inventory(lab, tmp_path, "fleet")
    try:
        r = orch("up", str(inv), "--json", "--timeout", str(LAUNCH_TIMEOUT - 20))
        assert r.returncode == 0, r.stderr[-3000:]
        assert json.loads(r.stdout)["deployed"] == ["router", "replica 0", "replica 1"]
        assert sorted(workers()) == [R0, R1]
        st = orch.status(inv)
        assert st["healthy"] and [g["healthy"] for g in st["replicas"]] == [True, True], st
        assert st["router"]["workers"] == st["router"]["expected"]
        with ClientLoop(ROUTER) as loop:
            time.sleep(5)
            before = ids(lab)
            killed_at = time.monotonic()
            lab.run_on("h1", [lab.runtime, "kill", before["h1"][0]], check=True)
            time.sleep(DROP_BOUND_S + 4)
            r = orch("up", str(inv), "--json", "--timeout", str(LAUNCH_TIMEOUT - 20))
            assert r.returncode == 0, r.stderr[-3000:]
            assert json.loads(r.stdout)["deployed"] == ["replica 1"]
            back_at = time.monotonic()
            served_h1 = finished(R1)
            time.sleep(5)
        after = ids(lab)
        assert after["h0"] == before["h0"] and after["h2"] == before["h2"]  # untouched
        assert after["h1"] != before["h1"]
        assert sorted(workers()) == [R0, R1]
        assert finished(R1) > served_h1, "the redeployed replica got no request from the router"
        early = loop.between(killed_at, killed_at + DROP_BOUND_S)
        late = loop.between(killed_at + DROP_BOUND_S)
        print("kill -> drop:", ClientLoop.summary(early), "after the drop:", ClientLoop.summary(late),
              "after the redeploy:", ClientLoop.summary(loop.between(back_at)))
        assert late and not [s for s in late if not s.ok], ClientLoop.summary(late)
        assert orch.status(inv)["healthy"]
    finally:
        r = orch("down", str(inv), timeout=120)
    assert r.returncode == 0, r.stderr
    assert all(not cs for cs in containers(lab).values())


def test_a_rollout_replaces_one_replica_at_a_time_and_stops_at_a_failure(podman_only, orch, tmp_path):
    lab = podman_only
    inv = fleet_inventory(lab, tmp_path, "roll")
    try:
        r = orch("up", str(inv), "--timeout", str(LAUNCH_TIMEOUT - 20))
        assert r.returncode == 0, r.stderr[-3000:]
        first = ids(lab)
        with ClientLoop(ROUTER) as loop:
            t0 = time.monotonic()
            changed = fleet_inventory(lab, tmp_path, "roll", args={"--max-num-seqs": 8})
            seen: list[list[str]] = []
            p = orch.popen("up", str(changed), "--json", "--timeout", str(LAUNCH_TIMEOUT - 20))
            try:
                while p.poll() is None:
                    seen.append(sorted(workers()))
                    time.sleep(1)
                out, err = p.communicate(timeout=60)
            finally:
                if p.returncode is None:
                    p.kill()
                    p.communicate(timeout=60)
            assert p.returncode == 0, err[-3000:]
            assert json.loads(out)["deployed"] == ["replica 0", "replica 1"]
            assert all(seen_now for seen_now in seen), "the router had no replica at some point"
            assert [R1] in seen and [R0] in seen  # one at a time: each was out alone once
            rolled = ClientLoop.summary(loop.between(t0))
            print("rolling update of 2 replicas:", rolled)
            assert rolled["failed"] == 0, rolled
            second = ids(lab)
            assert second["h0"] != first["h0"] and second["h1"] != first["h1"]

            # a new replica that cannot start: the rollout stops, the old one serves
            t1 = time.monotonic()
            broken = fleet_inventory(lab, tmp_path, "roll", args={"--max-model-len": 100000})
            r = orch("up", str(broken), "--timeout", str(LAUNCH_TIMEOUT - 20))
            assert r.returncode == 1, r.stderr[-3000:]
            assert "replica 0 on h0 failed" in r.stderr and "rank on node h0 is" in r.stderr, r.stderr[-3000:]
            assert "the router still routes to: replica 1" in r.stderr
            assert workers() == [R1] and ids(lab)["h1"] == second["h1"]
            failed_rollout = ClientLoop.summary(loop.between(t1))
            print("a failing new replica:", failed_rollout)
            assert failed_rollout["failed"] == 0, failed_rollout
        # the inventory put back: replica 0 comes back, replica 1 (already right) is not touched
        changed = fleet_inventory(lab, tmp_path, "roll", args={"--max-num-seqs": 8})
        r = orch("up", str(changed), "--json", "--timeout", str(LAUNCH_TIMEOUT - 20))
        assert r.returncode == 0 and json.loads(r.stdout)["deployed"] == ["replica 0"], r.stderr[-3000:]
        assert ids(lab)["h1"] == second["h1"] and sorted(workers()) == [R0, R1]
        wait_for(lambda: orch.status(changed)["healthy"], 60, interval=5, what="a healthy fleet")
    finally:
        r = orch("down", str(inv), timeout=120)
    assert r.returncode == 0, r.stderr
    assert all(not cs for cs in containers(lab).values())
