"""Parsers and pure checks for the hardware tools the preflight runs on each node.

Everything here is pure: text in, frozen dataclasses out, `ParseError` on text that no
known version of the tool prints. Modules:

    ascend   npu-smi info, hccn_tool -i N -<op> -g, /etc/hccn.conf, driver version.info,
             CANN ascend_toolkit_install.info; `ascend_verdicts`, `tls_consistency`;
             `ascend_probe_script` (one SSH round trip per node) + `parse_ascend_probe`
    gpu      nvidia-smi --query-gpu csv, rocm-smi --json; `gpu_verdicts`
    fakes    fake npu-smi / hccn_tool shell scripts for lab hosts

Recorded real outputs live in `recorded/*.txt` (see `recorded_output`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Literal

from orchestrator.errors import ParseError

__all__ = [
    "Finding",
    "ParseError",
    "ProbeOutput",
    "Status",
    "recorded_output",
    "split_probe_output",
    "tool_missing",
]

Status = Literal["pass", "warn", "fail"]


@dataclass(frozen=True)
class Finding:
    """One check's verdict for one node."""

    check: str  # dotted name, e.g. "hccn.link"
    status: Status
    reason: str  # names the devices, e.g. "NPU 3 link DOWN"
    fix: str = ""  # what an operator runs or does; empty when status is "pass"


def tool_missing(text: str) -> bool:
    """True when the text is a shell's 'command not found' (or nothing at all)."""
    t = text.strip()
    return not t or bool(re.search(r"(not found|No such file or directory)\s*$", t, re.M))


def recorded_output(name: str) -> str:
    """The verbatim tool output of `recorded/<name>.txt`, without its `# ` header."""
    raw = resources.files(__name__).joinpath("recorded", f"{name}.txt").read_text("utf-8")
    if raw.startswith("#"):
        head, sep, body = raw.partition("\n# ---\n")
        if sep:
            return body
    return raw


@dataclass(frozen=True)
class ProbeOutput:
    """One section of a probe script's output."""

    text: str  # stdout+stderr of the command
    rc: int | None  # its exit status; None when the end marker is missing (cut off)


_BEGIN = re.compile(r"^==== (?P<key>.+?) ====$")
_END = re.compile(r"^==== rc (?P<rc>-?\d+) ====$")


def split_probe_output(text: str) -> dict[tuple[str, ...], ProbeOutput]:
    """Split `==== a b c ====` ... `==== rc N ====` sections into {("a","b","c"): output}."""
    out: dict[tuple[str, ...], ProbeOutput] = {}
    key: tuple[str, ...] | None = None
    lines: list[str] = []
    for line in text.splitlines():
        if not line.startswith("==== "):  # most lines: no marker to match
            if key is not None:
                lines.append(line)
            continue
        end = _END.match(line)
        if end and key is not None:
            out[key] = ProbeOutput(_join(lines), int(end.group("rc")))
            key, lines = None, []
            continue
        begin = _BEGIN.match(line)
        if begin and not end:
            if key is not None:  # previous section was cut off
                out[key] = ProbeOutput(_join(lines), None)
            key, lines = tuple(begin.group("key").split()), []
            continue
        if key is not None:
            lines.append(line)
    if key is not None:
        out[key] = ProbeOutput(_join(lines), None)
    return out


def _join(lines: list[str]) -> str:
    return "\n".join(lines) + ("\n" if lines else "")
