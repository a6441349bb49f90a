"""The one rank watcher: every planned container must be running, found by its spec hash on
its node; a stopped one is a failure named by node (and role), with its last log lines."""

from __future__ import annotations

from ..cluster import Session
from ..errors import RankFailure
from ..plan import NodeSpec
from ..remote import Host


def _by_node(specs: list[NodeSpec]) -> dict[str, list[NodeSpec]]:
    out: dict[str, list[NodeSpec]] = {}
    for spec in specs:
        out.setdefault(spec.name, []).append(spec)
    return out


async def watch(s: Session, specs: list[NodeSpec]) -> list[RankFailure]:
    """Look at every spec's container once; a failure for each one not running."""
    by_node = _by_node(specs)

    async def one(h: Host) -> list[RankFailure]:
        cs = await s.containers(h)
        out = []
        for spec in by_node[h.name]:
            mine = [c for c in cs if c.spec_hash == spec.spec_hash]
            if mine and mine[0].running:
                continue
            st = f"{mine[0].status} (exit code {mine[0].exit_code})" if mine else "gone"
            tail = await s.log_tail(h, mine[0].id) if mine else ""
            out.append(RankFailure(spec.label, st, tail))
        return out

    failures: list[RankFailure] = []
    for name, r in (await s.each(one, list(by_node))).items():
        if isinstance(r, BaseException):
            failures.append(RankFailure(name, f"unreachable: {r}", ""))
        else:
            failures += r
    return failures


async def last_lines(s: Session, specs: list[NodeSpec]) -> dict[str, str]:
    """The last log line of every spec's container (progress while waiting)."""
    by_node = _by_node(specs)

    async def one(h: Host) -> dict[str, str]:
        out = {}
        for spec in by_node[h.name]:
            text = await s.log_tail(h, spec.container, 3)
            lines = [ln for ln in text.splitlines() if ln.strip()]
            out[spec.label] = lines[-1][-140:] if lines else ""
        return out

    merged: dict[str, str] = {}
    for name, r in (await s.each(one, list(by_node))).items():
        merged.update(r if isinstance(r, dict) else {name: "?"})
    return merged
