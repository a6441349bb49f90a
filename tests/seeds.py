"""Read the seed documents (../shared/seeds) the way an operator reads them: the shell blocks,
their `export`s and the `vllm serve` / `docker run` command lines, with the tutorial's
placeholders ($local_ip, $nic_name, $node0_ip) filled in."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

SEEDS = Path(__file__).resolve().parents[2] / "shared" / "seeds"
if not SEEDS.is_dir():  # CI: shared/ beside the clone
    SEEDS = Path(__file__).resolve().parents[1].parent / "shared" / "seeds"


def seed_text(prefix: str) -> str:
    (path,) = SEEDS.glob(f"{prefix}_*.txt")
    return path.read_text()


def blocks(text: str) -> list[str]:
    """Fenced code blocks (```shell / ```bash / ```{code-block} bash)."""
    return re.findall(r"```[^\n]*\n(.*?)```", text, flags=re.S)


def _join(block: str) -> str:
    return re.sub(r"\\\s*\n", " ", block)


def exports(block: str, values: dict[str, str]) -> dict[str, str]:
    env = {}
    for line in _join(block).splitlines():
        m = re.match(r"\s*export\s+([A-Za-z_][A-Za-z0-9_]*)=(.*)$", line)
        if m:
            val = shlex.split(m.group(2))[0] if m.group(2).strip() else ""
            for k, v in values.items():
                val = val.replace(f"${k}", v)
            env[m.group(1)] = val
    return env


def command(block: str, start: list[str], values: dict[str, str]) -> list[str]:
    """The tokens of the first command line that begins with `start` (placeholders filled)."""
    text = _join(block)
    for k, v in sorted(values.items(), key=lambda kv: -len(kv[0])):
        text = text.replace(f"${k}", v)
    for line in text.splitlines():
        toks = shlex.split(line, comments=False)
        if toks[: len(start)] == start:
            return toks
    raise LookupError(f"no {' '.join(start)} line in block")


def flag_pairs(tokens: list[str]) -> list[tuple[str, str | None]]:
    """['--a', '1', '--b', '--c', 'x'] -> [('--a','1'), ('--b',None), ('--c','x')], sorted."""
    out: list[tuple[str, str | None]] = []
    i = 0
    while i < len(tokens):
        t = tokens[i]
        if t.startswith("-") and i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
            out.append((t, tokens[i + 1]))
            i += 2
        else:
            out.append((t, None))
            i += 1
    return sorted(out, key=lambda p: (p[0], p[1] or ""))
