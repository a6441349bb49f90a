"""Seed 001's three-node prefill/decode deployment, planned by orchestrator/pd.py from
playbooks/pd/qwen3-235b-a22b-w8a8-a3-pd.yaml, compared flag for flag, env var for env var and
JSON key for JSON key with the seed's prefill, decode and proxy lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from orchestrator import config
from orchestrator.errors import TopologyError
from orchestrator.flags import canonical
from orchestrator.plan import NodeNet
from orchestrator.plan.pd import plan_pd
from orchestrator.playbook import PDPlaybook
from tests.seeds import command_env, exports, flag_pairs, section, seed_text, split_eq

ROOT = Path(__file__).resolve().parents[2]
PB_PATH = ROOT / "playbooks" / "pd" / "qwen3-235b-a22b-w8a8-a3-pd.yaml"
NIC = "enp189s0f0"
NODES = [("prefill1", "192.0.2.20"), ("decode1", "192.0.2.21"), ("decode2", "192.0.2.22")]
# The seed's literal placeholders -> the values of this test's nodes and the playbook's ports.
PLACEHOLDERS = {
    "prefill_node_1_ip": "192.0.2.20", "decode_node_1_ip": "192.0.2.21",
    "decode_node_2_ip": "192.0.2.22", "prefill_node_dp_port": "13389",
    "decode_node_dp_port": "13389", 'ifname=""': f'ifname="{NIC}"',
}
BLOCKS = {
    "prefill1": ("Prefill Node 1\n", "Decode Node 1\n"),
    "decode1": ("Decode Node 1\n", "Decode Node 2\n"),
    "decode2": ("Decode Node 2\n", "PD proxy:"),
}
MOONCAKE = "/usr/local/Ascend/ascend-toolkit/latest/python/site-packages/mooncake"


def seed_block(start: str, end: str) -> str:
    text = section(seed_text("001"), start, end)
    for k, v in PLACEHOLDERS.items():
        text = text.replace(k, v)
    return text.replace("${ifname}", NIC)


@pytest.fixture(scope="module")
def pd_playbook() -> PDPlaybook:
    return PDPlaybook.model_validate(yaml.safe_load(PB_PATH.read_text()))


@pytest.fixture(scope="module")
def plan():
    pb = PDPlaybook.model_validate(yaml.safe_load(PB_PATH.read_text()))
    prof = config.load_profile(pb.profile, PB_PATH.parent.parent / "x.yaml")
    nodes = [(name, NodeNet(NIC, ip)) for name, ip in NODES]
    return plan_pd(pb, prof, "vllm-ascend/Qwen3-235B-A22B-w8a8", "qwen3", nodes)


def pairs(tokens: list[str]) -> dict[str, list[str | None]]:
    out: dict[str, list[str | None]] = {}
    for f, v in flag_pairs(split_eq(tokens)):
        if f == "--kv-transfer-config":
            continue  # compared as JSON below
        out.setdefault(canonical(f), []).append(v)
    return out


@pytest.mark.parametrize("node", [n for n, _ in NODES])
def test_serve_flags_match_the_seed(plan, node: str) -> None:
    _, seed = command_env(seed_block(*BLOCKS[node]), ["vllm", "serve"], {})
    ours = plan.node(node).serve_argv
    assert ours[:3] == seed[:3]
    want = pairs(seed[3:])
    # declared: the prefill script passes --enforce-eager twice; orch renders it once
    if node == "prefill1":
        assert want["--enforce-eager"] == [None, None]
        want["--enforce-eager"] = [None]
    assert pairs(ours[3:]) == want


@pytest.mark.parametrize("node", [n for n, _ in NODES])
def test_kv_transfer_config_matches_the_seed(plan, node: str) -> None:
    _, seed = command_env(seed_block(*BLOCKS[node]), ["vllm", "serve"], {})
    ours = plan.node(node).serve_argv
    seed_kv = json.loads(seed[seed.index("--kv-transfer-config") + 1])
    assert json.loads(ours[ours.index("--kv-transfer-config") + 1]) == seed_kv


@pytest.mark.parametrize("node", [n for n, _ in NODES])
def test_env_matches_the_seed(plan, node: str) -> None:
    seed_env = exports(seed_block(*BLOCKS[node]), {})
    spec = plan.node(node)
    # declared: LD_LIBRARY_PATH=<mooncake>:$LD_LIBRARY_PATH is a prepend to the container's own
    # value (docker -e cannot expand it), kept apart as path_prepend
    assert seed_env.pop("LD_LIBRARY_PATH") == f"{MOONCAKE}:$LD_LIBRARY_PATH"
    assert spec.path_prepend == {"LD_LIBRARY_PATH": MOONCAKE}
    # declared: VLLM_HOST_IP on purpose, as for every orch node (profile nic_env)
    ours = {k: v for k, v in spec.env.items() if k != "VLLM_HOST_IP"}
    assert spec.env["VLLM_HOST_IP"] == spec.ip
    assert ours == seed_env


def test_proxy_argv(plan, pd_playbook) -> None:
    seed_text_ = seed_block("PD proxy:", "Benchmark scripts:")
    _, seed = command_env(seed_text_, ["python", "load_balance_proxy_server_example.py"], {})
    assert pd_playbook.proxy == "command"  # the seed's own proxy, as the image ships it
    ours = plan.proxy_argv(pd_playbook, 13347)
    assert ours[0] == seed[0] and Path(ours[1]).name == seed[1]
    want = dict(flag_pairs(seed[2:]))
    # declared: the seed writes --prefiller-port, an argparse prefix of --prefiller-ports;
    # orch adds --host (the script binds localhost by default: nothing else could reach it)
    want["--prefiller-ports"] = want.pop("--prefiller-port")
    want["--host"] = "0.0.0.0"
    assert dict(flag_pairs(ours[2:])) == want


def test_roles_engine_ids_and_ranks(plan) -> None:
    p, d1, d2 = (plan.node(n) for n, _ in NODES)
    assert (p.role, p.head, p.instance) == ("prefill", True, 0)
    assert (d1.role, d1.head, d2.head, d1.instance, d2.instance) == ("decode", True, False, 1, 1)
    assert "--headless" in d2.serve_argv and "--headless" not in d1.serve_argv
    assert d2.serve_argv[d2.serve_argv.index("--data-parallel-start-rank") + 1] == "4"
    assert d2.serve_argv[d2.serve_argv.index("--data-parallel-address") + 1] == d1.ip


def test_extra_config_follows_the_groups() -> None:
    data = yaml.safe_load(PB_PATH.read_text())
    data["prefill"].update(instances=2, tensor=4, data=4)
    data["decode"].update(nodes=1, data=4)
    pb = PDPlaybook.model_validate(data)
    prof = config.load_profile(pb.profile, PB_PATH.parent.parent / "x.yaml")
    nodes = [(f"n{i}", NodeNet(NIC, f"192.0.2.{30 + i}")) for i in range(3)]
    plan = plan_pd(pb, prof, "m", "m", nodes)
    kvs = [json.loads(n.serve_argv[n.serve_argv.index("--kv-transfer-config") + 1]) for n in plan.nodes]
    assert [k["engine_id"] for k in kvs] == ["0", "1", "2"]
    assert [k["kv_role"] for k in kvs] == ["kv_producer", "kv_producer", "kv_consumer"]
    assert all(k["kv_connector_extra_config"]["prefill"] == {"dp_size": 4, "tp_size": 4} for k in kvs)
    assert all(k["kv_connector_extra_config"]["decode"] == {"dp_size": 4, "tp_size": 4} for k in kvs)
    argv = plan.proxy_argv(pb, 13347)
    assert argv[argv.index("--prefiller-hosts") + 1:][:2] == ["192.0.2.30", "192.0.2.31"]
    with pytest.raises(TopologyError, match="needs 3 nodes"):
        plan_pd(pb, prof, "m", "m", nodes[:2])
