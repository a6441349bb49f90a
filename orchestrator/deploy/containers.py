"""This deployment's containers on the nodes, seen against the plan: does every planned
container run its planned spec, and the tails, removal and logs of a group's containers."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ..cluster import Session
from ..log import log
from ..plan import LABEL_ROLE, NodeSpec
from ..remote import Host
from ..runtime import Container

Found = Mapping[str, "list[Container] | BaseException"]


@dataclass(frozen=True)
class GroupState:
    ok: bool  # every planned container runs its planned spec, nothing else is there
    reason: str  # "ok", or the first thing that differs, for the operator
    existing: int  # containers of the group found (any state): replacing them saves tails


def router_select(c: Container) -> bool:
    return c.labels.get(LABEL_ROLE) == "router"


def group_select(c: Container) -> bool:
    """The containers of the group that owns a node (everything but a fleet's router)."""
    return not router_select(c)


def spec_match(specs: list[NodeSpec], found: Found,
               select: Callable[[Container], bool] = group_select) -> GroupState:
    """Whether the containers found (per node; `select` picks the ones of this group) are
    exactly the planned specs, each running."""
    by_node: dict[str, list[NodeSpec]] = {}
    for spec in specs:
        by_node.setdefault(spec.name, []).append(spec)
    existing = 0
    first: str | None = None
    for node, planned in by_node.items():
        got = found.get(node)
        if isinstance(got, BaseException):
            return GroupState(False, f"{node}: {got}", existing)
        cs = [c for c in got or [] if select(c)]
        existing += len(cs)
        if first is not None:
            continue
        hashes = {s.spec_hash for s in planned}
        for spec in planned:
            mine = [c for c in cs if c.spec_hash == spec.spec_hash]
            if any(c.running for c in mine):
                continue
            if mine:
                first = f"{spec.label}: container {mine[0].name} is {mine[0].status}"
            elif others := [c for c in cs if c.spec_hash not in hashes and c.running]:
                first = (f"{spec.label}: runs spec {others[0].spec_hash}, inventory wants "
                         f"{spec.spec_hash} (drift)")
            elif others := [c for c in cs if c.spec_hash not in hashes]:
                first = f"{spec.label}: container {others[0].name} is {others[0].status}"
            else:
                first = f"{spec.label}: no container"
            break
        else:
            if len(cs) > len(planned):
                first = f"{node}: {len(cs)} containers of this deployment, {len(planned)} planned"
    return GroupState(first is None, first or "ok", existing)


async def look(s: Session, names: list[str] | None = None) -> dict[str, list[Container] | BaseException]:
    """This deployment's containers on every (named) node, in one pass."""
    return await s.each(s.containers, names)


async def collect_tails(s: Session, names: list[str],
                        select: Callable[[Container], bool] = group_select,
                        lines: int = 200) -> dict[str, str]:
    """The last log lines of every selected container of this deployment on the nodes."""

    async def one(h: Host) -> str:
        texts = [f"=== {c.name} ({c.status})\n" + await s.log_tail(h, c.id, lines)
                 for c in await s.containers(h) if select(c)]
        return "\n".join(texts)

    return {k: v for k, v in (await s.each(one, names)).items() if isinstance(v, str) and v}


async def remove(s: Session, names: list[str] | None = None,
                 select: Callable[[Container], bool] | None = None) -> dict[str, list[str]]:
    """Remove this deployment's (selected) containers on the nodes; names removed per node."""

    async def one(h: Host) -> list[str]:
        return await s.remove(h, select)

    out: dict[str, list[str]] = {}
    for name, r in (await s.each(one, names)).items():
        if isinstance(r, BaseException):
            log.error("remove failed", node=name, error=str(r))
        else:
            out[name] = r
    return out
