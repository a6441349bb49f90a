"""Version-aware `vllm serve` flags: what a flag is called, and whether it exists, in the vLLM
version a playbook states (`vllm_version`).

Pure.  The planner asks three things:

* `rope_flags(rope, version)`: the flags that carry a structured `rope_scaling` (yarn, ...)
  for that version - `--rope-scaling`/`--rope-theta` before 0.11.1, `--hf-overrides` with the
  key `rope_scaling` on 0.11.1-0.11.x and `rope_parameters` from 0.12.0.
* `check_flags(argv, version, where)`: a flag that version does not know (added later or
  removed earlier) is a `PlaybookError` before anything is contacted.
* `env_warnings(env, version)`: environment variables that version ignores (a warning, since
  an unknown variable does no harm but is a sign the recipe is older than the image).

Sources, checked against vLLM's history:
  --rope-scaling, --rope-theta       removed by vllm-project/vllm#28006 (Nov 2025) -> 0.11.1
  rope_parameters (Transformers v5)  0.12.0 (seed 001: ">= v0.12.0 use rope_parameters")
  --nnodes/--node-rank/--master-*    0.11.1 (multi-node MP without DP flags)
  --disable-log-requests             removed by vllm-project/vllm#29402 -> 0.12.0
  --task                             replaced by --runner/--convert (vllm#21470), removed; vLLM
                                     0.13.0 rejects it (gpustack/gpustack#3991)
  VLLM_USE_V1                        V0 engine gone, variable no longer read from 0.11.1
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping

from .errors import PlaybookError

Version = tuple[int, int, int]

# flag -> (first version that has it or None, first version without it or None, hint)
FLAG_LIFETIMES: dict[str, tuple[str | None, str | None, str]] = {
    "--rope-scaling": (None, "0.11.1", "use the playbook's rope_scaling field (rendered as --hf-overrides)"),
    "--rope-theta": (None, "0.11.1", "put rope_theta into the playbook's rope_scaling field"),
    "--nnodes": ("0.11.1", None, "use the data parallel topology (head + headless ranks)"),
    "--node-rank": ("0.11.1", None, "use the data parallel topology (head + headless ranks)"),
    "--master-addr": ("0.11.1", None, "use the data parallel topology (head + headless ranks)"),
    "--master-port": ("0.11.1", None, "use the data parallel topology (head + headless ranks)"),
    "--disable-log-requests": (None, "0.12.0", "request logging is off by default; drop the flag"),
    "--task": (None, "0.13.0", "use --runner / --convert"),
}

# env var -> (first version that reads it or None, first version that ignores it or None)
ENV_LIFETIMES: dict[str, tuple[str | None, str | None]] = {
    "VLLM_USE_V1": (None, "0.11.1"),
}


def parse_version(v: str) -> Version:
    """'0.11.0rc2' -> (0, 11, 0).  A pre-release counts as its release (vllm-ascend's
    v0.11.0rc2 images carry vLLM 0.11.0)."""
    m = re.match(r"^v?(\d+)(?:\.(\d+))?(?:\.(\d+))?", v.strip())
    if not m:
        raise PlaybookError(f"vllm_version {v!r} is not a version like 0.11.0")
    return (int(m.group(1)), int(m.group(2) or 0), int(m.group(3) or 0))


def canonical(flag: str) -> str:
    """vLLM's parser treats '_' and '-' in long option names alike; '--a_b=1' -> '--a-b'."""
    name = flag.split("=", 1)[0]
    return "--" + name[2:].replace("_", "-") if name.startswith("--") else name


def alive(lifetime: tuple[str | None, str | None], version: Version) -> bool:
    since, until = lifetime[0], lifetime[1]
    if since is not None and version < parse_version(since):
        return False
    return not (until is not None and version >= parse_version(until))


def check_flags(argv: Iterable[str], version_text: str, where: str) -> None:
    """Raise PlaybookError naming every flag of `argv` that vLLM `version_text` lacks."""
    version = parse_version(version_text)
    problems = []
    for tok in argv:
        if not tok.startswith("--"):
            continue
        flag = canonical(tok)
        life = FLAG_LIFETIMES.get(flag)
        if life is None or alive(life[:2], version):
            continue
        since, until, hint = life
        why = f"removed in vLLM {until}" if until and version >= parse_version(until) else f"added in vLLM {since}"
        problems.append(f"{flag} ({why}; {hint})")
    if problems:
        raise PlaybookError(
            f"{where}: vllm_version {version_text} does not accept " + "; ".join(problems)
        )


def env_warnings(env: Mapping[str, str], version_text: str) -> list[str]:
    version = parse_version(version_text)
    out = []
    for key in env:
        life = ENV_LIFETIMES.get(key)
        if life is not None and not alive(life, version):
            since, until = life
            when = f"from vLLM {until} on" if until else f"before vLLM {since}"
            out.append(f"{key} is not read {when} (vllm_version {version_text}): it has no effect")
    return out


def _json(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def rope_flags(rope: Mapping[str, object], version_text: str) -> dict[str, str]:
    """The flags that set RoPE scaling (`rope_type`, `factor`, ..., optional `rope_theta`)
    in vLLM `version_text`, in the form that version takes."""
    version = parse_version(version_text)
    if "rope_type" not in rope:
        raise PlaybookError("rope_scaling needs rope_type (e.g. yarn)")
    scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
    theta = rope.get("rope_theta")
    if version < (0, 11, 1):
        out = {"--rope-scaling": _json(scaling)}
        if theta is not None:
            out["--rope-theta"] = str(theta)
        return out
    if version < (0, 12, 0):
        overrides: dict[str, object] = {"rope_scaling": scaling}
        if theta is not None:
            overrides["rope_theta"] = theta
        return {"--hf-overrides": _json(overrides)}
    return {"--hf-overrides": _json({"rope_parameters": dict(rope)})}
