"""GPU tools: `nvidia-smi --query-gpu` csv and `rocm-smi --json`, plus node checks.

The NVIDIA query the preflight runs is `NVIDIA_QUERY`; rocm-smi's is `ROCM_QUERY`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from orchestrator.hw import Finding, ParseError, tool_missing

NVIDIA_QUERY = ("nvidia-smi --query-gpu=index,name,driver_version,memory.total,memory.used "
                "--format=csv,noheader,nounits")
ROCM_QUERY = "rocm-smi --showproductname --showdriverversion --showmeminfo vram --json"


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    driver: str  # NVIDIA driver / amdgpu driver version; "" when rocm-smi did not say
    mem_total_mb: int
    mem_used_mb: int | None  # None: the tool did not report it ("[N/A]", not queried)


def _mib(field: str) -> int | None:
    v = field.strip().removesuffix("MiB").strip()
    return int(float(v)) if re.fullmatch(r"\d+(\.\d+)?", v) else None


def parse_nvidia_smi_csv(text: str) -> list[Gpu]:
    """Parse `NVIDIA_QUERY` output (with or without `nounits`)."""
    tool = "nvidia-smi"
    if tool_missing(text):
        raise ParseError(tool, "no output: nvidia-smi is not installed or not on PATH", text)
    if "couldn't communicate with the NVIDIA driver" in text:
        raise ParseError(tool, "NVIDIA driver not loaded", text)
    if text.strip() == "No devices were found":
        return []
    gpus = []
    for line in text.strip().splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) < 5:
            raise ParseError(tool, "expected index, name, driver, memory.total, memory.used", line)
        # a name containing ", " would split: the last three fields are fixed
        index, name = fields[0], ", ".join(fields[1:-3])
        driver, total, used = fields[-3:]
        total_mb = _mib(total)
        if not index.isdigit() or total_mb is None:
            raise ParseError(tool, "unrecognised row", line)
        gpus.append(Gpu(int(index), name, driver, total_mb, _mib(used)))
    return gpus


def _get(card: Mapping[str, str], *keys: str) -> str | None:
    lower = {k.lower(): v for k, v in card.items()}
    for k in keys:
        if k.lower() in lower:
            return str(lower[k.lower()])
    return None


def parse_rocm_smi_json(text: str) -> list[Gpu]:
    """Parse `rocm-smi ... --json` (product name, VRAM, driver version in any mix)."""
    tool = "rocm-smi"
    if tool_missing(text):
        raise ParseError(tool, "no output: rocm-smi is not installed or not on PATH", text)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ParseError(tool, f"not JSON ({exc.msg})", text) from exc
    if not isinstance(data, dict):
        raise ParseError(tool, "top level is not an object", text)
    system: dict[str, str] = data["system"] if isinstance(data.get("system"), dict) else {}
    sys_driver = _get(system, "Driver version") or ""
    gpus = []
    for key, card in data.items():
        m = re.fullmatch(r"card(\d+)", key)
        if m is None or not isinstance(card, dict):
            continue
        name = _get(card, "Card Series", "Card series", "Device Name", "Card Model") or key
        total, used = _get(card, "VRAM Total Memory (B)"), _get(card, "VRAM Total Used Memory (B)")
        gpus.append(Gpu(
            index=int(m[1]), name=name, driver=_get(card, "Driver version") or sys_driver,
            mem_total_mb=int(total) // 2**20 if total and total.isdigit() else 0,
            mem_used_mb=int(used) // 2**20 if used and used.isdigit() else None))
    if not gpus:
        raise ParseError(tool, "no cardN entries", text)
    return sorted(gpus, key=lambda g: g.index)


def gpu_verdicts(gpus: Sequence[Gpu], need_devices: int, *, busy_mb: int = 1024) -> list[Finding]:
    """Checks for one GPU node: count, memory already in use, one driver version."""
    out = [Finding("gpu.count", "pass", f"{len(gpus)} GPUs, need {need_devices}")
           if len(gpus) >= need_devices else
           Finding("gpu.count", "fail", f"found {len(gpus)} GPUs "
                   f"({', '.join(str(g.index) for g in gpus) or 'none'}), need {need_devices}",
                   "check `nvidia-smi -L` / `rocm-smi`; in a container pass --gpus all (NVIDIA) "
                   "or --device /dev/kfd --device /dev/dri (AMD); fix the inventory count")]
    busy = [g for g in gpus if g.mem_used_mb is not None and g.mem_used_mb >= busy_mb]
    out.append(Finding("gpu.busy", "fail", "; ".join(
        f"GPU {g.index} has {g.mem_used_mb}/{g.mem_total_mb} MB in use" for g in busy),
        "stop the process holding it (`nvidia-smi --query-compute-apps=pid,used_memory "
        "--format=csv` / `rocm-smi --showpids`), e.g. a previous vLLM container")
        if busy else Finding("gpu.busy", "pass", "GPU memory free"))
    drivers = sorted({g.driver for g in gpus if g.driver})
    out.append(Finding("gpu.driver", "fail", f"mixed driver versions {', '.join(drivers)}",
                       "reinstall one driver version and reboot")
               if len(drivers) > 1 else
               Finding("gpu.driver", "pass", f"driver {drivers[0] if drivers else 'unknown'}"))
    return out


def driver_consistency(drivers: Mapping[str, str]) -> dict[str, Finding]:
    """Cross-node: every node should run the majority driver (GPU or Ascend) version."""
    counts: dict[str, int] = {}
    for v in drivers.values():
        counts[v] = counts.get(v, 0) + 1
    ref = max(sorted(counts), key=lambda v: counts[v]) if counts else ""
    return {node: Finding("driver.version", "pass", f"driver {v}") if v == ref else
            Finding("driver.version", "warn", f"driver {v}, most nodes run {ref}",
                    "install the same driver on every node; mixed versions are a known cause "
                    "of multi-node hangs") for node, v in drivers.items()}
