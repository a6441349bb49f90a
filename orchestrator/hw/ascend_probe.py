"""The one-round-trip Ascend probe: a POSIX sh script that prints every npu-smi / hccn_tool
output and driver file between markers, and its parser into `AscendProbe`."""

from __future__ import annotations

import ipaddress
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from orchestrator.hw import ParseError, split_probe_output
from orchestrator.hw.ascend import (
    NpuLinkFacts,
    NpuSmiInfo,
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
)

HCCN_OPS = ("link", "net_health", "ip", "gateway", "netdetect", "tls", "lldp")
_FILES = {
    "driver-version": "cat /usr/local/Ascend/driver/version.info",
    "cann": "cat /usr/local/Ascend/ascend-toolkit/latest/*/ascend_toolkit_install.info",
    "hccn.conf": "cat /etc/hccn.conf",
}


def ascend_probe_script(devices: int, ping: Mapping[int, Sequence[str]] | None = None) -> str:
    """POSIX sh printing every tool's output between `==== key ====` / `==== rc N ====`.

    Absent tools still yield their section (shell error text, rc 127). `ping` maps a
    device to peer NPU addresses to ping from it.
    """
    lines = [
        "#!/bin/sh",
        "# orch ascend probe; sections: '==== <key> ====' <output> '==== rc <status> ===='",
        'PATH="$PATH:/usr/local/Ascend/driver/tools:/usr/local/sbin:/usr/local/bin"',
        "export PATH",
        'run() { key=$1; shift; echo "==== $key ===="; out=$("$@" 2>&1); rc=$?; '
        'printf \'%s\\n\' "$out"; echo "==== rc $rc ===="; }',
        "run 'npu-smi info' npu-smi info",
    ]
    lines += [f"run 'file {k}' sh -c {shlex.quote(v)}" for k, v in _FILES.items()]
    for d in range(devices):
        lines += [f"run 'hccn {d} {op}' hccn_tool -i {d} -{op} -g" for op in HCCN_OPS]
        for addr in (ping or {}).get(d, ()):
            a = str(ipaddress.ip_address(addr))
            lines.append(f"run 'hccn {d} ping {a}' hccn_tool -i {d} -ping -g address {a}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class AscendProbe:
    """Everything `ascend_probe_script` gathered on one node, parsed."""

    npu_info: NpuSmiInfo | None
    per_npu: Mapping[int, NpuLinkFacts]
    driver_version: str | None
    cann_version: str | None
    hccn_conf: Mapping[int, Mapping[str, str]] | None
    problems: tuple[str, ...] = field(default=())  # sections absent or unparseable


_HCCN_PARSERS = {"link": parse_hccn_link, "net_health": parse_hccn_net_health,
                 "ip": parse_hccn_ip, "gateway": parse_hccn_gateway,
                 "netdetect": parse_hccn_netdetect, "tls": parse_hccn_tls,
                 "lldp": parse_hccn_lldp}
_FACT_FIELD = {"net_health": "net_health", "lldp": "lldp_ifname"}


def parse_ascend_probe(text: str) -> AscendProbe:
    """Parse the output of `ascend_probe_script` (tolerates absent tools and cut-offs)."""
    sections = split_probe_output(text)
    problems: list[str] = []

    def parsed(key: tuple[str, ...], fn, file: bool = False):  # type: ignore[no-untyped-def]
        sec, name = sections.get(key), " ".join(key)
        if sec is None:
            problems.append(f"{name}: no output section (probe cut off?)")
        elif file and sec.rc != 0:
            problems.append(f"{name}: exit {sec.rc}: {sec.text.strip()[:200]}")
        else:
            try:
                return fn(sec.text)
            except ParseError as exc:
                problems.append(f"{name}: exit {sec.rc}: {exc}")
        return None

    npu_info = parsed(("npu-smi", "info"), parse_npu_smi_info)
    devs = sorted({int(k[1]) for k in sections if k[0] == "hccn" and k[1].isdigit()})
    per_npu: dict[int, NpuLinkFacts] = {}
    for d in devs:
        values: dict[str, object] = {}
        missing = set()
        for op, fn in _HCCN_PARSERS.items():
            sec = sections.get(("hccn", str(d), op))
            try:
                if sec is None:
                    raise ParseError("hccn_tool", f"-{op}: no output section")
                values[_FACT_FIELD.get(op, op)] = fn(sec.text)
            except ParseError as exc:
                missing.add(op)
                problems.append(f"hccn {d} {op}: {exc}")
        pings = tuple((k[3], r) for k in sections if k[:3] == ("hccn", str(d), "ping")
                      for r in [parsed(k, parse_hccn_ping)] if r is not None)
        per_npu[d] = NpuLinkFacts(**values, pings=pings,  # type: ignore[arg-type]
                                  missing=frozenset(missing))
    return AscendProbe(
        npu_info, per_npu,
        parsed(("file", "driver-version"), parse_driver_version_info, True),
        parsed(("file", "cann"), parse_cann_install_info, True),
        parsed(("file", "hccn.conf"), parse_hccn_conf, True), tuple(problems))
