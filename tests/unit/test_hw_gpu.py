"""GPU parsers and checks against recorded outputs (orchestrator/hw/recorded)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.hw import ParseError, recorded_output
from orchestrator.hw.gpu import (
    Gpu,
    driver_consistency,
    gpu_verdicts,
    parse_nvidia_smi_csv,
    parse_rocm_smi_json,
)


def test_nvidia_eight_idle_h100() -> None:
    gpus = parse_nvidia_smi_csv(recorded_output("nvidia_smi_h100x8"))
    assert [g.index for g in gpus] == list(range(8))
    assert gpus[0] == Gpu(0, "NVIDIA H100 80GB HBM3", "575.57.08", 81559, 0)
    assert {f.status for f in gpu_verdicts(gpus, 8)} == {"pass"}


def test_nvidia_fewer_busy_mixed_driver() -> None:
    found = {f.check: f for f in gpu_verdicts(
        parse_nvidia_smi_csv(recorded_output("nvidia_smi_h100x4_busy")), 8)}
    assert found["gpu.count"].status == "fail"
    assert found["gpu.count"].reason == "found 4 GPUs (0, 1, 2, 3), need 8"
    assert found["gpu.busy"].reason == "GPU 2 has 36737/81559 MB in use"
    assert found["gpu.driver"].reason == "mixed driver versions 550.54.15, 550.90.07"
    assert all(f.fix for f in found.values())


def test_nvidia_units_and_no_devices() -> None:
    gpus = parse_nvidia_smi_csv(recorded_output("nvidia_smi_with_units"))
    assert [(g.mem_total_mb, g.mem_used_mb) for g in gpus] == [(81559, 0), (81559, 512)]
    assert parse_nvidia_smi_csv(recorded_output("nvidia_smi_no_devices")) == []
    assert parse_nvidia_smi_csv("0, A100, 535.1, 40960, [N/A]\n")[0].mem_used_mb is None


@pytest.mark.parametrize(("name", "reason"), [
    ("nvidia_smi_driver_fail", "NVIDIA driver not loaded"),
    ("tool_not_found", "not installed"),
])
def test_nvidia_failures(name: str, reason: str) -> None:
    with pytest.raises(ParseError, match=reason) as err:
        parse_nvidia_smi_csv(recorded_output(name))
    assert err.value.tool == "nvidia-smi" and err.value.excerpt


@pytest.mark.parametrize("text", ["", "0, H100\n", "x, H100, 1, 2, 3\n", "0, H100, 1, big, 3\n"])
def test_nvidia_unrecognisable(text: str) -> None:
    with pytest.raises(ParseError):
        parse_nvidia_smi_csv(text)


def test_rocm_recorded_outputs() -> None:
    mi250 = parse_rocm_smi_json(recorded_output("rocm_smi_productname_mi250x"))
    assert mi250 == [Gpu(0, "AMD INSTINCT MI200 (MCM) OAM LC MBA HPE C2", "", 0, None)]
    rx = parse_rocm_smi_json(recorded_output("rocm_smi_vram_7900xt"))
    assert rx == [Gpu(0, "Radeon RX 7900 XT", "", 20464, 26)]
    mi300 = parse_rocm_smi_json(recorded_output("rocm_smi_mi300x_x2"))
    assert [(g.index, g.name, g.driver, g.mem_total_mb) for g in mi300] == \
        [(0, "AMD Instinct MI300X", "6.8.5", 196608), (1, "AMD Instinct MI300X", "6.8.5", 196608)]
    assert {f.status for f in gpu_verdicts(mi300, 2)} == {"pass"}


def test_rocm_lowercase_keys_and_order() -> None:
    text = ('{"card1": {"Card series": "MI210", "VRAM Total Memory (B)": "68702699520"},'
            ' "card0": {"Card series": "MI210", "Driver version": "6.2.0"}}')
    gpus = parse_rocm_smi_json(text)
    assert [(g.index, g.name, g.driver, g.mem_total_mb) for g in gpus] == \
        [(0, "MI210", "6.2.0", 0), (1, "MI210", "", 65520)]


@pytest.mark.parametrize("text", ["", "Driver not initialized", "[]", '{"system": {}}',
                                  recorded_output("tool_not_found")])
def test_rocm_unrecognisable(text: str) -> None:
    with pytest.raises(ParseError):
        parse_rocm_smi_json(text)


def test_driver_consistency() -> None:
    res = driver_consistency({"a": "550.90.07", "b": "550.90.07", "c": "550.54.15"})
    assert [res[n].status for n in "abc"] == ["pass", "pass", "warn"]
    assert res["c"].reason == "driver 550.54.15, most nodes run 550.90.07"


_name = st.from_regex(r"[A-Za-z][A-Za-z0-9 -]{0,20}[A-Za-z0-9]", fullmatch=True)


@given(st.lists(st.tuples(_name, st.integers(0, 200_000), st.integers(0, 200_000)), max_size=8))
def test_nvidia_csv_round_trip(rows: list[tuple[str, int, int]]) -> None:
    text = "".join(f"{i}, {n}, 550.90.07, {t}, {u}\n" for i, (n, t, u) in enumerate(rows))
    if not rows:
        text = "No devices were found\n"
    assert parse_nvidia_smi_csv(text) == [Gpu(i, n, "550.90.07", t, u)
                                          for i, (n, t, u) in enumerate(rows)]
