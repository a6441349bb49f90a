"""Whole-group health: every data-parallel rank must serve, not just the head's /v1/models.

A dead or hung headless rank leaves the head answering 200 while requests routed to that rank
hang.  vLLM's /metrics carries per-engine counters (label `engine` = DP rank), so orch sends a
few tiny real requests at once and checks that every engine's finished-request counter moved.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field

from .probe import Api, ProbeError

_LINE = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

# per-engine figures shown by `orch status` (older vLLM: gpu_cache_usage_perc)
SHOWN = {
    "vllm:num_requests_running": "running",
    "vllm:num_requests_waiting": "waiting",
    "vllm:kv_cache_usage_perc": "kv_cache",
    "vllm:gpu_cache_usage_perc": "kv_cache",
    "vllm:generation_tokens_total": "gen_tokens",
    "vllm:prompt_tokens_total": "prompt_tokens",
    "vllm:request_success_total": "finished",
}


def parse_metrics(text: str) -> dict[int, dict[str, float]]:
    """Prometheus text -> {engine: {short name: value}} for the figures in SHOWN (summed over
    other labels, e.g. finished_reason)."""
    out: dict[int, dict[str, float]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if not m or m.group("name") not in SHOWN:
            continue
        labels = dict(_LABEL.findall(m.group("labels") or ""))
        if "engine" not in labels:
            continue
        try:
            engine, value = int(labels["engine"]), float(m.group("value"))
        except ValueError:
            continue
        short = SHOWN[m.group("name")]
        row = out.setdefault(engine, {})
        row[short] = row.get(short, 0.0) + value
    return out


@dataclass
class GroupHealth:
    ok: bool
    reason: str
    served: dict[int, float] = field(default_factory=dict)  # engine -> requests finished by the probe


async def group_probe(api: Api, served: str, dp_size: int, rounds: int = 2, timeout: float = 30) -> GroupHealth:
    """Send 2 x dp_size tiny requests at once (up to `rounds` times) until every engine has
    finished at least one; a request that hangs or fails makes the group unhealthy."""
    try:
        before = parse_metrics(await api.metrics())
    except ProbeError as exc:
        return GroupHealth(False, f"cannot read /metrics: {exc.reason}")
    missing = set(range(dp_size)) - set(before)
    if missing:
        return GroupHealth(False, f"/metrics has no engine {sorted(missing)}: those ranks never joined")
    delta: dict[int, float] = {}
    for _ in range(rounds):
        reqs = [api.complete(served, prompt="ping", max_tokens=1, timeout=timeout) for _ in range(2 * dp_size)]
        results = await asyncio.gather(*reqs, return_exceptions=True)
        bad = [r for r in results if isinstance(r, BaseException)]
        if bad:
            first = bad[0]
            why = first.reason if isinstance(first, ProbeError) else repr(first)
            return GroupHealth(False, f"{len(bad)} of {len(reqs)} probe requests failed ({why}): "
                                      "a rank is dead or hung")
        after = parse_metrics(await api.metrics())
        delta = {e: after.get(e, {}).get("finished", 0) - before[e].get("finished", 0) for e in range(dp_size)}
        if all(v > 0 for v in delta.values()):
            return GroupHealth(True, f"all {dp_size} ranks served", delta)
    idle = [e for e, v in delta.items() if v <= 0]
    return GroupHealth(False, f"rank(s) {idle} served none of the probe requests", delta)
