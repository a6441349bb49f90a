"""Which cross-node probes the preflight runs: bounded, so that `orch check` on N nodes costs
O(N), not O(N^2).  Pure.

Every node probes (ping, and hccn_tool ping on Ascend):
  - the head of its group (rank 0, the node every DP rank dials),
  - the next RING nodes after it in the fleet's node order (wrapping around), so that every
    node is pinged by at least RING others and a dead node is told from a bad pinger,
  - every node it links to in the plan (Plan.links: DP ranks -> the head's RPC port, PD
    proxy -> instance heads, headless PD nodes -> their instance head, router -> replicas).
TCP connects follow the plan's links only: every link the deployment will use is tested.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..plan import Link

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
