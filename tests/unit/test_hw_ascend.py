"""Ascend parsers and checks against recorded real tool outputs (orchestrator/hw/recorded)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.hw import ParseError, recorded_output, split_probe_output
from orchestrator.hw.ascend import (
    NpuLinkFacts,
    PingResult,
    ascend_verdicts,
    parse_cann_install_info,
    parse_driver_version_info,
    parse_hccn_conf,
    parse_hccn_gateway,
    parse_hccn_ip,
    parse_hccn_link,
    parse_hccn_lldp,
    parse_hccn_net_health,
    parse_hccn_netdetect,
    parse_hccn_ping,
    parse_hccn_tls,
    parse_npu_smi_info,
    tls_consistency,
)
from orchestrator.hw.ascend_probe import ascend_probe_script, parse_ascend_probe

RECORDED = Path(__file__).parents[2] / "orchestrator" / "hw" / "recorded"


def test_every_recorded_file_names_its_source() -> None:
    files = sorted(RECORDED.glob("*.txt"))
    assert len(files) >= 30
    for f in files:
        text = f.read_text()
        assert text.startswith("# source: "), f.name
        assert "\n# ---\n" in text, f.name


@pytest.mark.parametrize(("name", "version", "devices", "pids", "health"), [
    ("npu_smi_910b2_healthy", "24.1.rc2.1", list(range(8)), [], {"OK"}),
    ("npu_smi_910b4_busy", "24.1.rc3", list(range(8)), [582939, 695171, 99910, 99976], {"OK"}),
    ("npu_smi_910b4_vllm_hbm_full", "25.2.2", [0, 1], [19334, 19341], {"OK"}),
    ("npu_smi_910a_warning", "23.0.rc1.b070", [0, 1, 2, 3], [], {"Warning"}),
    ("npu_smi_a3_healthy", "25.3.rc1", list(range(16)), [], {"OK"}),
    ("npu_smi_a3_busy", "24.1.rc3.3", list(range(16)),
     [957687, 957770, 957790, 957852, 957876, 957912, 957957, 958011], {"OK"}),
])
def test_npu_smi_info(name: str, version: str, devices: list[int], pids: list[int],
                      health: set[str]) -> None:
    info = parse_npu_smi_info(recorded_output(name))
    assert info.version == version
    assert [n.device for n in info.npus] == devices
    assert [p.pid for p in info.processes] == pids
    assert {n.health for n in info.npus} == health


def test_npu_smi_fields() -> None:
    b = parse_npu_smi_info(recorded_output("npu_smi_910b4_busy"))
    n6 = b.npus[6]
    assert (n6.name, n6.power, n6.temp, n6.aicore_pct) == ("910B4", 263.2, 46, 82)
    assert (n6.bus_id, n6.hbm_used_mb, n6.hbm_total_mb) == ("0000:82:00.0", 30759, 32768)
    assert b.processes[0].name == "" and b.processes[0].mem_mb == 19502
    v = parse_npu_smi_info(recorded_output("npu_smi_910b4_vllm_hbm_full"))
    assert v.processes[0].name == "VLLMWorker_TP"
    a3 = parse_npu_smi_info(recorded_output("npu_smi_a3_busy"))
    second = a3.npus[9]
    assert (second.id, second.chip, second.phy_id, second.power) == (4, 1, 9, None)
    assert a3.device_of(4, 1) == 9


@pytest.mark.parametrize("text", [
    recorded_output("npu_smi_dcmi_fail"), recorded_output("tool_not_found"), "",
    "+----+\n| npu-smi 1 Version: 1 |\n",  # header but no rows
    recorded_output("npu_smi_910b2_healthy").replace("| 0     910B2 ", "| x     910B2 "),
])
def test_npu_smi_unrecognisable(text: str) -> None:
    with pytest.raises(ParseError) as err:
        parse_npu_smi_info(text)
    assert err.value.tool == "npu-smi" and err.value.reason


def test_hccn_parsers_on_recorded_outputs() -> None:
    r = recorded_output
    assert parse_hccn_ip(r("hccn_ip")) == ("11.12.165.80", "255.255.255.0")
    assert parse_hccn_ip(r("hccn_ip_none")) is None
    assert parse_hccn_link(r("hccn_link_up")) == "UP"
    assert parse_hccn_link(r("hccn_link_down")) == "DOWN"
    assert parse_hccn_net_health(r("hccn_net_health_ok")) == "Success"
    assert parse_hccn_net_health(r("hccn_net_health_fault")) == "Fault"
    assert parse_hccn_netdetect(r("hccn_netdetect")) == "11.12.165.1"
    assert parse_hccn_gateway(r("hccn_gateway")) == "11.12.165.1"
    assert parse_hccn_gateway(r("hccn_gateway_new")) == "11.12.165.1"
    assert parse_hccn_gateway(r("hccn_gateway_none")) is None
    assert parse_hccn_tls(r("hccn_tls_disabled")) is False
    assert parse_hccn_tls(r("hccn_tls_enabled")) is True
    assert parse_hccn_lldp(r("hccn_lldp")) == "400GE1/1/5:1"
    assert parse_hccn_ping(r("hccn_ping_ok")) == PingResult(3, 3, 0.0)
    assert parse_hccn_ping(r("hccn_ping_partial")) == PingResult(3, 2, 33.33)
    assert parse_hccn_ping(r("hccn_ping_timeout")) == PingResult(3, 0, 100.0)
    assert parse_hccn_ping("recv time out seq=0\nrecv seq=1,time=0.1ms\n") == PingResult(2, 1, 50.0)


@pytest.mark.parametrize("fn", [parse_hccn_link, parse_hccn_net_health, parse_hccn_ip,
                                parse_hccn_gateway, parse_hccn_tls, parse_hccn_ping,
                                parse_hccn_lldp, parse_hccn_netdetect])
def test_hccn_parsers_reject_other_text(fn) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ParseError):
        fn(recorded_output("tool_not_found"))


def test_hccn_conf_and_versions() -> None:
    conf = parse_hccn_conf(recorded_output("hccn_conf_8npu"))
    assert sorted(conf) == list(range(8))
    assert conf[7] == {"address": "127.0.0.223", "netmask": "255.255.0.0", "netdetect": "127.0.0.1",
                       "gateway": "127.0.0.1", "send_arp_status": "1", "tls_enable": "0"}
    a3 = parse_hccn_conf(recorded_output("hccn_conf_a3_partial"))
    assert a3[1]["arp"] == "-i eth1 -s 127.0.0.24 bc:1e:85:d8:ca:dc"
    with pytest.raises(ParseError):
        parse_hccn_conf("cat: /etc/hccn.conf: No such file or directory")
    assert parse_driver_version_info(recorded_output("driver_version_info")) == "25.3.rc1"
    assert parse_driver_version_info(recorded_output("driver_version_info_old")) == "24.1.rc1"
    assert parse_cann_install_info(recorded_output("cann_toolkit_install_info")) == "8.3.RC2"
    with pytest.raises(ParseError):
        parse_driver_version_info("ascendhal_version=7.35.23\n")


def _by_check(findings):  # type: ignore[no-untyped-def]
    return {f.check: f for f in findings}


def test_verdicts_healthy_node_all_pass() -> None:
    info = parse_npu_smi_info(recorded_output("npu_smi_910b2_healthy"))
    facts = {d: NpuLinkFacts("UP", "Success", (f"10.0.0.{d}", "255.255.255.0"), "10.0.0.254",
                             "10.0.0.254", False) for d in range(8)}
    found = ascend_verdicts(info, facts, 8)
    assert [f.check for f in found] == ["npu.count", "npu.health", "npu.busy", "npu.hbm",
                                        "hccn.link", "hccn.health", "hccn.ip", "hccn.gateway",
                                        "hccn.netdetect", "hccn.tls"]
    assert all(f.status == "pass" and not f.fix for f in found)


def test_verdicts_busy_and_full_npus() -> None:
    v = _by_check(ascend_verdicts(parse_npu_smi_info(recorded_output("npu_smi_910b4_busy")), {}, 8))
    assert v["npu.busy"].status == "fail"
    assert [s.split(" used")[0] for s in v["npu.busy"].reason.split("; ")] == \
        ["NPU 0", "NPU 1", "NPU 6", "NPU 7"]
    assert v["npu.hbm"].status == "fail" and "NPU 6 HBM 30759/32768" in v["npu.hbm"].reason
    assert "NPU 2" not in v["npu.hbm"].reason  # 8.6% used at idle is normal
    # restricting to the idle devices makes the node usable
    idle = _by_check(ascend_verdicts(parse_npu_smi_info(recorded_output("npu_smi_910b4_busy")),
                                     {}, 4, devices={2, 3, 4, 5}))
    assert {f.status for f in idle.values()} == {"pass"}
    vllm = _by_check(ascend_verdicts(
        parse_npu_smi_info(recorded_output("npu_smi_910b4_vllm_hbm_full")), {}, 8))
    assert vllm["npu.count"].reason == "found 2 NPUs (0, 1), need 8"
    assert "(VLLMWorker_TP) holding 58472 MB" in vllm["npu.busy"].reason


def test_verdicts_health_and_a3_labels() -> None:
    warn = _by_check(ascend_verdicts(parse_npu_smi_info(recorded_output("npu_smi_910a_warning")),
                                     {}, 4))
    assert warn["npu.health"].status == "warn"
    assert "NPU 3 health Warning" in warn["npu.health"].reason
    a3 = _by_check(ascend_verdicts(parse_npu_smi_info(recorded_output("npu_smi_a3_busy")), {}, 16))
    assert a3["npu.busy"].reason.startswith("NPU 4 chip 0 (device 8) used by pid 957687")
    assert ascend_verdicts(None, {}, 8)[0].status == "fail"


@pytest.mark.parametrize(("facts", "check", "status", "reason"), [
    ({"link": "DOWN"}, "hccn.link", "fail", "NPU 3 link DOWN"),
    ({"net_health": "Fault"}, "hccn.health", "fail", "NPU 3 net health Fault"),
    ({"ip": None}, "hccn.ip", "fail", "NPU 3 has no IP"),
    ({"ip": ("10.0.0.0", "255.255.255.0")}, "hccn.ip", "fail", "IP 10.0.0.0 used by several"),
    ({"gateway": None}, "hccn.gateway", "warn", "NPU 3 has no gateway"),
    ({"netdetect": None}, "hccn.netdetect", "warn", "NPU 3 has no netdetect address"),
    ({"tls": True}, "hccn.tls", "fail", "TLS enabled on NPU 3, disabled on NPU 0, 1, 2"),
    ({"missing": frozenset({"link"}), "link": None}, "hccn.link", "warn", "NPU 3: no usable"),
    ({"pings": (("10.0.1.3", PingResult(3, 0, 100.0)),)}, "hccn.ping", "fail",
     "NPU 3 -> 10.0.1.3: 0/3 replies"),
    ({"pings": (("10.0.1.3", PingResult(3, 2, 33.33)),)}, "hccn.ping", "warn", "2/3"),
])
def test_hccn_verdicts_name_the_npu(facts: dict, check: str, status: str, reason: str) -> None:
    base = {"link": "UP", "net_health": "Success", "gateway": "10.0.0.254",
            "netdetect": "10.0.0.254", "tls": False}
    per = {d: NpuLinkFacts(**base, ip=(f"10.0.0.{d}", "255.255.255.0")) for d in range(4)}
    per[3] = NpuLinkFacts(**{**base, "ip": ("10.0.0.3", "255.255.255.0"), **facts})
    found = ascend_verdicts(parse_npu_smi_info(recorded_output("npu_smi_910b2_healthy")), per, 4)
    bad = [f for f in found if f.status != "pass"]
    assert [(f.check, f.status) for f in bad] == [(check, status)]
    assert reason in bad[0].reason and bad[0].fix


def test_tls_consistency() -> None:
    res = tls_consistency({"a": dict.fromkeys(range(8), False), "b": dict.fromkeys(range(8), False),
                           "c": dict.fromkeys(range(8), True), "d": {0: True, 1: False}, "e": {}})
    assert [res[n].status for n in "abcde"] == ["pass", "pass", "fail", "fail", "warn"]
    assert "enabled on NPU 0, 1, 2" in res["c"].reason and "-tls -s enable 0" in res["c"].fix
    assert res["d"].reason == "TLS mixed: enabled on NPU 0"
    tie = tls_consistency({"a": {0: True}, "b": {0: False}})
    assert (tie["a"].status, tie["b"].status) == ("fail", "pass")


def test_probe_script_is_valid_sh_and_rejects_bad_addresses() -> None:
    script = ascend_probe_script(2, ping={0: ["10.0.0.2"]})
    subprocess.run(["sh", "-n"], input=script, text=True, check=True)
    assert "run 'hccn 1 tls' hccn_tool -i 1 -tls -g" in script
    assert "hccn_tool -i 0 -ping -g address 10.0.0.2" in script
    with pytest.raises(ValueError):
        ascend_probe_script(1, ping={0: ["10.0.0.2; reboot"]})


def test_probe_tolerates_absent_tools(tmp_path: Path) -> None:
    out = subprocess.run(["sh", "-c", ascend_probe_script(2)], capture_output=True, text=True,
                         env={"PATH": f"{tmp_path}:/usr/bin:/bin"}, check=True).stdout
    sections = split_probe_output(out)
    assert sections["npu-smi", "info"].rc == 127
    assert sections["hccn", "1", "link"].rc == 127
    probe = parse_ascend_probe(out)
    assert probe.npu_info is None and probe.driver_version is None
    assert probe.per_npu[1].missing == frozenset({"link", "net_health", "ip", "gateway",
                                                  "netdetect", "tls", "lldp"})
    assert ascend_verdicts(probe.npu_info, probe.per_npu, 8)[0].status == "fail"
    assert any(p.startswith("npu-smi info: exit 127") for p in probe.problems)


def test_split_probe_output_cut_off() -> None:
    text = "noise\n==== a 1 ====\nx\n==== rc 0 ====\n==== b ====\ny\n==== c ====\n"
    s = split_probe_output(text)
    assert (s["a", "1"].text, s["a", "1"].rc) == ("x\n", 0)
    assert (s["b",].text, s["b",].rc) == ("y\n", None)
    assert s["c",].rc is None


_line = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), max_size=30).filter(
    lambda s: not s.startswith("===="))


@given(st.dictionaries(st.tuples(st.sampled_from(["hccn", "file"]), st.from_regex(r"[a-z0-9.]{1,6}",
                       fullmatch=True)), st.tuples(st.lists(_line, max_size=4),
                                                    st.integers(0, 255)), max_size=5))
def test_split_probe_output_round_trip(sections: dict) -> None:
    text = "".join(f"==== {' '.join(k)} ====\n" + "".join(f"{ln}\n" for ln in lines)
                   + f"==== rc {rc} ====\n" for k, (lines, rc) in sections.items())
    got = split_probe_output(text)
    assert {k: (v.text, v.rc) for k, v in got.items()} == \
        {k: ("".join(f"{ln}\n" for ln in lines), rc) for k, (lines, rc) in sections.items()}


def test_tls_mismatch_names_the_majority_state() -> None:
    from orchestrator.hw.ascend import tls_consistency

    out = tls_consistency({"a": {0: False, 1: False}, "b": {0: False, 1: False}, "c": {0: True, 1: True}})
    assert out["c"].status == "fail" and "most nodes have it disabled" in out["c"].reason
    assert out["a"].status == "pass"
