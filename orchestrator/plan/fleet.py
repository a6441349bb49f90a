"""A fleet: the inventory's nodes in replicas (each one complete group of the playbook's
topology, planned by its own planner on its own nodes) behind vllm-router.

    replicas: N        the nodes split in order into N equal groups
    groups: [[..]]     the groups named; a node in none may only run the router
    router:            where vllm-router runs (default: the first node), its port and policy

The router's container runs vllm-router with no worker: orch adds each replica's API URL
(`/add_worker`) once the replica is proven, and takes it out (`/remove_worker`) before
replacing it (deploy/fleet.py).  So the router's spec does not change when a replica does.
A plain inventory (none of those fields) is a fleet of one group and no router, planned
exactly as before fleets existed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from ..errors import TopologyError
from ..inventory import Inventory, Node
from ..playbook import Playbook, Profile
from .common import api_warnings, render_flags, resolve_nets
from .container import container_spec
from .model import Digests, Fleet, NodeNet, Plan, Port
from .planners import PLANNERS

ROUTER_COMMAND = "vllm-router"
# Flags orch sets on the router itself; the inventory's router.args may not.
ROUTER_DERIVED = frozenset({"--host", "--port", "--policy", "--worker-urls", "--prometheus-port",
                            "--health-check-interval-secs", "--health-failure-threshold",
                            "--vllm-pd-disaggregation", "--prefill", "--decode"})


def router_metrics_port(port: int) -> int:
    """vllm-router serves Prometheus metrics on a port of its own (default 29000 on every
    router, so two on one node would collide): the API port + 1000, wrapped."""
    return port + 1000 if port + 1000 <= 65535 else port - 1000


def router_argv(inv: Inventory) -> list[str]:
    r = inv.router
    assert r is not None
    bad = sorted(f for f in r.args if f in ROUTER_DERIVED)
    if bad:
        raise TopologyError(f"router.args {', '.join(bad)}: set by orch (router.port, router.policy, "
                            "...)")
    return [ROUTER_COMMAND, "--host", r.host, "--port", str(r.port), "--policy", r.policy,
            "--health-check-interval-secs", str(r.health_check_interval_s),
            "--health-failure-threshold", str(r.health_failure_threshold),
            "--prometheus-port", str(router_metrics_port(r.port)), *render_flags(r.args)]


def group_inventory(inv: Inventory, nodes: list[Node]) -> Inventory:
    return inv.model_copy(update={"nodes": nodes, "head": None, "replicas": None, "groups": None,
                                  "router": None})


def plan_fleet(inv: Inventory, pb: Playbook, prof: Profile, nets: Mapping[str, NodeNet] | None,
               digests: Digests) -> Fleet:
    if not inv.fleet:
        return Fleet(inv.deployment, [PLANNERS[pb.topology](inv, pb, prof, nets, digests)])
    groups: list[Plan] = []
    for i, nodes in enumerate(inv.replica_nodes()):
        sub = group_inventory(inv, nodes)
        try:
            g = PLANNERS[pb.topology](sub, pb, prof, nets, digests)
        except TopologyError as exc:
            names = ", ".join(n.name for n in nodes)
            raise TopologyError(f"replica {i} ({names}): {exc}") from exc
        groups.append(dataclasses.replace(g, replica=i))
    r = inv.router
    if r is None:
        raise TopologyError("a fleet (replicas: or groups:) needs a router: section (vllm-router "
                            "in front of the replicas); `router: {}` takes the defaults")
    router_node = next(n for n in inv.nodes if n.name == (r.node or inv.nodes[0].name))
    _, resolved, r_unresolved = resolve_nets(inv.model_copy(update={"nodes": [router_node], "head": None}),
                                             nets)
    net = resolved[0]
    taken = {p.number for spec in [s for g in groups for s in g.nodes] if spec.name == router_node.name
             for p in spec.listens}
    if r.port in taken or router_metrics_port(r.port) in taken:
        raise TopologyError(f"router.port {r.port} (or its metrics port {router_metrics_port(r.port)}) "
                            f"is also used by a replica on {router_node.name}")
    router = container_spec(
        inv=inv, prof=prof, container=pb.container, node=router_node, net=net, role="router",
        serve=[], env={}, digests=digests, used_devices=0, publish=r.port,
        api_port=r.port, listens=(Port("router", r.port),), command=router_argv(inv),
        image=r.image, run_opts=["--net=host"])
    warnings = api_warnings(r.host, {}, inv)
    if len(groups) == 1:
        warnings.append("one replica behind the router: replacing it leaves nothing serving")
    return Fleet(inv.deployment, groups, router, warnings, r_unresolved)


__all__ = ["plan_fleet", "router_argv", "router_metrics_port"]
