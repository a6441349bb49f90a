"""Capacity check at plan time, with the seeds' hardware statements as the cases:
"require 1 Atlas 800 A3 (64G x 16) node or 2 Atlas 800 A2 (64G x 8) nodes" and the like."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator import config
from orchestrator.capacity import check_capacity, estimate
from orchestrator.errors import TopologyError
from orchestrator.plan import build_plan
from orchestrator.playbook import ModelMemory, Parallel, Playbook, Profile

ROOT = Path(__file__).resolve().parents[2]
PB = ROOT / "playbooks"
INV = ROOT / "tests" / "data" / "inventories"


def pb(name: str, **update: object) -> Playbook:
    p = config.load_playbook(PB / f"{name}.yaml")
    return p.model_copy(update=update) if update else p


def prof(name: str) -> Profile:
    return config.load_profile(name, PB / "x.yaml")


def verdict(p: Playbook, profile: str, used: list[int], dp: int) -> str:
    try:
        warnings = check_capacity(p, prof(profile), p.serve, used, dp)
    except TopologyError:
        return "refused"
    return "tight" if warnings else "fits"


VL235 = "qwen3-vl-235b-a22b-a2-dp"
Q235_DP = "qwen3-235b-a22b-a2-dp"
ONE_RANK = Parallel(tensor=8, data=1, expert=True)

# (statement, playbook, update, profile, devices used per node, DP size, expected verdict)
CASES = [
    # seed 000: Qwen3-VL-235B-A22B BF16 "require 1 Atlas 800 A3 (64G x 16) node, 2 Atlas 800 A2"
    ("000: 2 x A2, DP2 x TP8", VL235, {}, "ascend-a2", [8, 8], 2, "fits"),
    ("000: 1 x A3, DP2 x TP8", "qwen3-vl-235b-a22b-a3-tp8-dp2", {}, "ascend-a3", [16], 2, "fits"),
    ("000: 1 x A2 is not enough", VL235, {"parallel": ONE_RANK}, "ascend-a2", [8], 1, "refused"),
    # seed 001: Qwen3-235B-A22B BF16 and w8a8 "1 A3, 1 A2 (64G x 8) or 2 A2 (32G x 8)"
    ("001 BF16: 1 x A3, TP8", "qwen3-235b-a22b-a3-tp8", {}, "ascend-a3", [8], 1, "tight"),
    ("001 BF16: 1 x A2, TP8", "qwen3-235b-a22b-a2-tp8", {}, "ascend-a2", [8], 1, "tight"),
    ("001 BF16: 2 x A2 32G, DP2", Q235_DP, {}, "ascend-a2-32g", [8, 8], 2, "tight"),
    ("001 BF16: 2 x A2 64G, DP2", Q235_DP, {}, "ascend-a2", [8, 8], 2, "fits"),
    ("001 BF16: 1 x A2 32G is not enough", "qwen3-235b-a22b-a2-tp8", {}, "ascend-a2-32g", [8], 1, "refused"),
    ("001 w8a8: 1 x A3, TP8", "qwen3-235b-a22b-w8a8-a3-tp8", {}, "ascend-a3", [8], 1, "fits"),
    ("001 w8a8: 1 x A2, TP8", "qwen3-235b-a22b-w8a8-a2-tp8", {}, "ascend-a2", [8], 1, "fits"),
    ("001 w8a8: 1 x A2 32G is not enough (the seed says 2)", "qwen3-235b-a22b-w8a8-a2-tp8", {},
     "ascend-a2-32g", [8], 1, "refused"),
    ("001 w8a8: 1 x A3, TP4 x DP4", "qwen3-235b-a22b-w8a8-a3-tp4-dp4", {}, "ascend-a3", [16], 4, "fits"),
    # seed 002/003: dense VL models on one or two NPUs
    ("002: Qwen3-VL-8B on 1 NPU", "qwen3-vl-8b-a2-1npu", {}, "ascend-a2", [1], 1, "fits"),
    ("002: Qwen2.5-VL-32B on 2 NPUs", "qwen2.5-vl-32b-a2-tp2", {}, "ascend-a2", [2], 1, "fits"),
    ("002: Qwen2.5-VL-32B BF16 does not fit 1 NPU", "qwen2.5-vl-32b-a2-tp2", {}, "ascend-a2", [1], 1, "refused"),
    ("002: Qwen2.5-VL-72B (147 GB) not on 2 NPUs", "qwen2.5-vl-32b-a2-tp2",
     {"model_memory": ModelMemory(weights_gb=147, kv_bytes_per_token=327680)}, "ascend-a2", [2], 1, "refused"),
    ("002: Qwen2.5-VL-72B on 4 NPUs", "qwen2.5-vl-32b-a2-tp2",
     {"model_memory": ModelMemory(weights_gb=147, kv_bytes_per_token=327680)}, "ascend-a2", [4], 1, "fits"),
    ("003: Qwen2.5-VL-32B-w8a8 on 2 NPUs", "qwen2.5-vl-32b-w8a8-a2-tp2", {}, "ascend-a2", [2], 1, "fits"),
    # seed 004: "a minimum of 8 GPUs, each with at least 80 GB"; BF16 on A100/H100 "may not launch"
    ("004: FP8 on 8 x H100", "qwen3-vl-235b-a22b-fp8-h100-tp8", {}, "nvidia-h100", [8], 1, "fits"),
    ("004: FP8 on 4 x H100 (images only)", "qwen3-vl-235b-a22b-fp8-h100-tp4", {}, "nvidia-h100", [4], 1, "tight"),
    ("004: BF16 on 8 x H100, full context", "qwen3-vl-235b-a22b-h100-tp8", {}, "nvidia-h100", [8], 1, "tight"),
    ("004: BF16 on 8 x H100, 128k", "qwen3-vl-235b-a22b-h100-tp8-128k", {}, "nvidia-h100", [8], 1, "fits"),
    ("004: BF16 not on 4 x H100", "qwen3-vl-235b-a22b-h100-tp8", {}, "nvidia-h100", [4], 1, "refused"),
    ("004: BF16 on 8 x H200", "qwen3-vl-235b-a22b-h200-tp8", {}, "nvidia-h200", [8], 1, "fits"),
    ("004: BF16 on 4 x MI300X", "qwen3-vl-235b-a22b-mi300x-tp4", {}, "rocm", [4], 1, "fits"),
]


@pytest.mark.parametrize("statement, name, update, profile, used, dp, want", CASES, ids=[c[0] for c in CASES])
def test_seed_statements(statement, name, update, profile, used, dp, want) -> None:
    assert verdict(pb(name, **update), profile, used, dp) == want


def test_max_model_len_flag_drives_the_kv_term() -> None:
    p = pb(VL235)
    full = estimate(p, prof("ascend-a2"), p.serve, [8, 8], 2)
    short = estimate(p, prof("ascend-a2"), {**p.serve, "--max_model_len": 32768}, [8, 8], 2)
    assert full and short and full.max_model_len == 262144 and short.max_model_len == 32768
    assert short.kv_gb == pytest.approx(full.kv_gb / 8)


def test_without_expert_parallel_every_dp_replica_holds_the_weights() -> None:
    p = pb("qwen3-vl-8b-a2-1npu", parallel=Parallel(tensor=1, data=4))
    cap = estimate(p, prof("ascend-a2"), p.serve, [4], 4)
    assert cap and cap.weights_gb == pytest.approx(4 * 17.5)


def test_skipped_without_device_memory() -> None:
    p = pb("qwen3-vl-235b-a22b-h100-tp8")
    assert check_capacity(p, prof("nvidia"), p.serve, [1], 1) == []  # generic profile: unknown


def test_build_plan_refuses_one_a2_for_qwen3_vl_235b() -> None:
    path = INV / "seed000-a3.yaml"  # one node
    inv = config.load_inventory(path)
    p = pb(VL235, min_nodes=1, parallel=ONE_RANK)
    with pytest.raises(TopologyError, match="does not fit.*8 devices with 512 GB"):
        build_plan(inv, p, prof("ascend-a2"))


def test_plan_warns_when_tight() -> None:
    path = INV / "seed001-a2-tp8.yaml"
    inv = config.load_inventory(path)
    plan = build_plan(inv, pb("qwen3-235b-a22b-a2-tp8"), prof("ascend-a2"))
    assert any("memory is tight" in w for w in plan.warnings)
