"""Which cross-node probes the preflight runs: bounded, so that `orch check` on N nodes costs
O(N), not O(N^2).  Pure.

Every node probes (ping, and hccn_tool ping on Ascend):
  - the head of its group (rank 0, the node every DP rank dials),
  - the next RING nodes after it in the fleet's node order (wrapping around), so that every
    node is pinged by at least RING others and a dead node is told from a bad pinger,
  - every node it links to in the plan (Plan.links: DP ranks -> the head's RPC port, PD
    proxy -> instance heads, headless PD nodes -> their instance head, router -> replicas).
TCP connects follow the plan's links only: every link the deployment will use is tested.  A
peer this node connects to is not pinged as well: the connect probes it (connected or refused:
the peer answered; a connect that times out is ports.reachable's failure, and the peer's own
ring pingers tell whether it is down).  So a DP rank pings only its ring neighbours.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from ..plan import Fleet, Link
from .cross import cross_args

RING = 2


def probe_peers(nodes: Sequence[str], heads: Mapping[str, str], links: Sequence[Link],
                ring: int = RING) -> dict[str, list[str]]:
    """{node: [peers it pings]} in a stable order, without itself or duplicates."""
    n = len(nodes)
    out: dict[str, list[str]] = {}
    for i, node in enumerate(nodes):
        want: list[str] = []
        if node in heads:
            want.append(heads[node])
        want += [nodes[(i + k) % n] for k in range(1, min(ring, n - 1) + 1)]
        want += [lk.dst for lk in links if lk.src == node]
        out[node] = [p for p in dict.fromkeys(want) if p != node]
    return out


def incoming(links: Sequence[Link]) -> dict[str, dict[int, tuple[str, list[str]]]]:
    """{dst node: {port: (label, [src nodes])}}: the test listeners each node opens."""
    out: dict[str, dict[int, tuple[str, list[str]]]] = {}
    for lk in links:
        label, srcs = out.setdefault(lk.dst, {}).setdefault(lk.port, (lk.label, []))
        if lk.src not in srcs:
            srcs.append(lk.src)
    return out


@dataclass(frozen=True)
class CrossPlan:
    """What each node runs in the cross round: its ops (cross.cross_args), how many test
    listeners it opens, the nodes it connects to, and the links tested."""

    ops: dict[str, list[str]]
    listening: dict[str, int]
    dials: dict[str, set[str]]
    tested: list[Link]


def fleet_links(fleet: Fleet) -> list[Link]:
    """Every link the fleet uses: the groups' own, and the router's to each replica."""
    links = [lk for g in fleet.groups for lk in g.links]
    if fleet.router is not None:
        links += [Link(fleet.router.name, g.entry.name, "API", g.api_port) for g in fleet.groups
                  if g.entry.name != fleet.router.name]
    return links


def fleet_peers(fleet: Fleet, names: Sequence[str]) -> dict[str, list[str]]:
    heads = {n: g.head.name for g in fleet.groups for n in g.node_names()}
    return probe_peers(names, heads, fleet_links(fleet))


def cross_plan(fleet: Fleet, names: Sequence[str], present: Collection[str],
               ips: Mapping[str, str], *, ports: bool, ping: bool,
               busy: Mapping[str, set[int]] | None = None, own: Mapping[str, set[int]] | None = None,
               hccn: Mapping[str, Mapping[int, Sequence[str]]] | None = None) -> CrossPlan:
    """The cross round over the `present` nodes (their IPs in `ips`): a port `busy` on its
    node is not listened on, and is connected to only when this deployment holds it (`own`).
    Without busy/own (before the gather: nothing known taken) every planned port is."""
    busy, own, hccn = busy or {}, own or {}, hccn or {}
    peers = fleet_peers(fleet, names)
    tested = [lk for lk in fleet_links(fleet) if lk.src in present and lk.dst in present
              and lk.dst in ips]
    listeners = incoming(tested)
    ops: dict[str, list[str]] = {}
    listening: dict[str, int] = {}
    dials: dict[str, set[str]] = {}
    for n in (x for x in names if x in present):
        listen = ([(p, len(srcs)) for p, (_, srcs) in listeners.get(n, {}).items()
                   if p not in busy.get(n, set())] if ports else [])
        dial = ([lk for lk in tested if lk.src == n and (
                    lk.port not in busy.get(lk.dst, set()) or lk.port in own.get(lk.dst, set()))]
                if ports else [])
        connect = list(dict.fromkeys((ips[lk.dst], lk.port) for lk in dial))
        dialed = {ip for ip, _ in connect}
        pinged = [ips[p] for p in peers.get(n, []) if p in ips and ips[p] not in dialed] if ping else []
        a = cross_args(pinged, connect, listen, hccn.get(n))
        if a:
            ops[n] = a
            if listen:
                listening[n] = len(listen)
            dials[n] = {lk.dst for lk in dial if lk.dst != n}
    return CrossPlan(ops, listening, dials, tested)
