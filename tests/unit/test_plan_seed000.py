"""Seed 000 (Qwen3-VL-235B-A22B on two Atlas 800 A2, DP2 x TP8 + EP): the plan of
inventory.example.yaml must reproduce the tutorial's commands flag for flag."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from orchestrator.cluster import Deployment
from tests.seeds import blocks, command, exports, flag_pairs, seed_text

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "data" / "golden" / "seed000-plan.json"
NODES = {
    "node0": {"local_ip": "192.0.2.10", "nic_name": "enp189s0f0"},
    "node1": {"local_ip": "192.0.2.11", "nic_name": "enp189s0f0", "node0_ip": "192.0.2.10"},
}


@pytest.fixture(scope="module")
def plan():
    return Deployment.load(ROOT / "inventory.example.yaml").plan().groups[0]


@pytest.fixture(scope="module")
def seed_blocks():
    bs = blocks(seed_text("000"))
    serve = [b for b in bs if "vllm serve Qwen/Qwen3-VL" in b]
    docker = next(b for b in bs if "docker run" in b)
    assert len(serve) == 2, "seed 000 has a node0 and a node1 script"
    return {"node0": serve[0], "node1": serve[1], "docker": docker}


def serve_tokens(argv: list[str]) -> list[str]:
    return argv[argv.index("vllm"):]


@pytest.mark.parametrize("node", ["node0", "node1"])
def test_vllm_serve_flags_match_the_seed(plan, seed_blocks, node):
    seed = command(seed_blocks[node], ["vllm", "serve"], NODES[node])
    ours = serve_tokens(plan.node(node).argv)
    assert ours[:3] == seed[:3]  # vllm serve <model>
    assert flag_pairs(ours[3:]) == flag_pairs(seed[3:])


def test_roles_and_derived_flags(plan):
    head, rank1 = plan.node("node0"), plan.node("node1")
    assert (head.role, rank1.role) == ("head", "headless")
    s1 = serve_tokens(rank1.argv)
    assert "--headless" in s1 and "--api-server-count" not in s1
    assert s1[s1.index("--data-parallel-start-rank") + 1] == "1"
    assert s1[s1.index("--data-parallel-address") + 1] == "192.0.2.10"
    s0 = serve_tokens(head.argv)
    assert "--headless" not in s0 and "--data-parallel-start-rank" not in s0
    assert s0[s0.index("--data-parallel-address") + 1] == "192.0.2.10"


@pytest.mark.parametrize("node", ["node0", "node1"])
def test_env_is_the_seeds_with_the_nodes_own_nic_and_ip(plan, seed_blocks, node):
    seed_env = exports(seed_blocks[node], NODES[node])
    seed_env = {k: v for k, v in seed_env.items() if k not in ("nic_name", "local_ip", "node0_ip")}
    ours = plan.node(node).env
    assert {k: ours.get(k) for k in seed_env} == seed_env
    # one addition, on purpose: vLLM's own "what is my IP" guess is wrong on multi-NIC hosts
    assert set(ours) - set(seed_env) == {"VLLM_HOST_IP"}
    assert ours["VLLM_HOST_IP"] == NODES[node]["local_ip"]
    argv = plan.node(node).argv
    for k, v in ours.items():
        assert argv[argv.index(f"{k}={v}") - 1] == "-e"


@pytest.mark.parametrize("node", ["node0", "node1"])
def test_container_has_the_seeds_devices_and_mounts(plan, seed_blocks, node):
    seed = command(seed_blocks["docker"], ["docker", "run"], {})
    ours = plan.node(node).argv
    pairs = set(flag_pairs(ours[: ours.index(plan.image)]))
    for flag, value in flag_pairs(seed[2:]):
        if flag in ("--device", "-v", "--net", "--privileged", "--shm-size") or flag.startswith(
                ("--net=", "--privileged=", "--shm-size=")):
            assert (flag, value) in pairs, f"{flag} {value} missing"
    assert ours[:3] == ["docker", "run", "-d"]


def test_golden_argv(plan):
    """The whole rendered plan, pinned. Regenerate with ORCH_UPDATE_GOLDEN=1 after a deliberate change."""
    doc = plan.to_json()
    if os.environ.get("ORCH_UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps(doc, indent=2) + "\n")
    assert doc == json.loads(GOLDEN.read_text())


def test_container_names_are_deterministic_and_carry_the_spec(plan):
    again = Deployment.load(ROOT / "inventory.example.yaml").plan().groups[0]
    for a, b in zip(plan.nodes, again.nodes):
        assert a.container == b.container and a.argv == b.argv
        assert a.container.startswith("orch-qwen3-vl-") and a.spec_hash[:8] in a.container
        assert a.labels["orch.spec"] == a.spec_hash
    assert plan.nodes[0].spec_hash != plan.nodes[1].spec_hash


def test_a_nodes_cpus_pin_its_container_only(plan, tmp_path):
    doc = yaml.safe_load((ROOT / "inventory.example.yaml").read_text())
    doc["nodes"][1]["cpus"] = "0-23,48-71"
    p = tmp_path / "inv.yaml"
    p.write_text(yaml.safe_dump(doc))
    pinned = Deployment.load(p).plan().groups[0]
    n0, n1 = pinned.nodes
    assert "--cpuset-cpus=0-23,48-71" in n1.argv and not any("cpuset" in a for a in n0.argv)
    assert n0.spec_hash == plan.nodes[0].spec_hash  # the other node is not redeployed
    assert n1.spec_hash != plan.nodes[1].spec_hash  # the pinned one is
