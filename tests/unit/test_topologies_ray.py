"""Topology ray (orchestrator/plan/ray.py, deploy/launchers.py RayLauncher): the plan of the lab's Ray playbook, its
errors, and the pieces of the launch that need no cluster (ray status parsing, the exec)."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator import config
from orchestrator.deploy.launchers import count_ray_nodes as count_nodes
from orchestrator.errors import PlaybookError, TopologyError
from orchestrator.inventory import Inventory
from orchestrator.plan import build_plan
from orchestrator.plan.ray import serve_exec_argv
from orchestrator.playbook import Playbook

ROOT = Path(__file__).resolve().parents[2]
PB = ROOT / "playbooks" / "cpu-lab-ray.yaml"

RAY_STATUS = """======== Autoscaler status: 2026-11-24 17:40:01.123456 ========
Node status
---------------------------------------------------------------
Active:
 1 node_4f0e2c1d9a7b6e5f4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c
 1 node_a1b2c3d4e5f60718293a4b5c6d7e8f9012345678
Pending:
 (no pending nodes)
Recent failures:
 (no failures)

Resources
---------------------------------------------------------------
Usage:
 0.0/2.0 CPU
 0.0/2.0 NPU
"""


def inventory(n: int, **kw: object) -> Inventory:
    return Inventory.model_validate({
        "deployment": "r", "playbook": str(PB), "image": "img", "runtime": "podman",
        "model": {"path": "/models/tiny", "served_name": "tiny"},
        "nodes": [{"name": f"h{i}", "host": f"10.77.0.{11 + i}", "nic": f"enp{i}s0", "ip": f"10.77.0.{11 + i}"}
                  for i in range(n)], **kw})


@pytest.fixture(scope="module")
def pb() -> Playbook:
    return config.load_playbook(PB)


def plan(pb: Playbook, n: int = 2, **kw: object):  # type: ignore[no-untyped-def]
    return build_plan(inventory(n, **kw), pb, config.load_profile(pb.profile, PB))


def test_head_starts_ray_and_carries_the_serve_line(pb: Playbook) -> None:
    p = plan(pb)
    head, worker = p.nodes
    assert (head.role, worker.role) == ("ray-head", "ray-worker")
    assert head.argv[head.argv.index("img") + 1:][:9] == [
        "ray", "start", "--head", "--port", "6379", "--block", "--node-ip-address", "10.77.0.11",
        "--disable-usage-stats"]
    tail = worker.argv[worker.argv.index("img") + 1:]
    assert tail[:4] == ["ray", "start", "--address", "10.77.0.11:6379"]
    assert tail[tail.index("--node-ip-address") + 1] == "10.77.0.12"
    assert tail[tail.index("--resources") + 1] == '{"NPU": 1}'  # one argv element, quoted once
    assert "--include-dashboard" in head.argv and "--include-dashboard" not in worker.argv
    s = head.serve_argv
    assert s[:3] == ["vllm", "serve", "/models/tiny"]
    for flag, value in (("--tensor-parallel-size", "2"), ("--pipeline-parallel-size", "1"),
                        ("--distributed-executor-backend", "ray"), ("--served-model-name", "tiny")):
        assert s[s.index(flag) + 1] == value
    assert "--data-parallel-size" not in s and "--headless" not in s
    assert worker.serve_argv == []
    # Ray and vLLM agree on every node's IP
    for spec in p.nodes:
        assert spec.env["VLLM_HOST_IP"] == spec.argv[spec.argv.index("--node-ip-address") + 1]
        assert spec.env["RAY_USAGE_STATS_ENABLED"] == "0"
    assert p.api_url == "http://10.77.0.11:8000" and p.dp_size == 1


def test_a_changed_serve_flag_is_drift_of_the_head_only(pb: Playbook) -> None:
    a = plan(pb)
    b = plan(pb, overrides={"args": {"--max-num-seqs": 8}})
    assert a.nodes[0].spec_hash != b.nodes[0].spec_hash
    assert a.nodes[1].spec_hash == b.nodes[1].spec_hash
    assert "--max-num-seqs" in b.nodes[0].serve_argv


def test_errors(pb: Playbook) -> None:
    with pytest.raises(TopologyError, match="needs 2"):
        plan(pb, 3)
    with pytest.raises(TopologyError, match="data parallel"):
        plan(pb, overrides={"data_parallel": 2})
    with pytest.raises(TopologyError, match="--distributed-executor-backend"):
        plan(pb, overrides={"args": {"--distributed-executor-backend": "mp"}})
    with pytest.raises(TopologyError, match="GCS port"):
        plan(pb, overrides={"api_port": 6379})


def test_playbook_rules(tmp_path: Path) -> None:
    base = {"name": "x-cpu-x", "profile": "cpu", "vllm_version": "0.32.0"}
    pb = Playbook.model_validate({**base, "topology": "ray"})
    assert pb.ray is not None and pb.ray.port == 6379
    with pytest.raises(ValueError, match="pipeline"):
        Playbook.model_validate({**base, "parallel": {"pipeline": 2}})
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: b\nprofile: cpu\nvllm_version: '0.32.0'\ntopology: ray\nray: {prot: 1}\n")
    with pytest.raises(PlaybookError, match="ray.prot"):
        config.load_playbook(bad)


def test_ray_status_parsing() -> None:
    assert count_nodes(RAY_STATUS) == 2
    assert count_nodes(RAY_STATUS.replace(" 1 node_a1b2c3d4e5f60718293a4b5c6d7e8f9012345678\n", "")) == 1
    assert count_nodes("Ray cluster is not found at 10.77.0.11:6379") == 0
    pending = RAY_STATUS.replace(" (no pending nodes)", " 1 node_ffff")  # pending nodes do not count
    assert count_nodes(pending) == 2


def test_serve_runs_in_the_head_container_and_stops_ray_when_it_exits() -> None:
    argv = serve_exec_argv("podman", "orch-r-h0-1234", ["vllm", "serve", "/m", "--served-model-name", "a b"])
    assert argv[:4] == ["podman", "exec", "-d", "orch-r-h0-1234"]
    assert argv[4:6] == ["sh", "-c"] and argv[7:] == ["sh", "vllm", "serve", "/m", "--served-model-name", "a b"]
    script = argv[6]
    assert script.startswith('"$@" >/proc/1/fd/1 2>/proc/1/fd/2;') and "ray stop --force" in script
