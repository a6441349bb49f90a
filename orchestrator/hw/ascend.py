"""Ascend tools: parsers for npu-smi / hccn_tool / hccn.conf / version files, the checks
the preflight applies to them, and the one-round-trip probe script that gathers them.

Device ids: `hccn_tool -i N` takes the logical device id. On A2 (8 NPUs, one chip each)
that is the NPU column of `npu-smi info`; on A3 (8 NPUs x 2 chips = 16 devices) it is the
chip's Phy-ID column. `Npu.device` gives it for both.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from orchestrator.hw import Finding, ParseError, split_probe_output, tool_missing

# ---------------------------------------------------------------------------- npu-smi


@dataclass(frozen=True)
class Npu:
    """One device row pair of `npu-smi info`."""

    id: int  # NPU column (card); on A3 shared by its two chips
    chip: int  # Chip column
    phy_id: int | None  # Phy-ID column (A3 only)
    name: str  # e.g. "910B4", "Ascend910"
    health: str  # "OK", "Warning", "Alarm", "Critical", ...
    power: float | None  # W; None where npu-smi prints "-" (second A3 chip)
    temp: int | None  # degrees C
    aicore_pct: int | None
    bus_id: str
    hbm_used_mb: int
    hbm_total_mb: int

    @property
    def device(self) -> int:
        """The id `hccn_tool -i`, ASCEND_RT_VISIBLE_DEVICES and /dev/davinciN use."""
        return self.phy_id if self.phy_id is not None else self.id


@dataclass(frozen=True)
class NpuProcess:
    """One process row of `npu-smi info`."""

    npu_id: int
    chip: int
    pid: int
    name: str  # empty when the process lives in another container/PID namespace
    mem_mb: int


@dataclass(frozen=True)
class NpuSmiInfo:
    version: str
    npus: tuple[Npu, ...]
    processes: tuple[NpuProcess, ...]

    def device_of(self, npu_id: int, chip: int) -> int:
        for npu in self.npus:
            if npu.id == npu_id and npu.chip == chip:
                return npu.device
        return npu_id


_HEADER = re.compile(r"npu-smi\s+(\S+)\s+Version:\s*(\S+)")
_ROW1_C0 = re.compile(r"^(\d+)\s+(\S.*)$")
_ROW1_C2 = re.compile(r"^(\S+)\s+(\S+)\s+\d+\s*/\s*\d+$")
_ROW2_C0 = re.compile(r"^(\d+)(?:\s+(\d+))?$")
_ROW2_C2 = re.compile(r"^(\S+)\s+\d+\s*/\s*\d+\s+(\d+)\s*/\s*(\d+)$")
_PROC_C0 = re.compile(r"^(\d+)\s+(\d+)$")


def _num(text: str, kind: type[int] | type[float]) -> int | float | None:
    try:
        return kind(text)
    except ValueError:
        return None


def parse_npu_smi_info(text: str) -> NpuSmiInfo:
    """Parse the `npu-smi info` table (A2, A3 and the older 910A layout)."""
    tool = "npu-smi"
    if tool_missing(text):
        raise ParseError(tool, "no output: npu-smi is not installed or not on PATH", text)
    head = _HEADER.search(text)
    if head is None:
        raise ParseError(tool, "no 'npu-smi <version>  Version: <v>' header", text)
    npus: list[Npu] = []
    procs: list[NpuProcess] = []
    first: tuple[int, str, str, str, str] | None = None
    in_procs = False
    mem_div = 1
    for line in text.splitlines():
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if "Process id" in line:
            in_procs, mem_div = True, (1024 * 1024 if "memory(B)" in line else 1)
            continue
        if _HEADER.search(line) or "Health" in line or "Bus-Id" in line:
            continue
        if in_procs:
            if cells[0].startswith("No running processes found"):
                continue
            m = _PROC_C0.match(cells[0])
            if m is None or len(cells) != 4 or not cells[1].isdigit() or not cells[3].isdigit():
                raise ParseError(tool, "unrecognised process row", line)
            procs.append(NpuProcess(int(m[1]), int(m[2]), int(cells[1]), cells[2],
                                    int(cells[3]) // mem_div))
            continue
        if len(cells) != 3:
            raise ParseError(tool, "unrecognised device row", line)
        if first is None and ":" not in cells[1]:
            m1, m2 = _ROW1_C0.match(cells[0]), _ROW1_C2.match(cells[2])
            if m1 is None or m2 is None:
                raise ParseError(tool, "unrecognised device row", line)
            first = (int(m1[1]), m1[2], cells[1], m2[1], m2[2])
            continue
        r0, r2 = _ROW2_C0.match(cells[0]), _ROW2_C2.match(cells[2])
        if first is None or r0 is None or r2 is None:
            raise ParseError(tool, "unrecognised device row", line)
        npu_id, name, health, power, temp = first
        npus.append(Npu(
            id=npu_id, chip=int(r0[1]), phy_id=int(r0[2]) if r0[2] else None, name=name,
            health=health, power=_num(power, float), temp=_num(temp, int),  # type: ignore[arg-type]
            aicore_pct=_num(r2[1], int), bus_id=cells[1],  # type: ignore[arg-type]
            hbm_used_mb=int(r2[2]), hbm_total_mb=int(r2[3])))
        first = None
    if not npus:
        raise ParseError(tool, "no NPU rows in the table", text)
    return NpuSmiInfo(head[2], tuple(npus), tuple(procs))


# --------------------------------------------------------------------------- hccn_tool

_NOT_PRESET = re.compile(r"no \w+ was preset there", re.I)


def _search(tool: str, pattern: str, text: str) -> re.Match[str]:
    m = re.search(pattern, text, re.M)
    if m is None:
        raise ParseError(tool, f"expected /{pattern}/", text)
    return m


def parse_hccn_link(text: str) -> Literal["UP", "DOWN"]:
    """`hccn_tool -i N -link -g` -> "UP" | "DOWN"."""
    return "UP" if _search("hccn_tool -link", r"link status\s*:\s*(UP|DOWN)\b", text)[1] == "UP" \
        else "DOWN"


def parse_hccn_net_health(text: str) -> str:
    """`-net_health -g` -> "Success", "Fault", "Init", "Detect ip set", ..."""
    return _search("hccn_tool -net_health", r"net health status\s*:\s*(\S.*?)\s*$", text)[1]


def parse_hccn_ip(text: str) -> tuple[str, str] | None:
    """`-ip -g` -> (address, netmask); None when no IP is configured."""
    if _NOT_PRESET.search(text):
        return None
    addr = _search("hccn_tool -ip", r"ipaddr\s*:\s*(\S+)", text)[1]
    mask = _search("hccn_tool -ip", r"netmask\s*:\s*(\S+)", text)[1]
    return addr, mask


def parse_hccn_gateway(text: str) -> str | None:
    """`-gateway -g` -> gateway address; None when none is configured."""
    if _NOT_PRESET.search(text):
        return None
    return _search("hccn_tool -gateway", r"default gateway\s*:\s*([0-9.]+)", text)[1]


def parse_hccn_netdetect(text: str) -> str | None:
    """`-netdetect -g` -> the address net_health probes; None when unset."""
    if _NOT_PRESET.search(text):
        return None
    m = _search("hccn_tool -netdetect", r"netdetect address\s*:\s*(\S*)", text)
    return m[1] or None


def parse_hccn_tls(text: str) -> bool:
    """`-tls -g` -> True when TLS is enabled ("tls switch[1]")."""
    return _search("hccn_tool -tls", r"tls switch\[(\d)\]", text)[1] == "1"


def parse_hccn_lldp(text: str) -> str | None:
    """`-lldp -g` -> the switch port the NPU is cabled to (Ifname), if advertised."""
    m = re.search(r"^\s*Ifname:\s*(\S+)", text, re.M)
    if m is None and "TLV" not in text:
        raise ParseError("hccn_tool -lldp", "no LLDP TLVs", text)
    return m[1] if m else None


@dataclass(frozen=True)
class PingResult:
    sent: int
    received: int
    loss_pct: float

    @property
    def ok(self) -> bool:
        return self.sent > 0 and self.received == self.sent


def parse_hccn_ping(text: str) -> PingResult:
    """`-ping -g address X` -> packets sent/received and loss."""
    m = re.search(r"(\d+) packets transmitted, (\d+) received, ([\d.]+)% packet loss", text)
    if m:
        return PingResult(int(m[1]), int(m[2]), float(m[3]))
    ok, lost = len(re.findall(r"recv seq=", text)), len(re.findall(r"recv time out", text))
    if ok + lost == 0:
        raise ParseError("hccn_tool -ping", "no ping replies or summary", text)
    return PingResult(ok + lost, ok, round(100.0 * lost / (ok + lost), 2))


def parse_hccn_conf(text: str) -> dict[int, dict[str, str]]:
    """/etc/hccn.conf `key_N=value` lines -> {N: {key: value}}."""
    out: dict[int, dict[str, str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([A-Za-z][\w]*?)_(\d+)=(.*)$", line)
        if m is None:
            raise ParseError("hccn.conf", "line is not key_N=value", line)
        out.setdefault(int(m[2]), {})[m[1]] = m[3]
    return out


def parse_key_values(text: str, tool: str) -> dict[str, str]:
    """`key=value` files (driver version.info, ascend_toolkit_install.info)."""
    out = dict(ln.strip().split("=", 1) for ln in text.splitlines() if "=" in ln)
    if not out:
        raise ParseError(tool, "no key=value lines", text)
    return out


def parse_driver_version_info(text: str) -> str:
    """/usr/local/Ascend/driver/version.info -> driver version, e.g. "25.3.rc1"."""
    kv = parse_key_values(text, "driver version.info")
    ver = kv.get("package_version") or kv.get("Version")
    if not ver:
        raise ParseError("driver version.info", "no package_version= or Version=", text)
    return ver


def parse_cann_install_info(text: str) -> str:
    """ascend_toolkit_install.info -> CANN version, e.g. "8.3.RC2"."""
    kv = parse_key_values(text, "ascend_toolkit_install.info")
    if "version" not in kv:
        raise ParseError("ascend_toolkit_install.info", "no version=", text)
    return kv["version"]
