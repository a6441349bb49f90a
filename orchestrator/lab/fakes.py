"""Fake NPU tools (`npu-smi`, `hccn_tool`) on each lab host's bin_dir, rendered by
`orchestrator.hw.fakes.render_fake_tools` (recorded outputs of real machines; see there for
the faults it knows: link_down, no_ip, net_health_fault, tls, npu_busy, npu_unhealthy,
hbm_full). Device N of lab host i has NPU address `fake_npu_ip(i, N)`; every other lab
host's NPU addresses are its ping peers.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from orchestrator.hw.fakes import fake_npu_ip
from orchestrator.hw.fakes import render_fake_tools as render_fake_tools  # re-exported

N_DEVICES = 8


def write_tools(bin_dir: str | Path, fault: Mapping[str, int] | None, *, host_index: int,
                all_indices: list[int]) -> None:
    peers = [fake_npu_ip(j, d) for j in all_indices if j != host_index
             for d in range(N_DEVICES)]
    scripts = render_fake_tools(fault, devices=N_DEVICES, host_index=host_index, peers=peers)
    bdir = Path(bin_dir)
    bdir.mkdir(parents=True, exist_ok=True)
    for name, text in scripts.items():
        p = bdir / name
        tmp = p.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.chmod(0o755)
        tmp.replace(p)  # atomic: a check running now sees the old or the new script


def parse_fault(spec: str) -> tuple[str, dict[str, Any]]:
    """'h1:link_down=3' -> ('h1', {'link_down': 3}); several with commas: h1:a=1,b=2."""
    host, _, rest = spec.partition(":")
    if not host or not rest:
        raise ValueError(f"fault {spec!r} is not HOST:KEY=VALUE[,KEY=VALUE]")
    fault: dict[str, Any] = {}
    for kv in rest.split(","):
        k, _, v = kv.partition("=")
        if not v.strip().isdigit():
            raise ValueError(f"fault {spec!r}: {k} needs a device number, e.g. {k}=3")
        fault[k.strip()] = int(v)
    return host, fault
