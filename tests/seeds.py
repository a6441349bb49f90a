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


# --- helpers for the seeds without code fences (001, 002) and for flag-level comparison ---

def section(text: str, start: str, end: str, nth: int = 0) -> str:
    """The text after the `nth` occurrence of `start` up to the next `end`."""
    pos = -1
    for _ in range(nth + 1):
        pos = text.index(start, pos + 1)
    begin = pos + len(start)
    stop = text.find(end, begin)
    return text[begin:] if stop < 0 else text[begin:stop]


def logical_lines(block: str) -> list[str]:
    """Lines as a shell reads them: backslash-newline joined, newlines inside quotes kept."""
    out, cur, quote, i = [], "", None, 0
    while i < len(block):
        c = block[i]
        if quote is None and c == "\\" and block[i + 1 : i + 2] == "\n":
            cur += " "
            i += 2
            continue
        if quote is None and c == "\n":
            out.append(cur)
            cur = ""
        else:
            if c in "'\"" and quote in (None, c):
                quote = None if quote == c else c
            cur += c
        i += 1
    out.append(cur)
    return out


def command_env(block: str, start: list[str], values: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """(inline NAME=value prefix, tokens) of the first logical line whose command, after any
    NAME=value assignments, begins with `start`; placeholders filled, trailing '\\' dropped.
    Code fence lines (```) end a command, as they end the shell block."""
    block = re.sub(r"^\s*```.*$", "", block, flags=re.M)
    for line in logical_lines(block):
        for k, v in sorted(values.items(), key=lambda kv: -len(kv[0])):
            line = line.replace(f"${k}", v)
        try:
            toks = shlex.split(line, comments=False)
        except ValueError:
            continue
        env: dict[str, str] = {}
        while toks and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", toks[0]):
            key, _, val = toks.pop(0).partition("=")
            env[key] = val
        if toks[: len(start)] == start:
            return env, [t for t in toks if t != "\\"]
    raise LookupError(f"no {' '.join(start)} line in block")


def split_eq(tokens: list[str]) -> list[str]:
    """'--device=/dev/kfd' -> '--device', '/dev/kfd' (docker and vLLM take both forms)."""
    out: list[str] = []
    for t in tokens:
        if t.startswith("--") and "=" in t:
            out.extend(t.split("=", 1))
        else:
            out.append(t)
    return out
