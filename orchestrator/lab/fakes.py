"""Fake NPU tools (`npu-smi`, `hccn_tool`) on each lab host's bin_dir.

The real renderer is `orchestrator.hw.fakes.render_fake_tools(fault) -> {filename: text}`
(recorded outputs of real machines, written by the hw owner). Until it exists this module
renders a small placeholder from the sample outputs in docs (vllm-facts.md).
TODO: drop the placeholder once orchestrator.hw.fakes.render_fake_tools lands.

Faults (a dict, e.g. {"link_down": 3}): link_down=N (device N link DOWN, net health Fault),
no_ip=N (device N has no IP), tls=N (device N has TLS enabled while the others have not).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

N_DEVICES = 8


def render(fault: dict[str, Any] | None) -> dict[str, str]:
    try:
        from orchestrator.hw.fakes import render_fake_tools  # type: ignore[import-not-found]
    except ImportError:
        return _placeholder(fault or {})
    return render_fake_tools(fault)


def write_tools(bin_dir: str | Path, fault: dict[str, Any] | None) -> None:
    bdir = Path(bin_dir)
    bdir.mkdir(parents=True, exist_ok=True)
    for name, text in render(fault).items():
        p = bdir / name
        p.write_text(text)
        p.chmod(0o755)


def parse_fault(spec: str) -> tuple[str, dict[str, Any]]:
    """'h1:link_down=3' -> ('h1', {'link_down': 3}); several with commas: h1:a=1,b=2."""
    host, _, rest = spec.partition(":")
    if not host or not rest:
        raise ValueError(f"fault {spec!r} is not HOST:KEY=VALUE[,KEY=VALUE]")
    fault: dict[str, Any] = {}
    for kv in rest.split(","):
        k, _, v = kv.partition("=")
        fault[k.strip()] = int(v) if v.strip().lstrip("-").isdigit() else v.strip()
    return host, fault


def _placeholder(fault: dict[str, Any]) -> dict[str, str]:
    down, no_ip, tls = fault.get("link_down"), fault.get("no_ip"), fault.get("tls")
    rows = []
    for i in range(N_DEVICES):
        rows.append(f"| {i}     910B4               | OK            | 85.0        36"
                    f"                0    / 0             |")
        rows.append(f"| 0                         | 0000:{0xC1 + i:02X}:00.0  | 0           "
                    f"0    / 0          2868 / 32768         |")
    procs = "\n".join(f"| No running processes found in NPU {i}" + " " * 40 + "|"
                      for i in range(N_DEVICES))
    npu_smi = f"""#!/bin/bash
# orch lab placeholder npu-smi (TODO: orchestrator.hw.fakes.render_fake_tools)
if [[ "$1" != info ]]; then echo "usage: npu-smi info" >&2; exit 1; fi
cat <<'EOF'
+------------------------------------------------------------------------------------------------+
| npu-smi 23.0.rc3                 Version: 23.0.rc3                                             |
+---------------------------+---------------+----------------------------------------------------+
| NPU   Name                | Health        | Power(W)    Temp(C)           Hugepages-Usage(page)|
| Chip                      | Bus-Id        | AICore(%)   Memory-Usage(MB)  HBM-Usage(MB)        |
+===========================+===============+====================================================+
{chr(10).join(rows)}
+===========================+===============+====================================================+
{procs}
+===========================+===============+====================================================+
EOF
"""
    hccn = f"""#!/bin/bash
# orch lab placeholder hccn_tool (TODO: orchestrator.hw.fakes.render_fake_tools)
# usage: hccn_tool -i N -link|-ip|-net_health|-netdetect|-gateway|-tls|-lldp|-ping -g [address A]
DOWN={down if down is not None else -1}; NOIP={no_ip if no_ip is not None else -1}
TLS={tls if tls is not None else -1}
[[ "$1" == -i ]] || {{ echo "usage: hccn_tool -i DEV -OPT -g" >&2; exit 1; }}
dev=$2; opt=$3
[[ $dev =~ ^[0-9]+$ && $dev -lt {N_DEVICES} ]] || {{ echo "device $dev does not exist" >&2; exit 1; }}
ip="10.20.0.$((dev + 11))"
case "$opt" in
  -link) [[ $dev == $DOWN ]] && echo "link status: DOWN" || echo "link status: UP" ;;
  -net_health) [[ $dev == $DOWN ]] && echo "net health status: Fault" \\
                 || echo "net health status: Success" ;;
  -ip) if [[ $dev == $NOIP ]]; then
         echo "Get ipconf failed, because no ip was preset there!"; exit 1
       fi
       printf 'ipaddr:%s\\nnetmask:255.255.255.0\\n' "$ip" ;;
  -netdetect) echo "netdetect address: 10.20.0.1" ;;
  -gateway) echo "default gateway:10.20.0.1, Iface:eth$dev" ;;
  -lldp) printf '\\tIfname: 400GE1/1/%s:1\\n' "$((dev + 1))" ;;
  -tls) t=0; [[ $dev == $TLS ]] && t=1
        echo "dev_id:$dev, tls switch[$t](0:disable, 1:enable), tls preconfigured[1](0:non-preset, 1:preset), tls alarm time threshold[60]days" ;;
  -ping) addr=${{5:-}}
        echo "device $dev PING $addr"
        if [[ $dev == $DOWN ]]; then echo "recv time out seq=0"; echo "3 packets transmitted, 0 received, 100.00% packet loss"
        else echo "recv seq=0,time=0.114000ms"; echo "3 packets transmitted, 3 received, 0.00% packet loss"; fi ;;
  *) echo "unknown option $opt" >&2; exit 1 ;;
esac
"""
    return {"npu-smi": npu_smi, "hccn_tool": hccn}
