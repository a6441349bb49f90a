"""Bad input gets a clear error naming the file, the field and what was expected; exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from orchestrator.cluster import Deployment
from orchestrator.errors import InputError, InventoryError, PlaybookError, TopologyError

ROOT = Path(__file__).resolve().parents[2]
BASE = yaml.safe_load((ROOT / "inventory.example.yaml").read_text())


def write(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / "inv.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def edited(**changes) -> dict:
    d = yaml.safe_load(yaml.safe_dump(BASE))
    for path, value in changes.items():
        cur = d
        keys = path.split("__")
        for k in keys[:-1]:
            cur = cur[int(k)] if k.isdigit() else cur[k]
        last = keys[-1]
        if value is ...:
            del cur[int(last) if last.isdigit() else last]
        elif last.isdigit():
            cur[int(last)] = value
        else:
            cur[last] = value
    return d


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"nodes__1__ip": "10.0.0.300"}, "nodes[1] (node1).ip"),
        ({"nodes__0__name": "Node_0"}, "nodes[0] (Node_0).name"),
        ({"runtime": "lxc"}, "runtime"),
        ({"nodes__0__nic_name": "eth0"}, "nodes[0] (node0).nic_name: unknown field"),
        ({"model": ...}, "model: required field is missing"),
        ({"head": "node7"}, "head 'node7' is not one of the nodes"),
        ({"nodes__1__name": "node0"}, "duplicate node names: node0"),
        ({"nodes__1__host": "192.0.2.10"}, "the same host appears twice"),
        ({"overrides__env": {"BAD-NAME": "1"}}, "not a valid environment variable name"),
        ({"overrides__args": {"max-model-len": 5}}, "not a long vllm flag"),
        ({"overrides__mounts": ["relative:/x"]}, "is not /host/path:/container/path"),
        ({"model__path": "--evil"}, "must not start with '-'"),
        ({"nodes__0__host": "-oProxyCommand=x"}, "nodes[0] (node0).host"),
        ({"runtime_socket": "docker.sock"}, "runtime_socket"),
        ({"runtime_socket": "/run/a b.sock"}, "runtime_socket"),
        ({"ssh__persist": -1}, "ssh.persist"),
        ({"nodes__0__cpus": "0-3;reboot"}, "nodes[0] (node0).cpus"),
        ({"nodes__0__cpus": "all"}, "nodes[0] (node0).cpus"),
    ],
)
def test_invalid_inventory_names_file_and_field(tmp_path, changes, needle):
    p = write(tmp_path, edited(**changes))
    with pytest.raises(InventoryError) as e:
        Deployment.load(p)
    assert str(p) in str(e.value)
    assert needle in str(e.value)
    assert e.value.exit_code == 2


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"overrides": {"data_parallel": 3}}, "add up to 2"),
        ({"overrides": {"tensor_parallel": 16}}, "16 ascend devices, but the node has 8"),
        ({"nodes__0__devices": 4}, "node node0: tensor parallel 8 x local data parallel 1 = 8"),
        ({"overrides": {"api_port": 13389}}, "both 13389"),
        ({"overrides": {"args": {"--data-parallel-size": 4}}}, "derived by orch"),
        ({"nodes": BASE["nodes"][:1]}, "needs 2 node(s)"),
    ],
)
def test_impossible_topologies_are_refused(tmp_path, changes, needle):
    with pytest.raises(TopologyError) as e:
        Deployment.load(write(tmp_path, edited(**changes)))
    assert needle in str(e.value)


def test_unknown_playbook_lists_the_known_ones(tmp_path):
    with pytest.raises(PlaybookError) as e:
        Deployment.load(write(tmp_path, edited(playbook="nope")))
    assert "qwen3-vl-235b-a22b-a2-dp" in str(e.value)


def test_not_yaml_and_not_a_mapping(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text("nodes: [\n")
    with pytest.raises(InventoryError, match="not valid YAML"):
        Deployment.load(p)
    p.write_text("- a\n- b\n")
    with pytest.raises(InventoryError, match="expected a mapping"):
        Deployment.load(p)
    with pytest.raises(InputError, match="cannot read"):
        Deployment.load(tmp_path / "missing.yaml")


def test_cli_exits_2_with_the_message_on_stderr(tmp_path):
    p = write(tmp_path, edited(nodes__1__ip="nope"))
    r = subprocess.run([sys.executable, "-m", "orchestrator", "plan", str(p)], capture_output=True, text=True)
    assert r.returncode == 2
    assert "nodes[1] (node1).ip" in r.stderr and str(p) in r.stderr
    assert r.stdout == ""
