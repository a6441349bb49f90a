"""The preflight's pure decisions: per-node verdicts from facts, cross-node attribution
(which node is at fault), skip matching and the report's JSON."""

from __future__ import annotations

import dataclasses

import pytest

from orchestrator.hw import ProbeOutput
from orchestrator.hw.ascend import NpuLinkFacts
from orchestrator.hw.ascend_probe import AscendProbe
from orchestrator.inventory import Node
from orchestrator.plan import NodeSpec
from orchestrator.preflight import CheckResult, Report, skipped, unknown_skips
from orchestrator.preflight.accel import hccn_ping_plan, need_devices
from orchestrator.preflight.parse import CrossFacts, Disk, NodeFacts, Reach
from orchestrator.preflight.verdicts import (
    NodeCtx,
    majority,
    node_checks,
    ping_checks,
    ports_reachable_checks,
    same_checks,
)


def spec(name: str = "h0", tp: int = 1, dpl: int = 1) -> NodeSpec:
    return NodeSpec(name=name, role="head", host=name, ranks=tuple(range(dpl)), nic="eth0",
                    ip="10.0.0.1", container="c", labels={}, env={},
                    serve_argv=["vllm", "serve", "m", "--tensor-parallel-size", str(tp)],
                    argv=[], spec_hash="abc")


def ctx(**kw) -> NodeCtx:
    base = dict(specs=(spec(),), inv_node=Node(name="h0", host="h0"), runtime="docker",
                deployment="d", image="img", model="/m", ports=(("API", 8000), ("rpc", 13389)),
                shm_size="16g", ipc_host=False)
    base.update(kw)
    return NodeCtx(**base)  # type: ignore[arg-type]


def facts(**kw) -> NodeFacts:
    f = NodeFacts(uid=0, runtime_path="/usr/bin/docker", runtime_info=ProbeOutput("27.0\n", 0),
                  image=ProbeOutput("sha256:1\n", 0), listeners=[], model="ok", model_bytes=10,
                  disks=[Disk("/", 50 * 10**9, 100 * 10**9)],
                  shm=Disk("/dev/shm", 64 * 2**20, 64 * 2**20), containers=[], complete=True)
    return dataclasses.replace(f, **kw)


def verdicts(c: NodeCtx, f: NodeFacts) -> dict[str, CheckResult]:
    return {r.check: r for r in node_checks(c, f, "root")[0]}


def test_daemon_down_names_the_fix_and_skips_dependents():
    v = verdicts(ctx(), facts(runtime_info=ProbeOutput(
        "Cannot connect to the Docker daemon at unix:///var/run/docker.sock.\n", 1)))
    assert v["runtime.daemon"].status == "fail" and "systemctl start docker" in v["runtime.daemon"].fix
    assert "image.present" not in v and "stale.containers" not in v


def test_not_root():
    v = verdicts(ctx(), facts(uid=1000))
    assert v["ssh.root"].status == "fail" and "uid 1000" in v["ssh.root"].reason


@pytest.mark.parametrize("shm_size,ipc_host,shm_bytes,want", [
    ("16g", False, 64 * 2**20, "pass"),   # own /dev/shm per container; the host's is irrelevant
    (None, False, 64 * 2**30, "warn"),    # the runtime's 64 MB default
    ("64m", False, 64 * 2**30, "warn"),
    ("16g", True, 8 * 2**30, "warn"),     # shares the host's, which is smaller than asked
    (None, True, 32 * 2**30, "pass"),
])
def test_shm_size(shm_size, ipc_host, shm_bytes, want):
    v = verdicts(ctx(shm_size=shm_size, ipc_host=ipc_host),
                 facts(shm=Disk("/dev/shm", shm_bytes, shm_bytes)))
    assert v["shm.size"].status == want


def test_disk_free_warns_under_10gb():
    v = verdicts(ctx(), facts(disks=[Disk("/", 50 * 10**9, 1), Disk("/models", 3 * 10**9, 1)]))
    assert v["disk.free"].status == "warn" and "/models" in v["disk.free"].reason
    assert "/ on" not in v["disk.free"].reason


def test_nic_down():
    from orchestrator.netinfo import Iface, NetFacts

    net = NetFacts(None, (Iface("eth0", False, ("10.0.0.1",)),), None)
    v = verdicts(ctx(inv_node=Node(name="h0", host="h0", nic="eth0")), facts(net=net))
    assert v["net.nic"].status == "fail" and "DOWN" in v["net.nic"].reason


def test_ports_free_only_on_the_head():
    assert "ports.free" not in verdicts(ctx(ports=()), facts())  # a headless rank binds none


def test_majority_and_ties():
    assert majority({"a": "x", "b": "x", "c": "y"}) == "x"
    assert majority({"a": "x", "b": "y"}) is None
    rs = {r.node: r for r in same_checks("image.same", {"a": "x", "b": "y"}, "image ID", "fix")}
    assert rs["a"].status == rs["b"].status == "fail" and "but b y" in rs["a"].reason


def reach(ok: bool) -> Reach:
    return Reach(ok, "ping", "")


def cross(pings: dict[str, bool]) -> CrossFacts:
    return CrossFacts(pings={ip: reach(ok) for ip, ok in pings.items()})


IPS = {"a": "10.0.0.1", "b": "10.0.0.2", "c": "10.0.0.3"}


def test_ping_two_nodes_both_directions_dead_fails_both():
    ips = {"a": IPS["a"], "b": IPS["b"]}
    rs = ping_checks(["a", "b"], ips, {"a": cross({IPS["b"]: False}), "b": cross({IPS["a"]: False})})
    assert {(r.node, r.status) for r in rs} == {("a", "fail"), ("b", "fail")}


def test_ping_two_nodes_one_direction_fails_the_pinger():
    ips = {"a": IPS["a"], "b": IPS["b"]}
    rs = ping_checks(["a", "b"], ips, {"a": cross({IPS["b"]: False}), "b": cross({IPS["a"]: True})})
    assert {(r.node, r.status) for r in rs} == {("a", "fail"), ("b", "pass")}


def test_ping_tcp_fallback_is_said():
    rs = ping_checks(["a", "b"], {"a": IPS["a"], "b": IPS["b"]},
                     {"a": CrossFacts(pings={IPS["b"]: Reach(True, "tcp", "refused")}),
                      "b": CrossFacts(pings={IPS["a"]: Reach(True, "tcp", "connected")})})
    assert all(r.status == "pass" and "over TCP" in r.reason for r in rs)


def test_ports_reachable_attribution():
    head = CrossFacts(listens={8000: ["bound python3"], 13389: ["bound python3"]})
    peers = {p: CrossFacts(connects={("10.0.0.1", 8000): "connected", ("10.0.0.1", 13389): r})
             for p, r in (("b", "refused"), ("c", "refused"))}
    rs = {r.node: r for r in ports_reachable_checks(
        "a", "10.0.0.1", [("API", 8000), ("rpc", 13389)], set(), {"a": head, **peers})}
    assert rs["a"].status == "fail" and "rejects" in rs["a"].reason
    assert rs["b"].status == rs["c"].status == "pass"


def test_ports_reachable_no_listener_tool_warns():
    head = CrossFacts(listens={8000: ["no tool: neither python3 nor perl to open a test listener"]})
    rs = {r.node: r for r in ports_reachable_checks(
        "a", "10.0.0.1", [("API", 8000)], set(), {"a": head, "b": CrossFacts()})}
    assert rs["a"].status == "warn" and "nc -l" in rs["a"].fix
    assert "b" not in rs  # nothing was tested from b


def test_need_devices_is_tp_times_local_dp():
    assert need_devices([spec(tp=8, dpl=2)]) == 16
    assert need_devices([spec(tp=4)]) == 4


def probe(ips: dict[int, str | None], down: set[int] = frozenset()) -> AscendProbe:  # type: ignore[assignment]
    per = {d: NpuLinkFacts(link="DOWN" if d in down else "UP",
                           ip=(a, "255.255.0.0") if a else None) for d, a in ips.items()}
    return AscendProbe(None, per, None, None, None)


def test_hccn_ping_plan_skips_dead_and_unaddressed_npus():
    plan = hccn_ping_plan({
        "a": probe({0: "192.168.100.1", 1: "192.168.100.2"}),
        "b": probe({0: "192.168.101.1", 1: "192.168.101.2"}, down={1}),
        "c": probe({0: "192.168.102.1", 1: None}),
    })
    assert plan["a"] == {0: ["192.168.101.1", "192.168.102.1"]}
    assert plan["b"] == {0: ["192.168.100.1", "192.168.102.1"]}
    assert plan["c"] == {0: ["192.168.100.1", "192.168.101.1"]}


def test_npu_address_used_on_two_nodes_fails_both():
    from orchestrator.preflight.accel import ascend_checks

    probes = {n: probe({0: "192.168.100.1"}) for n in ("a", "b")}
    rs = ascend_checks({"a": [spec("a")], "b": [spec("b")]}, probes, {}, {})
    ip = {r.node: r for r in rs if r.check == "hccn.ip"}
    assert ip["a"].status == ip["b"].status == "fail" and "a NPU 0, b NPU 0" in ip["a"].reason


@pytest.mark.parametrize("check,skip,want", [
    ("npu.count", {"npu"}, True), ("npu.count", {"npu.*"}, True), ("npu.count", {"npu."}, True),
    ("ports.free", {"ports.free"}, True), ("ports.reachable", {"ports.free"}, False),
    ("net.nic", {"net.ni"}, False), ("stale.shm", {"stale"}, True),
])
def test_skip_matching(check, skip, want):
    assert skipped(check, skip) is want


def test_unknown_skips():
    assert unknown_skips(["npu", "ports.free", "prots.free"]) == ["prots.free"]


def test_report_json_and_failed():
    r = Report([CheckResult("a", "net.nic", "pass", "eth0 10.0.0.1", ""),
                CheckResult("a", "ports.free", "warn", "x", "y")], 1.234)
    assert not r.failed
    assert r.to_json() == {"ok": True, "seconds": 1.23, "nodes": {"a": {
        "net.nic": {"status": "pass", "reason": "eth0 10.0.0.1", "fix": ""},
        "ports.free": {"status": "warn", "reason": "x", "fix": "y"}}}}
    r.results.append(CheckResult("b", "net.nic", "fail", "no", "fix"))
    assert r.failed and r.to_json()["ok"] is False
