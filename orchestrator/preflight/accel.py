"""Accelerator checks: Ascend (npu-smi / hccn_tool through `hw.ascend`) and GPUs (`hw.gpu`),
per node and across nodes (TLS, NPU addresses, driver versions)."""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping, Sequence

from ..hw import Finding, ParseError, ProbeOutput, split_probe_output
from ..hw.ascend import NpuLinkFacts, ascend_verdicts, parse_hccn_ping, tls_consistency
from ..hw.ascend_probe import AscendProbe
from ..hw.gpu import Gpu, gpu_verdicts, parse_nvidia_smi_csv, parse_rocm_smi_json
from ..plan import NodeSpec
from .report import CheckResult
from .verdicts import res, same_checks

DRIVER_FIX = ("install the same driver (and CANN) version on every node; mixed versions are a "
              "known cause of multi-node hangs")


def need_devices(specs: Sequence[NodeSpec]) -> int:
    """Tensor parallel x local data parallel, over the node's vLLM containers: the
    accelerators its ranks use (a proxy or router uses none)."""
    total = 0
    for spec in specs:
        if spec.role in ("proxy", "router"):
            continue
        argv = spec.serve_argv
        tp = 1
        if "--tensor-parallel-size" in argv:
            i = argv.index("--tensor-parallel-size")
            if i + 1 < len(argv) and argv[i + 1].isdigit():
                tp = int(argv[i + 1])
        total += tp * max(1, len(spec.ranks))
    return total


def _from(node: str, f: Finding) -> CheckResult:
    return res(node, f.check, f.status, f.reason, f.fix)


# ----------------------------------------------------------------------------- Ascend


def npu_ips(probe: AscendProbe) -> dict[int, str]:
    """Device -> NPU address, for devices whose link is UP and that have a valid address."""
    out = {}
    for d, f in probe.per_npu.items():
        if f.link == "UP" and f.ip:
            try:
                out[d] = str(ipaddress.ip_address(f.ip[0]))
            except ValueError:
                continue
    return out


def hccn_ping_plan(probes: Mapping[str, AscendProbe],
                   peers: Mapping[str, Sequence[str]] | None = None) -> dict[str, dict[int, list[str]]]:
    """{node: {device: [the same device's address on each peer]}}: only from and to devices
    that are UP with an address (the others already fail hccn.link / hccn.ip on their node).
    `peers`: whom each node pings (peers.probe_peers); every other node when None."""
    ips = {n: npu_ips(p) for n, p in probes.items()}
    plan: dict[str, dict[int, list[str]]] = {}
    for n, mine in ips.items():
        them = [p for p in (peers[n] if peers is not None else ips) if p in ips and p != n]
        plan[n] = {d: [ips[p][d] for p in them if d in ips[p]] for d in mine}
        plan[n] = {d: v for d, v in plan[n].items() if v}
    return plan


def with_pings(probe: AscendProbe, hccn_text: str) -> dict[int, NpuLinkFacts]:
    """The probe's per-NPU facts with the round-2 `hccn D ping IP` results folded in."""
    pings: dict[int, list[tuple[str, object]]] = {}
    for key, sec in split_probe_output(hccn_text).items():
        if len(key) == 4 and key[0] == "hccn" and key[2] == "ping" and key[1].isdigit():
            try:
                pings.setdefault(int(key[1]), []).append((key[3], parse_hccn_ping(sec.text)))
            except ParseError:
                continue
    return {d: dataclasses.replace(f, pings=tuple(pings.get(d, ())))  # type: ignore[arg-type]
            if d in pings else f for d, f in probe.per_npu.items()}


def ascend_checks(specs: Mapping[str, Sequence[NodeSpec]], probes: Mapping[str, AscendProbe | None],
                  hccn_text: Mapping[str, str], errors: Mapping[str, str]) -> list[CheckResult]:
    """npu.*, hccn.* per node plus the cross-node hccn.tls, NPU address clashes, driver.same.
    `errors`: nodes whose probe did not run (one npu.count fail each)."""
    out: list[CheckResult] = []
    tls: dict[str, dict[int, bool]] = {}
    per_node: dict[str, list[CheckResult]] = {}
    for n, err in errors.items():
        out.append(res(n, "npu.count", "fail", f"the NPU probe failed on {n}: {err[:200]}",
                       "run `npu-smi info` and `hccn_tool -i 0 -link -g` on the node"))
    for n, probe in probes.items():
        if probe is None:
            continue
        per_npu = with_pings(probe, hccn_text.get(n, ""))
        per_node[n] = [_from(n, f) for f in ascend_verdicts(probe.npu_info, per_npu,
                                                            need_devices(specs[n]))]
        tls[n] = {d: f.tls for d, f in per_npu.items() if f.tls is not None}
    if len(tls) > 1:
        for n, f in tls_consistency(tls).items():
            vals = set(tls[n].values())
            if f.status == "fail" and len(vals) == 1:  # the node differs from the majority
                on = vals.pop()
                f = dataclasses.replace(f, reason=(
                    f"TLS {'enabled' if on else 'disabled'} on every NPU of {n}, while most "
                    f"nodes have it {'disabled' if on else 'enabled'}"))
            rs = per_node[n]
            i = next((i for i, r in enumerate(rs) if r.check == "hccn.tls"), None)
            if i is None:
                rs.append(_from(n, f))
            elif rs[i].status != "fail":  # a node mixed in itself keeps its own verdict
                rs[i] = _from(n, f)
    _npu_ip_clashes(probes, per_node)
    for rs in per_node.values():
        out += rs
    versions = {}
    for n, p in probes.items():
        if p is not None and p.driver_version:
            versions[n] = f"driver {p.driver_version}" + (f", CANN {p.cann_version}"
                                                          if p.cann_version else "")
    for n, p in probes.items():
        if p is not None and n not in versions:
            out.append(res(n, "driver.same", "warn", f"no driver version on {n} "
                           "(/usr/local/Ascend/driver/version.info)",
                           "install the Ascend driver, or check the path"))
    out += same_checks("driver.same", versions, "version", DRIVER_FIX, status="warn")
    return out


def _npu_ip_clashes(probes: Mapping[str, AscendProbe | None],
                    per_node: dict[str, list[CheckResult]]) -> None:
    """An NPU address used on two nodes breaks HCCL: fail hccn.ip on every node involved."""
    owners: dict[str, list[tuple[str, int]]] = {}
    for n, p in probes.items():
        for d, f in (p.per_npu.items() if p else ()):
            if f.ip:
                owners.setdefault(f.ip[0], []).append((n, d))
    for addr, who in owners.items():
        nodes = sorted({n for n, _ in who})
        if len(nodes) < 2:
            continue
        for n in nodes:
            rs = per_node.get(n, [])
            msg = f"NPU address {addr} is used on " + ", ".join(f"{m} NPU {d}" for m, d in who)
            i = next((i for i, r in enumerate(rs) if r.check == "hccn.ip"), None)
            reason = msg if i is None or rs[i].status == "pass" else f"{rs[i].reason}; {msg}"
            new = res(n, "hccn.ip", "fail", reason, "give every NPU of every node its own "
                      "address: `hccn_tool -i N -ip -s address <ip> netmask <mask>`")
            if i is None:
                rs.append(new)
            else:
                rs[i] = new


# -------------------------------------------------------------------------------- GPU


def gpu_checks(kind: str, specs: Mapping[str, Sequence[NodeSpec]], secs: Mapping[str, ProbeOutput | None],
               ) -> list[CheckResult]:
    out: list[CheckResult] = []
    drivers: dict[str, str] = {}
    parse = parse_nvidia_smi_csv if kind == "nvidia" else parse_rocm_smi_json
    tool = "nvidia-smi" if kind == "nvidia" else "rocm-smi"
    for n, sec in secs.items():
        gpus: list[Gpu]
        try:
            gpus = parse(sec.text if sec else "")
        except ParseError as exc:
            out.append(res(n, "gpu.count", "fail", f"{tool} on {n}: {exc.reason}",
                           f"run `{tool}` on {n}; install or load the driver"))
            continue
        out += [_from(n, f) for f in gpu_verdicts(gpus, need_devices(specs[n]))]
        if gpus and gpus[0].driver:
            drivers[n] = gpus[0].driver
    out += same_checks("driver.same", drivers, "driver", DRIVER_FIX, status="warn")
    return out
