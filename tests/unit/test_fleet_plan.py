"""Fleets (orchestrator/plan/fleet.py): the inventory's nodes split into replicas, each planned
by its topology's own planner on its own nodes, and vllm-router in front of them."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator import config
from orchestrator.errors import InventoryError, TopologyError
from orchestrator.inventory import Inventory
from orchestrator.plan import build_plan, fleet_plan

ROOT = Path(__file__).resolve().parents[2]
DP = ROOT / "playbooks" / "cpu-lab-dp.yaml"
SINGLE = ROOT / "playbooks" / "cpu-lab-single.yaml"


def inventory(pb: Path, n: int, **kw: object) -> Inventory:
    return Inventory.model_validate({
        "deployment": "f", "playbook": str(pb), "image": "img", "runtime": "podman",
        "model": {"path": "/m", "served_name": "tiny"},
        "nodes": [{"name": f"h{i}", "host": f"10.77.0.{11 + i}", "nic": f"e{i}", "ip": f"10.77.0.{11 + i}"}
                  for i in range(n)], **kw})


def fleet(pb: Path, n: int, **kw: object):  # type: ignore[no-untyped-def]
    p = config.load_playbook(pb)
    return fleet_plan(inventory(pb, n, **kw), p, config.load_profile(p.profile, pb))


def test_two_dp_replicas_behind_the_router() -> None:
    f = fleet(DP, 4, replicas=2, router={})
    assert [g.node_names() for g in f.groups] == [["h0", "h1"], ["h2", "h3"]]
    assert [g.replica for g in f.groups] == [0, 1]
    assert [g.api_url for g in f.groups] == ["http://10.77.0.11:8000", "http://10.77.0.13:8000"]
    r1 = f.groups[1]
    assert [(n.name, n.role) for n in r1.nodes] == [("h2", "head"), ("h3", "headless")]
    s = r1.nodes[1].serve_argv
    assert s[s.index("--data-parallel-address") + 1] == "10.77.0.13"  # its own head
    assert s[s.index("--data-parallel-start-rank") + 1] == "1"
    # the router: on the first node, no worker in its argv (orch adds them), its own metrics port
    r = f.router
    assert r is not None and (r.name, r.role, r.api_url) == ("h0", "router", "http://10.77.0.11:8080")
    cmd = r.argv[r.argv.index("img") + 1:]
    assert cmd[:7] == ["vllm-router", "--host", "0.0.0.0", "--port", "8080", "--policy", "round_robin"]
    assert "--worker-urls" not in cmd and cmd[cmd.index("--prometheus-port") + 1] == "9080"
    assert "--device" not in r.argv and not any(a.endswith(":ro") for a in r.argv)
    assert f.api_url == "http://10.77.0.11:8080"
    assert len({n.container for n in f.nodes}) == 5
    doc = f.to_json()
    assert [x["replica"] for x in doc["replicas"]] == [0, 1] and doc["router"]["role"] == "router"


def test_a_replica_is_planned_as_the_same_nodes_alone_would_be() -> None:
    f = fleet(DP, 4, replicas=2, router={})
    p = config.load_playbook(DP)
    inv = inventory(DP, 4)
    alone = build_plan(inv.model_copy(update={"nodes": inv.nodes[2:]}), p, config.load_profile(p.profile, DP))
    assert [n.spec_hash for n in f.groups[1].nodes] == [n.spec_hash for n in alone.nodes]


def test_groups_name_the_nodes_and_leave_one_for_the_router() -> None:
    f = fleet(SINGLE, 3, groups=[["h1"], ["h2"]], router={"node": "h0", "port": 9000})
    assert [g.node_names() for g in f.groups] == [["h1"], ["h2"]]
    assert f.router is not None and f.router.name == "h0" and f.api_url == "http://10.77.0.11:9000"


def test_a_router_only_node_without_nic_and_ip_is_unresolved_until_facts_name_them() -> None:
    p = config.load_playbook(SINGLE)
    inv = inventory(SINGLE, 3, groups=[["h1"], ["h2"]], router={"node": "h0"})
    bare = inv.model_copy(update={"nodes": [inv.nodes[0].model_copy(update={"nic": None, "ip": None}),
                                            *inv.nodes[1:]]})
    f = fleet_plan(bare, p, config.load_profile(p.profile, SINGLE))
    assert f.unresolved == ["h0"]  # in no group: only the router's own planning knows it
    assert fleet(SINGLE, 3, groups=[["h1"], ["h2"]], router={"node": "h0"}).unresolved == []


@pytest.mark.parametrize(("kw", "needle"), [
    ({"replicas": 3, "router": {}}, "do not split into 3 equal replicas"),
    ({"replicas": 2, "groups": [["h0"]], "router": {}}, "not both"),
    ({"groups": [["h0"], ["h0", "h1"]], "router": {}}, "in more than one replica"),
    ({"groups": [["h0"]], "router": {}}, "h1, h2, h3 in no replica"),
    ({"groups": [["h9"]], "router": {}}, "h9 not among the nodes"),
    ({"replicas": 2, "router": {"node": "h7"}}, "router.node 'h7'"),
    ({"replicas": 2, "head": "h1", "router": {}}, "head: is for a single deployment"),
])
def test_bad_fleets_are_input_errors(kw: dict, needle: str) -> None:
    with pytest.raises((InventoryError, ValueError), match=needle):
        inventory(SINGLE if "groups" in kw else DP, 4, **kw)


@pytest.mark.parametrize(("kw", "needle"), [
    ({"replicas": 2}, "needs a router"),
    ({"replicas": 2, "router": {"port": 8000}}, "router.port 8000"),
    ({"replicas": 2, "router": {"args": {"--policy": "random"}}}, "set by orch"),
])
def test_bad_fleet_plans_are_topology_errors(kw: dict, needle: str) -> None:
    with pytest.raises(TopologyError, match=needle):
        fleet(DP, 4, **kw)


def test_a_replica_that_does_not_fit_the_playbook_says_which() -> None:
    with pytest.raises(TopologyError, match=r"replica 0 \(h0\): .*data parallel"):
        fleet(DP, 2, replicas=2, router={})
