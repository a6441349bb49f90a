"""Ascend tools: parsers for npu-smi / hccn_tool / hccn.conf / version files, the checks
the preflight applies to them (the probe script that gathers them: `ascend_probe.py`).

Device ids: `hccn_tool -i N` takes the logical device id. On A2 (8 NPUs, one chip each)
that is the NPU column of `npu-smi info`; on A3 (8 NPUs x 2 chips = 16 devices) it is the
chip's Phy-ID column. `Npu.device` gives it for both.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from orchestrator.hw import Finding, ParseError, tool_missing

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


# ------------------------------------------------------------------------------ checks


@dataclass(frozen=True)
class NpuLinkFacts:
    """What hccn_tool said about one device; None = "not configured" (see `missing`)."""

    link: str | None = None  # "UP" / "DOWN"
    net_health: str | None = None  # "Success", "Fault", ...
    ip: tuple[str, str] | None = None  # (address, netmask); None: no IP preset
    gateway: str | None = None
    netdetect: str | None = None
    tls: bool | None = None
    lldp_ifname: str | None = None
    pings: tuple[tuple[str, PingResult], ...] = ()  # (peer address, result)
    missing: frozenset[str] = frozenset()  # ops whose output was absent or unparseable


def _label(n: Npu) -> str:
    return f"NPU {n.id}" if n.phy_id is None else f"NPU {n.id} chip {n.chip} (device {n.phy_id})"


def _ids(ids: Sequence[int]) -> str:
    return ", ".join(str(i) for i in ids)


def _finding(check: str, bad: list[str], unknown: list[str], ok: str, fix: str,
             bad_status: Literal["warn", "fail"] = "fail") -> Finding:
    if bad:
        return Finding(check, bad_status, "; ".join(bad + unknown), fix)
    if unknown:
        return Finding(check, "warn", "; ".join(unknown),
                       "rerun the probe; check hccn_tool is installed "
                       "(/usr/local/Ascend/driver/tools/hccn_tool) and runs as root")
    return Finding(check, "pass", ok)


def ascend_verdicts(npu_info: NpuSmiInfo | None, per_npu: Mapping[int, NpuLinkFacts],
                    need_devices: int, *, devices: Collection[int] | None = None,
                    hbm_warn_pct: float = 15.0, hbm_fail_pct: float = 50.0) -> list[Finding]:
    """Checks for one node. `devices` limits the per-device checks (default: all found)."""
    if npu_info is None:
        return [Finding("npu.count", "fail", "npu-smi info gave no usable output",
                        "run `npu-smi info` on the node: 'dcmi module initialize failed' means "
                        "the driver is not loaded or /dev/davinci* are not passed to the "
                        "container")]
    found = sorted({n.device for n in npu_info.npus})
    use = [n for n in npu_info.npus if devices is None or n.device in devices]
    out = [Finding("npu.count", "pass", f"{len(found)} NPUs, need {need_devices}")
           if len(found) >= need_devices else
           Finding("npu.count", "fail", f"found {len(found)} NPUs ({_ids(found)}), "
                   f"need {need_devices}", "check `npu-smi info` and `ls /dev/davinci*`; "
                   "reinstall/reload the driver or fix the inventory's device count")]
    sick = [n for n in use if n.health != "OK"]
    health_fix = ""
    if sick:
        health_fix = (f"`npu-smi info -t health -i {sick[0].id}` shows the alarm; reset the "
                      f"device (npu-smi set -t reset -i {sick[0].id} -c {sick[0].chip}) or reboot")
    out.append(_finding("npu.health", [f"{_label(n)} health {n.health}" for n in sick], [],
                        "all NPUs OK", health_fix,
                        "warn" if all(n.health == "Warning" for n in sick) else "fail"))
    used = {(n.id, n.chip): n for n in use}
    busy = [(used[p.npu_id, p.chip], p) for p in npu_info.processes if (p.npu_id, p.chip) in used]
    out.append(_finding(
        "npu.busy", [f"{_label(n)} used by pid {p.pid}" + (f" ({p.name})" if p.name else "")
                     + f" holding {p.mem_mb} MB" for n, p in busy], [],
        "no processes on the NPUs", "stop the process or container holding the NPU (e.g. a "
        "previous vLLM run: docker ps; kill <pid>) or use other devices"))
    full: list[str] = []
    high: list[str] = []
    for n in use:
        pct = 100.0 * n.hbm_used_mb / n.hbm_total_mb if n.hbm_total_mb else 100.0
        msg = f"{_label(n)} HBM {n.hbm_used_mb}/{n.hbm_total_mb} MB used ({pct:.0f}%)"
        (full if pct >= hbm_fail_pct else high if pct >= hbm_warn_pct else []).append(msg)
    out.append(_finding("npu.hbm", full or high, [], "HBM free on all NPUs",
                        "HBM held without a listed process is usually another container's "
                        "process: find and stop it, else reset the device",
                        "fail" if full else "warn"))
    if per_npu:
        keep = {n.device for n in use}
        out += _hccn_verdicts({d: f for d, f in per_npu.items() if d in keep or not keep})
    return out


def _hccn_verdicts(facts: Mapping[int, NpuLinkFacts]) -> list[Finding]:
    items = sorted(facts.items())

    def unknown(op: str) -> list[str]:
        return [f"NPU {d}: no usable `-{op} -g` output" for d, f in items if op in f.missing]

    down = [d for d, f in items if f.link == "DOWN"]
    sick = [(d, f.net_health) for d, f in items if f.net_health not in (None, "Success")]
    no_ip = [d for d, f in items if f.ip is None and "ip" not in f.missing]
    ips = [f.ip[0] for _, f in items if f.ip]
    dups = sorted({a for a in ips if ips.count(a) > 1})
    no_gw = [d for d, f in items if f.gateway is None and "gateway" not in f.missing]
    no_nd = [d for d, f in items if f.netdetect is None and "netdetect" not in f.missing]
    tls = {d: f.tls for d, f in items if f.tls is not None}
    on = [d for d, v in tls.items() if v]
    n = down[0] if down else 0
    out = [
        _finding("hccn.link", [f"NPU {d} link DOWN" for d in down], unknown("link"),
                 "all links UP", f"check the optical module/cable of NPU {n} and its switch port "
                 f"(`hccn_tool -i {n} -lldp -g` names the port); if it was shut down: "
                 f"`hccn_tool -i {n} -link -s up`"),
        _finding("hccn.health", [f"NPU {d} net health {h}" for d, h in sick],
                 unknown("net_health"), "net health Success on all NPUs",
                 "net health pings the netdetect address: set a reachable one "
                 "(`hccn_tool -i N -netdetect -s address <ip>`), check link and switch; "
                 "`hccn_tool -i N -cfg recovery` reapplies /etc/hccn.conf"),
        _finding("hccn.ip", [f"NPU {d} has no IP" for d in no_ip] +
                 [f"IP {a} used by several NPUs" for a in dups], unknown("ip"),
                 "every NPU has its own IP",
                 "`hccn_tool -i N -ip -s address <ip> netmask <mask>` (one unique address per "
                 "NPU; hccn_tool records it in /etc/hccn.conf)"),
        _finding("hccn.gateway", [f"NPU {d} has no gateway" for d in no_gw], unknown("gateway"),
                 "gateway set on all NPUs", "`hccn_tool -i N -gateway -s gateway <gw>` "
                 "(needed when the peers' NPU addresses are in another subnet)", "warn"),
        _finding("hccn.netdetect", [f"NPU {d} has no netdetect address" for d in no_nd],
                 unknown("netdetect"), "netdetect set on all NPUs",
                 "`hccn_tool -i N -netdetect -s address <gateway or peer ip>`", "warn"),
        _finding("hccn.tls", [f"TLS enabled on NPU {_ids(on)}, disabled on NPU "
                              f"{_ids([d for d in tls if d not in on])}"]
                 if on and len(on) < len(tls) else [], unknown("tls"),
                 f"TLS {'enabled' if on else 'disabled'} on all NPUs",
                 "NPUs with different TLS settings cannot link; align them (recommended off): "
                 "`hccn_tool -i N -tls -s enable 0` for every N"),
    ]
    pings = [(d, a, p) for d, f in items for a, p in f.pings]
    if pings:
        lost = [(d, a, p) for d, a, p in pings if not p.ok]
        out.append(_finding("hccn.ping", [f"NPU {d} -> {a}: {p.received}/{p.sent} replies"
                                          for d, a, p in lost], [], "peers reachable",
                            "check VLAN/routes between the nodes' NPU networks; "
                            "`hccn_tool -i N -ping -g address <peer>` must lose nothing",
                            "fail" if any(p.received == 0 for _, _, p in lost) else "warn"))
    return out


def tls_consistency(tls: Mapping[str, Mapping[int, bool]]) -> dict[str, Finding]:
    """Cross-node: TLS must be the same on every NPU of every node."""
    uniform = {node: next(iter(v.values())) for node, v in tls.items()
               if v and len(set(v.values())) == 1}
    ref = sum(uniform.values()) > len(uniform) / 2  # majority; a tie picks "disabled"
    fix = "`hccn_tool -i N -tls -s enable 0` on every NPU of every node (or enable everywhere)"
    out: dict[str, Finding] = {}
    for node, values in tls.items():
        if not values:
            out[node] = Finding("hccn.tls", "warn", "no TLS facts for this node", fix)
        elif node not in uniform:
            on = sorted(d for d, v in values.items() if v)
            out[node] = Finding("hccn.tls", "fail", f"TLS mixed: enabled on NPU {_ids(on)}", fix)
        elif uniform[node] != ref:
            state = "enabled" if uniform[node] else "disabled"
            out[node] = Finding("hccn.tls", "fail", f"TLS {state} on NPU {_ids(sorted(values))} "
                                f"while most nodes have it {'enabled' if ref else 'disabled'}", fix)
        else:
            out[node] = Finding("hccn.tls", "pass", f"TLS {'enabled' if ref else 'disabled'}, "
                                "same as the other nodes")
    return out
