"""The preflight's cross-node round is bounded (preflight/peers.py): O(N) probes for N nodes,
and still every link the plan uses is tested and every node is probed by several others."""

from __future__ import annotations

from collections import Counter

from orchestrator.plan import Link
from orchestrator.preflight.peers import RING, incoming, probe_peers


def dp_links(nodes: list[str]) -> list[Link]:
    return [Link(n, nodes[0], lbl, p) for n in nodes[1:] for lbl, p in (("API", 8000), ("rpc", 13345))]


def test_probes_grow_linearly_and_cover_every_link() -> None:
    for n in (2, 4, 16, 64):
        nodes = [f"h{i}" for i in range(n)]
        links = dp_links(nodes)
        peers = probe_peers(nodes, {x: "h0" for x in nodes}, links)
        total = sum(len(v) for v in peers.values())
        assert total <= n * (1 + RING), (n, total)  # not n * (n - 1)
        for lk in links:
            assert lk.dst in peers[lk.src]
        pinged = Counter(p for v in peers.values() for p in v)
        assert all(pinged[x] >= min(RING, n - 1) for x in nodes)  # a dead node is told apart
        assert all(x not in v for x, v in peers.items())
    assert sum(len(v) for v in probe_peers([f"h{i}" for i in range(64)], {}, []).values()) == 64 * RING


def test_listeners_count_their_sources() -> None:
    nodes = ["h0", "h1", "h2"]
    got = incoming(dp_links(nodes) + [Link("h1", "h0", "API", 8000)])
    assert got == {"h0": {8000: ("API", ["h1", "h2"]), 13345: ("rpc", ["h1", "h2"])}}
