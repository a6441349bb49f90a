"""snapshot.Snapshot (what a status pass saw, as it travels from a keeper) and the keeper's
pure parts: which keeper belongs to which inventory, when one may be used, and that `stop`
only ever signals a keeper process.  The keeper itself runs on the lab
(tests/lab/test_keeper_lab.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from orchestrator import keeper
from orchestrator.cluster import Deployment
from orchestrator.plan import NodeNet
from orchestrator.snapshot import NodeLook, Snapshot

ROOT = Path(__file__).resolve().parents[2]
ADDR = [{"ifname": "lo", "flags": ["UP"], "addr_info": [{"family": "inet", "local": "127.0.0.1"}]},
        {"ifname": "enp189s0f0", "flags": ["UP"], "addr_info": [{"family": "inet", "local": "192.0.2.10"}]}]
FACTS = "ssh=198.51.100.7 50000 192.0.2.10 22\n==== addr\n" + json.dumps(ADDR) + "\n==== route\n[]\n"
OBJ = {"Id": "a1", "Name": "/orch-qwen3-vl-node0-1", "RestartCount": 2,
       "State": {"Status": "exited", "ExitCode": 137, "StartedAt": "2026-12-03T10:00:00Z"},
       "Config": {"Labels": {"orch.spec": "abc"}, "Image": "img"}}


def dep(tmp_path: Path, **changes: object) -> Deployment:
    d = yaml.safe_load((ROOT / "inventory.example.yaml").read_text())
    d.update(changes)
    p = tmp_path / "inv.yaml"
    p.write_text(yaml.safe_dump(d))
    return Deployment.load(p, with_secrets=False)


def test_snapshot_travels_as_json_and_parses_on_the_reading_side(tmp_path: Path) -> None:
    snap = Snapshot({"node0": NodeLook(facts=FACTS, containers=[OBJ], containers_via="api"),
                     "node1": NodeLook(facts_error="timed out", containers_error="HTTP 500")},
                    {"node2": "cannot connect"}, via="kept connections (keeper pid 1)")
    back = Snapshot.from_json(json.loads(json.dumps(snap.to_json())))
    assert back == snap
    d = dep(tmp_path)
    # node0's NIC and IP as the inventory pins them and the facts confirm; node1 had no facts
    assert back.nets(d.inv) == {"node0": NodeNet("enp189s0f0", "192.0.2.10")}
    c = back.containers("node0")
    assert not isinstance(c, str)
    assert (c[0].name, c[0].status, c[0].exit_code, c[0].restarts) == ("orch-qwen3-vl-node0-1", "exited", 137, 2)
    assert back.containers("node1") == "HTTP 500"


def test_facts_that_contradict_the_inventory_leave_the_node_out(tmp_path: Path) -> None:
    wrong = FACTS.replace("192.0.2.10", "192.0.2.99")
    snap = Snapshot({"node0": NodeLook(facts=wrong), "node1": NodeLook(facts="not json")})
    assert snap.nets(dep(tmp_path).inv) == {}


def test_one_keeper_per_inventory_connections(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_STATE_DIR", str(tmp_path / "state"))
    base = dep(tmp_path)
    same_targets = dep(tmp_path, image="other/image:2", overrides={"args": {"--max-model-len": 99}})
    assert keeper.key_of(base) == keeper.key_of(same_targets)  # flags are read by the client
    ssh = {**yaml.safe_load((ROOT / "inventory.example.yaml").read_text())["ssh"], "port": 2222}
    for other in (dep(tmp_path, ssh=ssh), dep(tmp_path, runtime="podman"),
                  dep(tmp_path, deployment="other"), dep(tmp_path, runtime_socket="off")):
        assert keeper.key_of(other) != keeper.key_of(base)
    assert keeper.socket_of(base).parent == tmp_path / "state" / "keepers"
    assert keeper.usable(base)
    assert not keeper.usable(dep(tmp_path, ssh={**ssh, "persist": 0}))
    monkeypatch.setenv("ORCH_STATE_DIR", str(tmp_path / ("x" * 90)))  # no room in sun_path
    assert not keeper.usable(base)


def test_stop_signals_only_a_keeper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_STATE_DIR", str(tmp_path))
    d = keeper.keepers_dir()
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    fake = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "orchestrator.keeper"])
    try:
        # right after the fork the child's command line can still be empty: wait for the exec
        end = time.monotonic() + 10
        while b"orchestrator.keeper" not in Path(f"/proc/{fake.pid}/cmdline").read_bytes():
            assert time.monotonic() < end, "the fake keeper never showed its command line"
            time.sleep(0.01)
        # a stale record whose PID now belongs to something else, and a "keeper" of another
        # deployment: neither is signalled
        (d / "a.pid").write_text(json.dumps({"pid": bystander.pid, "deployment": "qwen3-vl"}))
        (d / "b.pid").write_text(json.dumps({"pid": fake.pid, "deployment": "other"}))
        (d / "c.pid").write_text("not json")
        assert keeper.running() == [fake.pid]
        assert keeper.stop("qwen3-vl", timeout=1) == []
        assert bystander.poll() is None and fake.poll() is None
        assert keeper.stop("other", timeout=10) == [fake.pid]
        assert fake.wait(10) == -15 and bystander.poll() is None
    finally:
        bystander.kill()
        fake.kill()
        bystander.wait()
        fake.wait()


def test_no_keeper_means_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    monkeypatch.setenv("ORCH_STATE_DIR", str(tmp_path))
    d = dep(tmp_path)
    assert asyncio.run(keeper.snapshot(d)) is None
    keeper.socket_of(d).write_text("")  # a socket file left by a killed keeper: not a socket now
    assert asyncio.run(keeper.snapshot(d)) is None
