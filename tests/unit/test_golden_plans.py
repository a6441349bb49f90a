"""Golden plans of every playbook: container names, labels, spec hashes, argv and env pinned.

A change of any of them redeploys running deployments (the spec hash is what `orch up`
compares), so a refactor must leave these files byte-identical.  Regenerate with
ORCH_UPDATE_GOLDEN=1 only after a deliberate change of what is launched.

Each playbook is planned on a synthetic inventory (nodes named node0.., IPs from
192.0.2.0/24, NIC/IP given), once plainly and once with a secret and an API key (the
secret digest is part of the spec hash); seed inventories of tests/data/inventories too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from orchestrator import config, secrets
from orchestrator.cluster import Deployment
from orchestrator.inventory import Inventory

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "data" / "golden" / "plans"
PLAYBOOKS = sorted(p for p in (ROOT / "playbooks").rglob("*.yaml")
                   if "profiles" not in p.parts and not p.name.startswith("_"))
SEED_INVENTORIES = sorted((ROOT / "tests" / "data" / "inventories").glob("*.yaml"))
PLAN_KEYS = ("deployment", "playbook", "runtime", "image", "model", "served_model_name",
             "api_url", "unresolved", "warnings")
NODE_KEYS = ("name", "role", "host", "nic", "ip", "container", "labels", "spec_hash", "argv",
             "env")
SECRET_VALUE = "golden-secret-value"
API_KEY_VALUE = "golden-api-key-value"


def view(plan_json: dict) -> dict:
    """What a redeploy depends on (names, labels, hashes, argv, env) and what the operator
    reads; not the per-topology rank bookkeeping."""
    out = {k: plan_json[k] for k in PLAN_KEYS}
    out["nodes"] = [{k: n[k] for k in NODE_KEYS} for n in plan_json["nodes"]]
    return out


def node_count(path: Path) -> list[int]:
    pb = config.load_playbook(path)
    if pb.pd is not None:
        return [pb.pd.nodes_needed, pb.pd.nodes_needed + 1]
    if pb.topology == "single":
        return [1]
    if pb.parallel.data_local:
        return [pb.parallel.data // pb.parallel.data_local]
    return sorted({pb.min_nodes, pb.max_nodes or max(pb.min_nodes, 2)})


def synthetic(path: Path, n: int, with_secrets: bool) -> dict:
    doc: dict = {
        "deployment": "golden", "playbook": str(path), "image": "registry.example/vllm:1",
        "model": {"path": "/models/m", "served_name": "m"},
        "nodes": [{"name": f"node{i}", "host": f"192.0.2.{10 + i}", "nic": "eth0",
                   "ip": f"192.0.2.{10 + i}"} for i in range(n)],
    }
    if with_secrets:
        doc["secrets"] = {"HF_TOKEN": {"env": "ORCH_GOLDEN_SECRET"}}
        doc["api_key"] = {"env": "ORCH_GOLDEN_API_KEY"}
    return doc


def cases() -> list[tuple[str, Path, int | None, bool]]:
    out = []
    for p in PLAYBOOKS:
        rel = p.relative_to(ROOT / "playbooks").with_suffix("")
        stem = str(rel).replace("/", "--")
        for n in node_count(p):
            for sec in (False, True):
                out.append((f"{stem}.n{n}{'.secrets' if sec else ''}", p, n, sec))
    for inv in SEED_INVENTORIES:
        out.append((f"inventory--{inv.stem}", inv, None, False))
    return out


def plan_of(path: Path, n: int | None, with_secrets: bool, tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch) -> dict:
    monkeypatch.setenv("ORCH_GOLDEN_SECRET", SECRET_VALUE)
    monkeypatch.setenv("ORCH_GOLDEN_API_KEY", API_KEY_VALUE)
    if n is None:
        dep = Deployment.load(path)
    else:
        inv_path = tmp_path / "inventory.yaml"
        inv = Inventory.model_validate(synthetic(path, n, with_secrets))
        pb = config.load_playbook(path)
        prof = config.load_profile(pb.profile, path)
        sec = secrets.resolve(inv) if with_secrets else None
        dep = Deployment(inv_path, inv, pb, prof, sec)
    return view(dep.plan().to_json())


@pytest.mark.parametrize(("name", "path", "n", "with_secrets"), cases(),
                         ids=[c[0] for c in cases()])
def test_golden_plan(name: str, path: Path, n: int | None, with_secrets: bool, tmp_path: Path,
                     monkeypatch: pytest.MonkeyPatch) -> None:
    doc = plan_of(path, n, with_secrets, tmp_path, monkeypatch)
    text = json.dumps(doc, indent=2, sort_keys=True) + "\n"
    assert SECRET_VALUE not in text and API_KEY_VALUE not in text
    golden = GOLDEN / f"{name}.json"
    if os.environ.get("ORCH_UPDATE_GOLDEN"):
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
    assert golden.is_file(), f"no golden plan {golden}; write it with ORCH_UPDATE_GOLDEN=1"
    assert text == golden.read_text(), f"the plan of {name} changed (see {golden})"


def test_every_golden_file_has_a_case() -> None:
    names = {c[0] for c in cases()}
    stale = sorted(p.stem for p in GOLDEN.glob("*.json") if p.stem not in names)
    assert not stale, f"golden plans without a case (remove them): {stale}"
