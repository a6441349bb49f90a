"""Topologies single and dp (the seeds' multiprocessing data parallel): the head (rank 0,
`--data-parallel-address` = its IP, the API), then headless nodes with
`--headless --data-parallel-start-rank R`, every node with its own NIC/IP env."""

from __future__ import annotations

from collections.abc import Mapping

from .. import flags as vflags
from ..capacity import check_capacity
from ..errors import TopologyError
from ..inventory import Inventory
from ..playbook import Playbook, Profile
from .common import (
    api_warnings,
    check_node_count,
    check_ports,
    merged_serve_flags,
    node_env,
    ordered_nodes,
    render_flags,
    resolve_nets,
)
from .container import container_spec
from .model import Digests, Link, NodeNet, NodeSpec, Plan, Port, Role


def local_sizes(inv: Inventory, pb: Playbook) -> tuple[int, int, list[int]]:
    """(tensor size, DP size, DP size local per ordered node), validated."""
    o = inv.overrides
    tp = o.tensor_parallel or pb.parallel.tensor
    dp = o.data_parallel or pb.parallel.data
    nodes = ordered_nodes(inv)
    n = len(nodes)
    if pb.topology == "single" and n != 1:
        raise TopologyError(
            f"playbook {pb.name!r} is a single-node recipe but the inventory lists {n} nodes"
        )
    check_node_count(pb, n)
    default_local = o.data_parallel_local or pb.parallel.data_local
    sizes = []
    for node in nodes:
        local = node.data_parallel_local or default_local
        if local is None:
            if dp % n:
                raise TopologyError(
                    f"data parallel size {dp} does not divide over {n} nodes; "
                    "set data_parallel_local per node"
                )
            local = dp // n
        sizes.append(local)
    if sum(sizes) != dp:
        detail = ", ".join(f"{nd.name}={s}" for nd, s in zip(nodes, sizes))
        raise TopologyError(
            f"the local data parallel sizes add up to {sum(sizes)} ({detail}) "
            f"but the data parallel size is {dp}"
        )
    return tp, dp, sizes


def check_devices(inv: Inventory, prof: Profile, tp: int, sizes: list[int]) -> None:
    if prof.kind == "cpu":
        return
    for node, local in zip(ordered_nodes(inv), sizes):
        have = node.devices if node.devices is not None else prof.devices
        need = tp * local
        if need > have:
            raise TopologyError(
                f"node {node.name}: tensor parallel {tp} x local data parallel {local} = {need} "
                f"{prof.kind} devices, but the node has {have} ({prof.name})"
            )


def plan(inv: Inventory, pb: Playbook, prof: Profile, nets: Mapping[str, NodeNet] | None,
         digests: Digests) -> Plan:
    tp, dp, sizes = local_sizes(inv, pb)
    check_devices(inv, prof, tp, sizes)
    api_port = inv.overrides.api_port or pb.ports.api
    rpc_port = inv.overrides.rpc_port or pb.ports.rpc
    check_ports(api_port, rpc_port)
    flags = merged_serve_flags(inv, pb)
    capacity_warnings = check_capacity(pb, prof, flags, [tp * s for s in sizes], dp)
    served = inv.model.served_name or inv.model.path
    nodes, resolved, unresolved = resolve_nets(inv, nets)
    head_ip = resolved[0].ip
    bind_host = inv.overrides.host or pb.host
    specs: list[NodeSpec] = []
    links: list[Link] = []
    rank = 0
    for node, local, net in zip(nodes, sizes, resolved):
        role: Role = "single" if pb.topology == "single" else ("head" if rank == 0 else "headless")
        serve = ["vllm", "serve", inv.model.path, "--host", bind_host, "--port", str(api_port)]
        if role == "headless":
            serve.append("--headless")
        if role == "single":
            serve += ["--tensor-parallel-size", str(tp), "--data-parallel-size", str(dp)]
            if pb.api_server_count:
                serve += ["--api-server-count", str(pb.api_server_count)]
        else:
            serve += ["--data-parallel-size", str(dp)]
            if role == "head" and pb.api_server_count:
                serve += ["--api-server-count", str(pb.api_server_count)]
            serve += ["--data-parallel-size-local", str(local)]
            if role == "headless":
                serve += ["--data-parallel-start-rank", str(rank)]
            serve += ["--data-parallel-address", head_ip, "--data-parallel-rpc-port", str(rpc_port)]
            serve += ["--tensor-parallel-size", str(tp)]
        serve += ["--served-model-name", served]
        if pb.parallel.expert:
            serve.append("--enable-expert-parallel")
        serve += render_flags(flags)
        vflags.check_flags(serve, pb.vllm_version, f"playbook {pb.name!r}")
        env = node_env(inv, prof, node, net, pb.env)
        listens: tuple[Port, ...] = ()
        if role == "single":
            listens = (Port("API", api_port),)
        elif role == "head":
            listens = (Port("API", api_port), Port("rpc", rpc_port))
        else:  # every rank dials the head's RPC port; the operator's checks test its API too
            links += [Link(node.name, nodes[0].name, "API", api_port),
                      Link(node.name, nodes[0].name, "rpc", rpc_port)]
        specs.append(container_spec(
            inv=inv, prof=prof, container=pb.container, node=node, net=net, role=role,
            serve=serve, env=env, digests=digests, used_devices=tp * local,
            publish=api_port, ranks=tuple(range(rank, rank + local)),
            api_port=None if role == "headless" else api_port, listens=listens))
        rank += local
    warnings = api_warnings(bind_host, flags, inv) + capacity_warnings
    warnings += vflags.env_warnings(specs[0].env, pb.vllm_version)
    return Plan(
        deployment=inv.deployment, playbook=pb.name, topology=pb.topology, runtime=inv.runtime,
        image=inv.image, model=inv.model.path, served_name=served,
        api_host=nodes[0].host if nodes[0].name in unresolved else head_ip, api_port=api_port,
        nodes=specs, dp_size=dp, links=tuple(links), unresolved=unresolved, warnings=warnings)
