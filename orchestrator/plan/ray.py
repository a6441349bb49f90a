"""Topology ray (seed 001: "Multi-node Deployment with Ray"): one vLLM instance whose
tensor x pipeline ranks are Ray actors spread over the nodes.

    node 0 container: ray start --head --block --port P --node-ip-address IP0 ...
    node i container: ray start --block --address IP0:P --node-ip-address IPi ...
    node 0 also carries the `vllm serve ... --distributed-executor-backend ray` argv (in its
    spec hash), exec'd in its container once every node joined (deploy/ray.py)

Ray and vLLM must agree on every node's IP: `--node-ip-address` is the node's cluster IP,
the same one the profile's NIC env gives VLLM_HOST_IP.
"""

from __future__ import annotations

from collections.abc import Mapping

from .. import flags as vflags
from ..capacity import check_capacity
from ..errors import TopologyError
from ..inventory import Inventory
from ..playbook import Playbook, Profile
from .common import api_warnings, check_node_count, merged_serve_flags, node_env, render_flags, resolve_nets
from .container import container_spec
from .model import Digests, Link, NodeNet, NodeSpec, Plan, Port

# Flags orch sets itself in this topology, besides common.DERIVED_FLAGS.
RAY_DERIVED = frozenset({"--distributed-executor-backend", "--pipeline-parallel-size", "-pp"})
# Runs in the head's container: vllm serve with its output in the container's log; when it
# exits, `ray stop` ends `ray start --block` (the container's PID 1), so the container stops.
SERVE_SCRIPT = ('"$@" >/proc/1/fd/1 2>/proc/1/fd/2; rc=$?; '
                'echo "orch: vllm serve exited with status $rc; stopping ray" >/proc/1/fd/2; '
                'ray stop --force >/dev/null 2>&1')


def serve_exec_argv(runtime: str, container: str, serve: list[str]) -> list[str]:
    """`<runtime> exec -d` of the head's vllm serve (SERVE_SCRIPT around it)."""
    return [runtime, "exec", "-d", container, "sh", "-c", SERVE_SCRIPT, "sh", *serve]


def plan(inv: Inventory, pb: Playbook, prof: Profile, nets: Mapping[str, NodeNet] | None,
         digests: Digests) -> Plan:
    assert pb.ray is not None
    o = inv.overrides
    nodes, resolved, unresolved = resolve_nets(inv, nets)
    n = len(nodes)
    check_node_count(pb, n)
    dp = o.data_parallel or pb.parallel.data
    if dp != 1 or o.data_parallel_local or pb.parallel.data_local:
        raise TopologyError("topology ray runs one vLLM instance: "
                            "data parallel belongs to topology dp")
    tp = o.tensor_parallel or pb.parallel.tensor
    pp = pb.parallel.pipeline
    world = tp * pp
    if prof.kind != "cpu":
        have = sum(nd.devices if nd.devices is not None else prof.devices for nd in nodes)
        if world > have:
            raise TopologyError(f"tensor {tp} x pipeline {pp} = {world} {prof.kind} devices, "
                                f"but the {n} nodes have {have} ({prof.name})")
    api_port = o.api_port or pb.ports.api
    if api_port == pb.ray.port:
        raise TopologyError(f"the API port and Ray's GCS port are both {api_port}")
    flags = merged_serve_flags(inv, pb)
    bad = sorted(f for f in flags if f in RAY_DERIVED)
    if bad:
        raise TopologyError(f"{', '.join(bad)}: set by orch in topology ray (parallel.pipeline)")
    served = inv.model.served_name or inv.model.path
    bind_host = o.host or pb.host
    serve = ["vllm", "serve", inv.model.path, "--host", bind_host, "--port", str(api_port),
             "--tensor-parallel-size", str(tp), "--pipeline-parallel-size", str(pp),
             "--distributed-executor-backend", "ray", "--served-model-name", served]
    if pb.parallel.expert:
        serve.append("--enable-expert-parallel")
    serve += render_flags(flags)
    vflags.check_flags(serve, pb.vllm_version, f"playbook {pb.name!r}")
    per_node = -(-world // n)
    warnings = api_warnings(bind_host, flags, inv)
    used = [max(0, min(per_node, world - i * per_node)) for i in range(n)]
    warnings += check_capacity(pb, prof, flags, used, 1)
    head_ip = resolved[0].ip
    gcs = pb.ray.port
    specs: list[NodeSpec] = []
    links: list[Link] = []
    for i, (node, net) in enumerate(zip(nodes, resolved)):
        head = i == 0
        env = node_env(inv, prof, node, net, {"RAY_USAGE_STATS_ENABLED": "0"}, pb.env)
        start = ["ray", "start", "--block", "--node-ip-address", net.ip, "--disable-usage-stats"]
        if head:
            start[2:2] = ["--head", "--port", str(gcs)]
        else:
            start[2:2] = ["--address", f"{head_ip}:{gcs}"]
            links += [Link(node.name, nodes[0].name, "API", api_port),
                      Link(node.name, nodes[0].name, "ray GCS", gcs)]
        start += pb.ray.start_args + (pb.ray.head_args if head else [])
        specs.append(container_spec(
            inv=inv, prof=prof, container=pb.container, node=node, net=net,
            role="ray-head" if head else "ray-worker", serve=serve if head else [], env=env,
            digests=digests, used_devices=used[i], publish=api_port,
            ranks=(0,) if head else (), api_port=api_port if head else None,
            listens=(Port("API", api_port), Port("ray GCS", gcs)) if head else (),
            command=start))
    warnings += vflags.env_warnings(specs[0].env, pb.vllm_version)
    return Plan(deployment=inv.deployment, playbook=pb.name, topology="ray", runtime=inv.runtime,
                image=inv.image, model=inv.model.path, served_name=served,
                api_host=nodes[0].host if nodes[0].name in unresolved else head_ip,
                api_port=api_port, nodes=specs, dp_size=1, links=tuple(links),
                unresolved=unresolved, warnings=warnings)
