"""Fake `npu-smi` and `hccn_tool` for lab hosts without Ascend hardware.

`render_fake_tools` returns self-contained POSIX sh scripts (heredocs, no python on the
host) that print, for the arguments `ascend_probe_script` uses, output in the exact
formats of the recorded real outputs in `recorded/`. Healthy by default; a `fault` dict
breaks exactly one thing per key, so each fault trips exactly one check:

    {"link_down": N}         hccn_tool -i N -link -g        -> link status: DOWN
    {"no_ip": N}             hccn_tool -i N -ip -g          -> Get ipconf failed, ...
    {"net_health_fault": N}  hccn_tool -i N -net_health -g  -> net health status: Fault
    {"tls": 1}               hccn_tool -i * -tls -g         -> tls switch[1] on every NPU
    {"npu_busy": N}          npu-smi info lists a foreign python3 process on device N
    {"npu_unhealthy": N}     npu-smi info shows Health "Critical" for device N
    {"hbm_full": N}          npu-smi info shows 60000/65536 MB HBM used, no process

Device N gets NPU address `fake_npu_ip(host_index, N)`; `-ping -g address X` answers when
X is in `peers` (and device N has link and IP), else prints timeouts.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence

from orchestrator.hw.ascend import Npu, NpuProcess

FAULTS = ("link_down", "no_ip", "net_health_fault", "tls", "npu_busy", "npu_unhealthy",
          "hbm_full")
FAKE_VERSION = "24.1.rc2.1"
_W = 96  # inner width of the npu-smi table
_DASH = "+" + "-" * _W + "+"
_COLS = "+" + "-" * 27 + "+" + "-" * 15 + "+" + "-" * 52 + "+"
_EQ = "+" + "=" * 27 + "+" + "=" * 15 + "+" + "=" * 52 + "+"


def fake_npu_ip(host_index: int, device: int) -> str:
    """The NPU address the fakes give device `device` of lab host `host_index`."""
    return f"192.168.{100 + host_index}.{device + 1}"


def _row(c0: str, c1: str, c2: str) -> str:
    return f"| {c0:<26}| {c1:<14}| {c2:<51}|"


def render_npu_smi_info(npus: Sequence[Npu], processes: Sequence[NpuProcess],
                        version: str = FAKE_VERSION) -> str:
    """Render an `npu-smi info` table in the real A2 (or, with phy_id set, A3) layout."""
    a3 = any(n.phy_id is not None for n in npus)
    out = [_DASH, f"| npu-smi {version:<25}Version: {version:<53}|", _COLS,
           "| NPU   Name                | Health        | Power(W)    Temp(C)           "
           "Hugepages-Usage(page)|",
           f"| {'Chip  Phy-ID' if a3 else 'Chip':<26}| Bus-Id        | AICore(%)   "
           "Memory-Usage(MB)  HBM-Usage(MB)        |", _EQ]
    for i, n in enumerate(npus):
        power = "-" if n.power is None else f"{n.power:.1f}"
        out.append(_row(f"{n.id:<6}{n.name}", n.health, f"{power:<12}{n.temp!s:<18}0    / 0"))
        chip = f"{n.chip:<6}{n.phy_id}" if a3 else str(n.chip)
        out.append(_row(chip, n.bus_id, f"{n.aicore_pct!s:<12}0    / 0          "
                                        f"{n.hbm_used_mb:<5}/ {n.hbm_total_mb}"))
        last = i + 1 == len(npus) or npus[i + 1].id != n.id
        out.append(_EQ if last else _DASH)
    out += [_COLS, "| NPU     Chip              | Process id    | Process name             "
            "| Process memory(MB)      |", _EQ]
    for npu_id in sorted({n.id for n in npus}):
        mine = [p for p in processes if p.npu_id == npu_id]
        if not mine:
            out.append(f"| {f'No running processes found in NPU {npu_id}':<{_W - 2}} |")
        out += [f"| {p.npu_id:<8}{p.chip:<18}| {p.pid:<14}| {p.name:<25}| {p.mem_mb:<24}|"
                for p in mine]
        out.append(_EQ)
    return "\n".join(out) + "\n"


def _fake_npus(devices: int, fault: Mapping[str, int]) -> tuple[list[Npu], list[NpuProcess]]:
    a3 = devices > 8
    npus, procs = [], []
    for d in range(devices):
        npu_id, chip = (d // 2, d % 2) if a3 else (d, 0)
        used = 60000 if fault.get("hbm_full") == d else 3345
        if fault.get("npu_busy") == d:
            used += 1024
            procs.append(NpuProcess(npu_id, chip, 4242 + d, "python3", 1024))
        npus.append(Npu(
            id=npu_id, chip=chip, phy_id=d if a3 else None, name="Ascend910" if a3 else "910B2",
            health="Critical" if fault.get("npu_unhealthy") == d else "OK",
            power=None if chip else 95.5, temp=36, aicore_pct=0,
            bus_id=f"0000:{0xC1 - d:02X}:00.0", hbm_used_mb=used, hbm_total_mb=65536))
    return npus, procs


def _heredoc(body: str) -> str:
    return f"cat <<'ORCH_EOF'\n{body.rstrip(chr(10))}\nORCH_EOF\n"


def _hccn_outputs(d: int, fault: Mapping[str, int], host_index: int) -> dict[str, str]:
    tls = int(fault.get("tls", 0) == 1)
    return {
        "link": f"link status: {'DOWN' if fault.get('link_down') == d else 'UP'}",
        "net_health": "net health status: "
                      + ("Fault" if fault.get("net_health_fault") == d else "Success"),
        "ip": "Get ipconf failed, because no ip was preset there!" if fault.get("no_ip") == d
              else f"ipaddr:{fake_npu_ip(host_index, d)}\nnetmask:255.255.0.0",
        "gateway": f"default gateway:192.168.0.1, Iface:eth{d}",
        "netdetect": "netdetect address: 192.168.0.1",
        "tls": f"dev_id:{d}, tls switch[{tls}](0:disable, 1:enable), tls preconfigured[1]"
               "(0:non-preset, 1:preset), tls alarm time threshold[60]days",
        "lldp": f"Chassis ID TLV\n\tMAC: 2c:97:b1:5a:10:{host_index:02x}\nPort ID TLV\n"
                f"\tIfname: 400GE1/{host_index + 1}/{d + 1}:1\nTime to Live TLV\n\t121\n"
                "End of LLDPDU TLV",
    }


_PING_OK = ("recv seq=0,time=0.114000ms\nrecv seq=1,time=0.067000ms\n"
            "recv seq=2,time=0.063000ms\n3 packets transmitted, 3 received, 0.00% packet loss")
_PING_LOST = ("recv time out seq=0\nrecv time out seq=1\nrecv time out seq=2\n"
              "3 packets transmitted, 0 received, 100.00% packet loss")


def render_fake_tools(fault: Mapping[str, int] | None = None, devices: int = 8,
                      host_index: int = 0, peers: Sequence[str] = ()) -> dict[str, str]:
    """{"npu-smi": script, "hccn_tool": script} for one lab host (see module doc)."""
    fault = dict(fault or {})
    for key, dev in fault.items():
        if key not in FAULTS:
            raise ValueError(f"unknown fault {key!r}; known: {', '.join(FAULTS)}")
        if key != "tls" and not 0 <= dev < devices:
            raise ValueError(f"fault {key!r}: device {dev} not in 0..{devices - 1}")
    if not 1 <= devices <= 16:
        raise ValueError("devices must be 1..16")
    peer_list = [str(ipaddress.ip_address(p)) for p in peers]
    npus, procs = _fake_npus(devices, fault)
    npu_smi = ("#!/bin/sh\n# fake npu-smi rendered by orch for lab hosts (not real hardware)\n"
               'if [ "$1" = info ] && [ $# -eq 1 ]; then\n'
               + _heredoc(render_npu_smi_info(npus, procs)) + "exit 0\nfi\n"
               'echo "fake npu-smi: only \'npu-smi info\' is supported (got: $*)" >&2\nexit 2\n')
    branches = []
    for d in range(devices):
        for op, text in _hccn_outputs(d, fault, host_index).items():
            rc = "    exit 1\n" if "failed" in text else ""  # hccn_tool errors exit non-zero
            branches.append(f'  "{d} -{op}")\n' + _heredoc(text) + rc + "    ;;\n")
    can_ping = [str(d) for d in range(devices)
                if fault.get("link_down") != d and fault.get("no_ip") != d]
    hccn = (
        "#!/bin/sh\n# fake hccn_tool rendered by orch for lab hosts (not real hardware)\n"
        'if [ "$1" != -i ] || [ $# -lt 4 ] || [ "$4" != -g ]; then\n'
        '  echo "fake hccn_tool: only \'hccn_tool -i <dev> -<op> -g ...\' is supported" >&2\n'
        "  exit 2\nfi\ndev=$2\nop=$3\n"
        f'case "$dev" in\n  {"|".join(str(d) for d in range(devices))}) ;;\n'
        '  *) echo "The device is not exist!"; exit 1 ;;\nesac\n'
        'if [ "$op" = -ping ]; then\n'
        '  [ "$5" = address ] && [ -n "$6" ] || { echo "fake hccn_tool: -ping -g address <ip>" >&2;'
        " exit 2; }\n"
        '  printf \'device %s PING %s\\n\' "$dev" "$6"\n  reach=no\n'
        + (f'  case "$dev" in {"|".join(can_ping)})\n'
           f'    case "$6" in {"|".join(peer_list)}) reach=yes ;; esac ;;\n  esac\n'
           if can_ping and peer_list else "")
        + '  if [ "$reach" = yes ]; then\n' + _heredoc(_PING_OK) + "  else\n"
        + _heredoc(_PING_LOST) + "  fi\n  exit 0\nfi\n"
        'case "$dev $op" in\n' + "".join(branches)
        + '  *) echo "fake hccn_tool: unsupported op $op" >&2; exit 2 ;;\nesac\n')
    return {"npu-smi": npu_smi, "hccn_tool": hccn}
