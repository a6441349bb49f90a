"""Version-aware flags: rope scaling rendered per vLLM version, flags a version lacks refused
at plan time, env vars a version ignores warned about."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator import config
from orchestrator.errors import PlaybookError
from orchestrator.flags import check_flags, env_warnings, parse_version, rope_flags
from orchestrator.inventory import Inventory
from orchestrator.plan import build_plan

ROOT = Path(__file__).resolve().parents[2]
INV = ROOT / "tests" / "data" / "inventories"
YARN = {"rope_type": "yarn", "rope_theta": 1000000, "factor": 4,
        "original_max_position_embeddings": 32768}


def load(inventory: str, **pb_update: object):
    path = INV / inventory
    inv = config.load_inventory(path)
    pb_path = config.find_playbook(inv.playbook, path)
    pb = config.load_playbook(pb_path)
    if pb_update:
        pb = pb.model_copy(update=pb_update)
    return inv, pb, config.load_profile(pb.profile, pb_path)


def serve_of(inventory: str, **pb_update: object) -> list[str]:
    return build_plan(*load(inventory, **pb_update)).nodes[0].serve_argv


def value(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


@pytest.mark.parametrize("text, want", [
    ("0.11.0", (0, 11, 0)), ("0.11.0rc2", (0, 11, 0)), ("v0.13.0", (0, 13, 0)), ("0.33", (0, 33, 0)),
])
def test_parse_version(text: str, want: tuple[int, int, int]) -> None:
    assert parse_version(text) == want


def test_bad_version_is_a_playbook_error() -> None:
    with pytest.raises(PlaybookError, match="not a version"):
        parse_version("latest")


def test_rope_from_0_12_is_hf_overrides_rope_parameters_as_in_the_seed() -> None:
    argv = serve_of("seed001-w8a8-a3-tp8.yaml")  # vllm_version 0.13.0
    assert "--rope-scaling" not in argv
    assert json.loads(value(argv, "--hf-overrides")) == {"rope_parameters": YARN}


@pytest.mark.parametrize("version", ["0.11.1", "0.11.2"])
def test_rope_on_0_11_1_is_hf_overrides_rope_scaling(version: str) -> None:
    argv = serve_of("seed001-w8a8-a3-tp8.yaml", vllm_version=version)
    assert "--rope-scaling" not in argv
    assert json.loads(value(argv, "--hf-overrides")) == {
        "rope_scaling": {k: v for k, v in YARN.items() if k != "rope_theta"},
        "rope_theta": 1000000,
    }


@pytest.mark.parametrize("version", ["0.10.2", "0.11.0", "0.11.0rc2"])
def test_rope_before_0_11_1_is_rope_scaling_and_rope_theta(version: str) -> None:
    argv = serve_of("seed001-w8a8-a3-tp8.yaml", vllm_version=version)
    assert "--hf-overrides" not in argv
    # the seed's line for old versions: '{"rope_type":"yarn","factor":4,"original_max_position_embeddings":32768}'
    assert json.loads(value(argv, "--rope-scaling")) == {
        "rope_type": "yarn", "factor": 4, "original_max_position_embeddings": 32768}
    assert value(argv, "--rope-theta") == "1000000"


def test_rope_merges_into_other_hf_overrides() -> None:
    inv, pb, prof = load("seed001-w8a8-a3-tp8.yaml")
    pb = pb.model_copy(update={"serve": {**pb.serve, "--hf-overrides": {"max_window_layers": 8}}})
    argv = build_plan(inv, pb, prof).nodes[0].serve_argv
    assert argv.count("--hf-overrides") == 1
    assert json.loads(value(argv, "--hf-overrides")) == {"max_window_layers": 8, "rope_parameters": YARN}


def test_rope_scaling_as_a_flag_too_is_refused() -> None:
    inv, pb, prof = load("seed001-w8a8-a3-tp8.yaml", vllm_version="0.11.0")
    pb = pb.model_copy(update={"serve": {**pb.serve, "--rope-scaling": "{}"}})
    with pytest.raises(Exception, match="both by the playbook's rope_scaling"):
        build_plan(inv, pb, prof)


@pytest.mark.parametrize("flag, version, message", [
    ("--rope-scaling", "0.12.0", "removed in vLLM 0.11.1"),
    ("--rope_scaling", "0.11.1", "removed in vLLM 0.11.1"),  # vLLM reads _ as -
    ("--rope-theta", "0.13.0", "removed in vLLM 0.11.1"),
    ("--nnodes", "0.11.0", "added in vLLM 0.11.1"),
    ("--master-addr", "0.10.1", "added in vLLM 0.11.1"),
    ("--disable-log-requests", "0.33.0", "removed in vLLM 0.12.0"),
    ("--task", "0.33.0", "removed in vLLM 0.13.0"),
])
def test_a_flag_the_version_lacks_is_refused_at_plan_time(flag: str, version: str, message: str) -> None:
    inv, pb, prof = load("seed001-a2-tp8.yaml", vllm_version=version, rope_scaling=None)
    pb = pb.model_copy(update={"serve": {**pb.serve, flag: "1"}})
    with pytest.raises(PlaybookError, match=message) as exc:
        build_plan(inv, pb, prof)
    assert pb.name in str(exc.value) and version in str(exc.value)


@pytest.mark.parametrize("flag, version", [
    ("--rope-scaling", "0.11.0"), ("--nnodes", "0.11.1"), ("--disable-log-requests", "0.11.0"),
    ("--task", "0.12.0"),
])
def test_the_same_flags_are_fine_where_they_exist(flag: str, version: str) -> None:
    check_flags([flag, "x"], version, "test")


def test_an_inventory_override_is_checked_too() -> None:
    inv, pb, prof = load("seed000-a2-dp.yaml")  # vllm_version 0.11.0
    data = inv.model_dump()
    data["overrides"]["args"] = {"--nnodes": 2}
    with pytest.raises(PlaybookError, match="--nnodes"):
        build_plan(Inventory.model_validate(data), pb, prof)


def test_env_a_version_ignores_is_a_warning_not_an_error() -> None:
    assert env_warnings({"VLLM_USE_V1": "1"}, "0.11.0") == []
    (w,) = env_warnings({"VLLM_USE_V1": "1"}, "0.15.0")
    assert "VLLM_USE_V1" in w and "0.11.1" in w
    # seed 002's TP2 recipe sets it on a v0.15.0rc1 image: the plan says so
    plan = build_plan(*load("seed002-qwen2.5-vl-32b.yaml"))
    assert any("VLLM_USE_V1" in w for w in plan.warnings)
    # seed 003 (v0.11.0rc1) sets it where it still counts
    plan = build_plan(*load("seed003-w8a8-tp2.yaml"))
    assert not any("VLLM_USE_V1" in w for w in plan.warnings)


def test_rope_flags_need_a_rope_type() -> None:
    with pytest.raises(PlaybookError, match="rope_type"):
        rope_flags({"factor": 4}, "0.13.0")
