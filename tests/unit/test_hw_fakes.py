"""The fake npu-smi / hccn_tool scripts, run for real through the probe script."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from orchestrator.hw import recorded_output
from orchestrator.hw.ascend import (
    ascend_verdicts,
    parse_npu_smi_info,
    tls_consistency,
)
from orchestrator.hw.ascend_probe import AscendProbe, ascend_probe_script, parse_ascend_probe
from orchestrator.hw.fakes import fake_npu_ip, render_fake_tools, render_npu_smi_info

pytestmark = pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX sh")


def _install(tmp: Path, tools: dict[str, str]) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    for name, text in tools.items():
        (tmp / name).write_text(text)
        (tmp / name).chmod(0o755)
    return tmp


def _probe(bindir: Path, devices: int, ping: dict[int, list[str]] | None = None) -> AscendProbe:
    out = subprocess.run(["sh", "-c", ascend_probe_script(devices, ping)], capture_output=True,
                         text=True, env={"PATH": f"{bindir}:/usr/bin:/bin"}, timeout=60, check=True)
    return parse_ascend_probe(out.stdout)


def _not_passing(probe: AscendProbe, need: int) -> list[tuple[str, str, str]]:
    return [(f.check, f.status, f.reason)
            for f in ascend_verdicts(probe.npu_info, probe.per_npu, need) if f.status != "pass"]


@pytest.mark.parametrize("name", ["npu_smi_910b2_healthy", "npu_smi_910b4_busy",
                                  "npu_smi_910b4_vllm_hbm_full", "npu_smi_a3_healthy",
                                  "npu_smi_a3_busy"])
def test_renderer_reproduces_real_tables_byte_for_byte(name: str) -> None:
    real = recorded_output(name)
    info = parse_npu_smi_info(real)
    assert render_npu_smi_info(info.npus, info.processes, info.version) == real


def test_scripts_are_posix_sh() -> None:
    for text in render_fake_tools({"link_down": 1}, peers=["192.168.101.1"]).values():
        assert text.startswith("#!/bin/sh\n")
        subprocess.run(["sh", "-n"], input=text, text=True, check=True)


@pytest.mark.parametrize("devices", [8, 16])
def test_healthy_host_passes_every_check(tmp_path: Path, devices: int) -> None:
    probe = _probe(_install(tmp_path, render_fake_tools(devices=devices)), devices)
    assert _not_passing(probe, devices) == []
    assert len(probe.npu_info.npus) == devices  # type: ignore[union-attr]
    assert probe.per_npu[devices - 1].ip == (fake_npu_ip(0, devices - 1), "255.255.0.0")


@pytest.mark.parametrize(("fault", "check", "reason"), [
    ({"link_down": 3}, "hccn.link", "NPU 3 link DOWN"),
    ({"no_ip": 5}, "hccn.ip", "NPU 5 has no IP"),
    ({"net_health_fault": 0}, "hccn.health", "NPU 0 net health Fault"),
    ({"npu_busy": 6}, "npu.busy", "NPU 6 used by pid 4248 (python3)"),
    ({"npu_unhealthy": 2}, "npu.health", "NPU 2 health Critical"),
    ({"hbm_full": 7}, "npu.hbm", "NPU 7 HBM 60000/65536 MB used"),
])
def test_each_fault_fails_exactly_its_check(tmp_path: Path, fault: dict[str, int], check: str,
                                            reason: str) -> None:
    probe = _probe(_install(tmp_path, render_fake_tools(fault)), 8)
    bad = _not_passing(probe, 8)
    assert [(c, s) for c, s, _ in bad] == [(check, "fail")]
    assert bad[0][2].startswith(reason)


def test_a3_fault_names_npu_chip_and_device(tmp_path: Path) -> None:
    probe = _probe(_install(tmp_path, render_fake_tools({"npu_busy": 9}, devices=16)), 16)
    assert _not_passing(probe, 16) == [
        ("npu.busy", "fail", "NPU 4 chip 1 (device 9) used by pid 4251 (python3) holding 1024 MB")]


def test_tls_fault_is_caught_across_nodes(tmp_path: Path) -> None:
    hosts = {"node0": render_fake_tools({"tls": 1}, host_index=0),
             "node1": render_fake_tools(host_index=1)}
    tls = {}
    for name, tools in hosts.items():
        probe = _probe(_install(tmp_path / name, tools), 8)
        assert _not_passing(probe, 8) == []  # consistent within each node
        tls[name] = {d: f.tls for d, f in probe.per_npu.items()}
    res = tls_consistency(tls)  # type: ignore[arg-type]
    assert (res["node0"].status, res["node1"].status) == ("fail", "pass")
    assert "TLS enabled on NPU 0, 1, 2, 3, 4, 5, 6, 7" in res["node0"].reason


def test_ping_answers_only_known_peers(tmp_path: Path) -> None:
    peers = [fake_npu_ip(1, d) for d in range(8)]
    bindir = _install(tmp_path, render_fake_tools({"link_down": 2}, host_index=0, peers=peers))
    ping = {0: [fake_npu_ip(1, 0)], 1: ["10.9.9.9"], 2: [fake_npu_ip(1, 2)]}
    probe = _probe(bindir, 8, ping)
    assert probe.per_npu[0].pings[0][1].ok
    assert _not_passing(probe, 8) == [
        ("hccn.link", "fail", "NPU 2 link DOWN"),
        ("hccn.ping", "fail", "NPU 1 -> 10.9.9.9: 0/3 replies; "
                              "NPU 2 -> 192.168.101.3: 0/3 replies")]


def test_fake_tools_refuse_what_they_do_not_fake(tmp_path: Path) -> None:
    bindir = _install(tmp_path, render_fake_tools(devices=2))
    env = {"PATH": f"{bindir}:/usr/bin:/bin"}

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(argv), capture_output=True, text=True, env=env)

    assert run("hccn_tool", "-i", "0", "-tls", "-s", "enable", "0").returncode == 2
    assert run("hccn_tool", "-i", "5", "-link", "-g").stdout == "The device is not exist!\n"
    assert run("npu-smi", "info", "-l").returncode == 2
    no_ip = _install(tmp_path / "b", render_fake_tools({"no_ip": 1}, devices=2))
    res = subprocess.run(["hccn_tool", "-i", "1", "-ip", "-g"], capture_output=True, text=True,
                         env={"PATH": f"{no_ip}:/usr/bin:/bin"})
    assert res.returncode == 1
    assert res.stdout == "Get ipconf failed, because no ip was preset there!\n"


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"fault": {"cable_cut": 1}}, "unknown fault"),
    ({"fault": {"link_down": 8}}, "not in 0..7"),
    ({"devices": 17}, "1..16"),
    ({"peers": ["192.168.0.1 | *"]}, "does not appear to be"),
])
def test_render_fake_tools_validates(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        render_fake_tools(**kwargs)


def test_fake_ips_are_distinct_across_hosts() -> None:
    ips = {fake_npu_ip(h, d) for h in range(4) for d in range(16)}
    assert len(ips) == 64
    assert os.path.commonprefix(sorted(ips)) == "192.168.10"
