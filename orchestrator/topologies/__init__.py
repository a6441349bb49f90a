"""Topologies beyond the seeds' MP data parallel (plan.py + deploy.py):

    ray  (ray.py)   `ray start --head` on the first node, `ray start --address` on the others,
                    all nodes joined (`ray status`), then one `vllm serve
                    --distributed-executor-backend ray` in the head's container
    pd   (pd.py)    prefill instance(s), decode instance(s) (each its own DP/TP, headless
                    nodes inside an instance), then orch's proxy (orchestrator/pdproxy.py);
                    ready = proxy /healthcheck, /health of every instance head, a completion
                    through the proxy

Both plan into the same `Plan` of per-node container specs (labels, spec hashes), so status,
down, logs and drift detection work as for data parallel.  Helpers shared by both are here.
"""

from __future__ import annotations

from ..inventory import Inventory, Node
from ..plan import NodeNet, Plan, ordered_nodes
from ..playbook import Playbook, Profile


def resolve_nets(inv: Inventory, nets: dict[str, NodeNet] | None
                 ) -> tuple[list[Node], list[NodeNet], list[str]]:
    """Ordered nodes (head first), each one's NIC/IP (inventory, else detected, else a
    placeholder) and the names of the nodes whose NIC/IP is not known yet."""
    nets = nets or {}
    nodes = ordered_nodes(inv)
    resolved, unresolved = [], []
    for node in nodes:
        got = nets.get(node.name)
        nic = node.nic or (got.nic if got else None)
        ip = node.ip or (got.ip if got else None)
        if nic is None or ip is None:
            unresolved.append(node.name)
        resolved.append(NodeNet(nic or f"<nic of {node.name}>", ip or f"<ip of {node.name}>"))
    return nodes, resolved, unresolved


def node_env(inv: Inventory, prof: Profile, node: Node, net: NodeNet,
             *layers: dict[str, str]) -> dict[str, str]:
    """Env of one node, as plan.build_plan layers it: profile, the given layers (playbook,
    role), the NIC/IP templates, the inventory's overrides, the node's own."""
    env: dict[str, str] = dict(prof.env)
    for layer in layers:
        env.update(layer)
    env.update({k: t.format(nic=net.nic, ip=net.ip) for k, t in prof.nic_env.items()})
    env.update(inv.overrides.env)
    env.update(node.env)
    return env


def api_warnings(bind_host: str, flags: dict[str, object], inv: Inventory) -> list[str]:
    if bind_host == "0.0.0.0" and "--api-key" not in flags and inv.api_key is None:
        return ["the API listens on 0.0.0.0 without --api-key: anyone on the network can use it"]
    return []


def build_topology_plan(inv: Inventory, pb: Playbook, prof: Profile,
                        nets: dict[str, NodeNet] | None, secret_digest: str | None) -> Plan:
    if pb.topology == "ray":
        from .ray import plan_ray

        return plan_ray(inv, pb, prof, nets, secret_digest)
    from .pd import plan_pd_deployment

    return plan_pd_deployment(inv, pb, prof, nets, secret_digest)


async def up_topology(s, **kw):  # type: ignore[no-untyped-def]
    """`orch up` of a ray or pd playbook (deploy.up dispatches here with its keywords:
    timeout_s, keep_on_failure, force, checks, skip_checks)."""
    if s.dep.playbook.topology == "ray":
        from .ray import up_ray

        return await up_ray(s, **kw)
    from .pd import up_pd

    return await up_pd(s, **kw)
