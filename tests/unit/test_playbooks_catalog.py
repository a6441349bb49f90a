"""Every playbook in playbooks/ loads, names itself after its file, says its hardware in its
name, and plans on an inventory of as many nodes as it asks for."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from orchestrator import config
from orchestrator.inventory import Inventory
from orchestrator.plan import build_plan
from orchestrator.playbook import PDPlaybook

ROOT = Path(__file__).resolve().parents[2]
PLAYBOOKS = sorted(p for p in (ROOT / "playbooks").glob("*.yaml") if not p.name.startswith("_"))
HARDWARE = re.compile(r"-(a2|a3|h100|h200|mi300x|cpu)-")


def inventory(n: int) -> Inventory:
    return Inventory.model_validate({
        "deployment": "t", "playbook": "x", "image": "img", "model": {"path": "org/model"},
        "nodes": [{"name": f"n{i}", "host": f"192.0.2.{10 + i}", "nic": "eth0", "ip": f"192.0.2.{10 + i}"}
                  for i in range(n)],
    })


@pytest.mark.parametrize("path", PLAYBOOKS, ids=lambda p: p.stem)
def test_playbook_loads_and_plans(path: Path) -> None:
    pb = config.load_playbook(path)
    prof = config.load_profile(pb.profile, path)
    assert pb.name == path.stem
    assert HARDWARE.search(f"-{pb.name}-"), "the name says the hardware"
    assert pb.source and pb.description
    n = max(pb.min_nodes, pb.parallel.data // (pb.parallel.data_local or pb.parallel.data))
    plan = build_plan(inventory(n), pb, prof)
    assert len(plan.nodes) == n
    if prof.kind != "cpu":
        assert pb.model_memory is not None and prof.device_memory_gb, "capacity is checked"


def test_references_name_real_playbooks() -> None:
    refs = yaml.safe_load((ROOT / "playbooks" / "_references.yaml").read_text())
    assert set(refs) <= {p.stem for p in PLAYBOOKS}


@pytest.mark.parametrize("path", sorted((ROOT / "playbooks" / "pd").glob("*.yaml")), ids=lambda p: p.stem)
def test_pd_playbooks_load(path: Path) -> None:
    pb = PDPlaybook.model_validate(yaml.safe_load(path.read_text()))
    assert pb.name == path.stem


def test_orch_playbooks_lists_every_playbook_file_pd_included() -> None:
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "orchestrator", "playbooks"], capture_output=True,
                       text=True, cwd=ROOT, check=True)
    files = sorted(p for p in (ROOT / "playbooks").rglob("*.yaml")
                   if "profiles" not in p.parts and not p.name.startswith("_"))
    assert any("/pd/" in str(p) for p in files)
    for p in files:
        assert str(p) in r.stdout, f"{p} not listed"
    assert "cpu-lab-pd" in r.stdout and "(cpu, pd)" in r.stdout
