"""Fleets through the one `up` skeleton, on the fake hosts of test_topologies_launch.py with a
fake vllm-router (its worker list over HTTP): the router first, replicas put into it only once
proven, a dead replica taken out and replaced alone, a changed spec rolled out one replica at
a time with the router never empty, and a new replica that fails stopping the rollout with
the old replica still routed to."""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import pytest

from orchestrator import config, probe
from orchestrator.cluster import Deployment
from orchestrator.deploy import UpOptions, up
from orchestrator.errors import RolloutHalted
from orchestrator.inventory import Inventory
from tests.unit.test_topologies_launch import FakeHost, FakeSession, World

ROOT = Path(__file__).resolve().parents[2]
PB = ROOT / "playbooks" / "cpu-lab-single.yaml"
OPTS = UpOptions(checks=False, timeout_s=10)


class FleetWorld(World):
    """Two single-node replicas (h0, h1) and the router on h0:8080."""

    def __init__(self, dies: str | None = None) -> None:
        super().__init__(dies)
        self.workers: list[str] = []
        self.history: list[tuple[str, list[str]]] = []  # (event, router workers then)

    def node_up(self, node: str, role: str) -> bool:
        return any(c["running"] and c["node"] == node and c["labels"]["orch.role"] == role
                   for c in self.containers.values())

    def http(self, req: httpx.Request) -> httpx.Response:
        node = f"h{int(req.url.host.rsplit('.', 1)[1]) - 11}"
        if req.url.port == 8080:
            if not self.node_up(node, "router"):
                raise httpx.ConnectError("refused", request=req)
            url = parse_qs(req.url.query.decode()).get("url", [""])[0]
            if req.url.path == "/list_workers":
                return httpx.Response(200, json={"urls": list(self.workers)})
            if req.url.path == "/add_worker" and url not in self.workers:
                self.workers.append(url)
                self.history.append((f"add {url}", list(self.workers)))
            elif req.url.path == "/remove_worker" and url in self.workers:
                self.workers.remove(url)
                self.history.append((f"remove {url}", list(self.workers)))
            return httpx.Response(200, text="ok")
        if not self.node_up(node, "single"):
            raise httpx.ConnectError("refused", request=req)
        if req.url.path == "/metrics":
            return httpx.Response(200, text=f'vllm:request_success_total{{engine="0"}} {self.served}\n')
        return super_http(self, req)


def super_http(w: World, req: httpx.Request) -> httpx.Response:
    path = req.url.path
    if path == "/v1/models":
        return httpx.Response(200, json={"data": [{"id": "tiny"}]})
    if path == "/v1/completions":
        w.served += 1
        return httpx.Response(200, json={"choices": [{"text": " Paris."}]})
    return httpx.Response(200, json={"version": "0.32.0"})


def session(world: World, env: dict[str, str] | None = None) -> FakeSession:
    inv = Inventory.model_validate({
        "deployment": "t", "playbook": str(PB), "image": "img", "runtime": "podman",
        "model": {"path": "/m", "served_name": "tiny"}, "overrides": {"env": env or {}},
        "replicas": 2, "router": {},
        "nodes": [{"name": f"h{i}", "host": f"10.77.0.{11 + i}", "nic": f"e{i}", "ip": f"10.77.0.{11 + i}"}
                  for i in range(2)]})
    pb = config.load_playbook(PB)
    dep = Deployment(PB, inv, pb, config.load_profile(pb.profile, PB))
    return FakeSession(dep, {f"h{i}": FakeHost(f"h{i}", world) for i in range(2)})  # type: ignore[dict-item]


@pytest.fixture(autouse=True)
def fast(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ORCH_STATE_DIR", str(tmp_path))
    real_sleep = asyncio.sleep

    async def no_sleep(_: float) -> None:
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", no_sleep)


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> FleetWorld:
    w = FleetWorld()
    monkeypatch.setattr(probe, "TRANSPORT", httpx.MockTransport(w.http))
    return w


R0, R1 = "http://10.77.0.11:8000", "http://10.77.0.12:8000"


def test_first_up_router_first_then_both_replicas_then_a_noop(world: FleetWorld) -> None:
    res = asyncio.run(up(session(world), OPTS))
    assert res.changed and res.deployed == ["router", "replica 0", "replica 1"]
    runs = [st for _, st in world.log if st.startswith("run")]
    assert runs[0] == "run router" and sorted(runs[1:]) == ["run single", "run single"]
    assert sorted(world.workers) == [R0, R1]
    n = len(world.log)
    again = asyncio.run(up(session(world), OPTS))
    assert not again.changed and world.log[n:] == []
    # the router lost its list (restarted by hand): the next up only gives it back
    world.workers.clear()
    synced = asyncio.run(up(session(world), OPTS))
    assert synced.changed and "router workers synced" in synced.reason and sorted(world.workers) == [R0, R1]


def test_a_dead_replica_is_taken_out_replaced_alone_and_put_back(world: FleetWorld) -> None:
    asyncio.run(up(session(world), OPTS))
    r1 = next(c for c in world.containers.values() if c["node"] == "h1")
    r1["running"] = False
    keep = {i for i, c in world.containers.items() if c["node"] == "h0"}
    world.history.clear()
    res = asyncio.run(up(session(world), OPTS))
    assert res.deployed == ["replica 1"]
    assert keep <= set(world.containers)  # replica 0 and the router untouched
    # out of the router before anything else happens to it, back in once proven
    assert world.history == [(f"remove {R1}", [R0]), (f"add {R1}", [R0, R1])]


def test_a_changed_spec_rolls_one_replica_at_a_time(world: FleetWorld) -> None:
    asyncio.run(up(session(world), OPTS))
    world.history.clear()
    res = asyncio.run(up(session(world, env={"ORCH_TEST_DRIFT": "1"}), OPTS))
    assert res.deployed == ["replica 0", "replica 1"]
    assert [e for e, _ in world.history] == [f"remove {R0}", f"add {R0}", f"remove {R1}", f"add {R1}"]
    assert all(ws for _, ws in world.history), "the router was left with no replica"


def test_a_new_replica_that_fails_stops_the_rollout_old_ones_serve(monkeypatch) -> None:
    world = FleetWorld()
    monkeypatch.setattr(probe, "TRANSPORT", httpx.MockTransport(world.http))
    asyncio.run(up(session(world), OPTS))
    world.dies = "single"  # every new replica's container exits at once
    with pytest.raises(RolloutHalted, match=r"(?s)replica 0 on h0 failed: rank on node h0 is exited.*"
                                            r"the router still routes to: replica 1") as e:
        asyncio.run(up(session(world, env={"ORCH_TEST_DRIFT": "1"}), OPTS))
    assert world.workers == [R1]
    assert any(c["node"] == "h1" and c["running"] for c in world.containers.values())
    assert e.value.exit_code == 1


def test_status_shows_each_replica_and_the_routers_view(world: FleetWorld) -> None:
    from orchestrator.status import deployment_status

    asyncio.run(up(session(world), OPTS))

    async def look():  # type: ignore[no-untyped-def]
        s = session(world)
        return await deployment_status(s.dep, await s.snapshot())

    st = asyncio.run(look())
    assert st.healthy and st.api_ready and [g.healthy for g in st.groups] == [True, True]
    doc = st.to_json()
    assert [r["replica"] for r in doc["replicas"]] == [0, 1]  # type: ignore[index]
    assert doc["router"]["workers"] == [R0, R1] and doc["router"]["healthy"]  # type: ignore[index]
    assert [(n["name"], n["role"], n["replica"]) for n in doc["nodes"]] == [  # type: ignore[index]
        ("h0", "single", 0), ("h1", "single", 1), ("h0", "router", None)]
    rank = next(c for c in world.containers.values()
                if c["node"] == "h1" and c["labels"]["orch.role"] == "single")
    rank["running"] = False
    world.workers.remove(R1)  # the router's health check dropped it
    st = asyncio.run(look())
    assert not st.healthy and [g.healthy for g in st.groups] == [True, False]
    assert st.router is not None and st.router.healthy  # it routes to exactly the healthy one
