"""Topology pd: prefill/decode disaggregation (seed 001, "Three Node A3 - PD
disaggregation").  The playbook models (PDGroup, PDPlaybook) live in playbook.py (a PD file
loads as a Playbook of topology pd).

    PD playbook (playbooks/pd/*.yaml) + the inventory's nodes in order
      -> prefill instances 0..P-1, then decode instances P..P+D-1, each on `nodes` nodes:
         the first node of an instance is its head (API server), the others run --headless
      -> kv_transfer_config per instance: kv_role kv_producer / kv_consumer, a unique
         engine_id (the instance's index), the role's kv_port, and
         kv_connector_extra_config.prefill/decode.{dp_size, tp_size} taken from the groups
      -> the proxy on one more node (else beside the first prefill instance): vllm-router
         in PD mode (`--vllm-pd-disaggregation --prefill URL ... --decode URL ...`, the heads'
         API URLs), or the playbook's proxy_command (the seed's
         load_balance_proxy_server_example.py: --prefiller-hosts/--prefiller-ports,
         --decoder-hosts/--decoder-ports)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from .. import flags as vflags
from ..errors import TopologyError
from ..inventory import Inventory
from ..playbook import PDGroup, PDPlaybook, Playbook, Profile
from .common import api_warnings, nic_env, node_env, render_flags, resolve_nets
from .container import container_spec
from .model import Digests, Link, NodeNet, NodeSpec, Plan, Port

PDRole = Literal["prefill", "decode"]
# vllm-router takes the worker's key from its own environment (OPENAI_API_KEY) and sends it
# to every instance: the container's VLLM_API_KEY (from stdin) becomes that, never an argv
WITH_KEY = ["sh", "-c", 'OPENAI_API_KEY="$VLLM_API_KEY" exec "$@"', "sh"]
ROLES: tuple[PDRole, PDRole] = ("prefill", "decode")


@dataclass(frozen=True)
class PDNode:
    name: str
    role: PDRole
    instance: int
    head: bool
    ip: str
    serve_argv: list[str]
    env: dict[str, str]
    path_prepend: dict[str, str]


@dataclass(frozen=True)
class PDPlan:
    nodes: list[PDNode]
    heads: dict[PDRole, list[tuple[str, int]]]  # each role's instance heads: (IP, API port)

    def proxy_argv(self, pb: PDPlaybook, metrics_port: int) -> list[str]:
        """The proxy's command: vllm-router in PD mode, or the playbook's proxy_command."""
        if pb.proxy == "vllm-router":
            argv = ["vllm-router", "--vllm-pd-disaggregation", "--host", pb.host, "--port",
                    str(pb.proxy_port), "--policy", "round_robin", "--prometheus-port",
                    str(metrics_port)]
            for role in ROLES:
                for ip, port in self.heads[role]:
                    argv += [f"--{role}", f"http://{ip}:{port}"]
            return argv
        argv = [*pb.proxy_command, "--host", pb.host, "--port", str(pb.proxy_port)]
        for role in ROLES:
            name = "--prefiller" if role == "prefill" else "--decoder"
            argv += [f"{name}-hosts", *(h for h, _ in self.heads[role])]
            argv += [f"{name}-ports", *(str(p) for _, p in self.heads[role])]
        return argv

    def node(self, name: str) -> PDNode:
        return next(n for n in self.nodes if n.name == name)


def kv_transfer_config(pb: PDPlaybook, role: PDRole, engine_id: int) -> dict[str, object]:
    g = pb.prefill if role == "prefill" else pb.decode
    return {
        "kv_connector": pb.connector,
        "kv_role": "kv_producer" if role == "prefill" else "kv_consumer",
        "kv_port": str(g.kv_port),
        "engine_id": str(engine_id),
        "kv_connector_extra_config": {
            **pb.connector_extra,
            "prefill": {"dp_size": pb.prefill.data, "tp_size": pb.prefill.tensor},
            "decode": {"dp_size": pb.decode.data, "tp_size": pb.decode.tensor},
        },
    }


def plan_pd(
    pb: PDPlaybook, prof: Profile, model: str, served: str, nodes: list[tuple[str, NodeNet]]
) -> PDPlan:
    """`nodes` in order: the prefill instances' nodes first, then the decode instances'.
    The profile gives the NIC/IP env templates and its own env."""
    want = pb.nodes_needed
    if len(nodes) != want:
        raise TopologyError(
            f"PD playbook {pb.name!r} needs {want} nodes ({pb.prefill.instances} prefill x "
            f"{pb.prefill.nodes} + {pb.decode.instances} decode x {pb.decode.nodes}), got {len(nodes)}"
        )
    out: list[PDNode] = []
    heads: dict[PDRole, list[tuple[str, int]]] = {"prefill": [], "decode": []}
    it = iter(nodes)
    engine = 0
    for role in ROLES:
        g: PDGroup = getattr(pb, role)
        for _ in range(g.instances):
            members = [next(it) for _ in range(g.nodes)]
            head_ip = members[0][1].ip
            heads[role].append((head_ip, g.api_port))
            kv = kv_transfer_config(pb, role, engine)
            for i, (name, net) in enumerate(members):
                serve = ["vllm", "serve", model, "--host", pb.host, "--port", str(g.api_port)]
                if i:
                    serve.append("--headless")
                serve += ["--tensor-parallel-size", str(g.tensor)]
                if g.data > 1:  # vLLM refuses --data-parallel-start-rank with DP 1 (external LB)
                    serve += ["--data-parallel-size", str(g.data),
                              "--data-parallel-size-local", str(g.data_local),
                              "--data-parallel-start-rank", str(i * g.data_local),
                              "--data-parallel-address", head_ip,
                              "--data-parallel-rpc-port", str(g.rpc_port)]
                serve += ["--served-model-name", served]
                if pb.expert:
                    serve.append("--enable-expert-parallel")
                serve += render_flags({**pb.serve, **g.serve, "--kv-transfer-config": kv})
                vflags.check_flags(serve, pb.vllm_version, f"PD playbook {pb.name!r}")
                env = dict(prof.env)
                env.update(nic_env(prof, net))
                env.update(pb.env)
                env.update(g.env)
                out.append(PDNode(name, role, engine, i == 0, net.ip, serve, env,
                                  dict(pb.path_prepend)))
            engine += 1
    return PDPlan(out, heads)


def plan(inv: Inventory, pb: Playbook, prof: Profile, nets: Mapping[str, NodeNet] | None,
         digests: Digests) -> Plan:
    pdp = pb.pd
    assert pdp is not None
    nodes, resolved, unresolved = resolve_nets(inv, nets)
    need = pdp.nodes_needed
    if len(nodes) not in (need, need + 1):
        raise TopologyError(
            f"PD playbook {pb.name!r} needs {need} nodes ({pdp.prefill.instances} prefill x "
            f"{pdp.prefill.nodes} + {pdp.decode.instances} decode x {pdp.decode.nodes}), plus "
            f"optionally one for the proxy; the inventory lists {len(nodes)}")
    if inv.overrides.args or inv.overrides.tensor_parallel or inv.overrides.data_parallel:
        raise TopologyError("PD playbooks take no overrides.args/tensor/data parallel: "
                            "edit the playbook's prefill/decode groups")
    served = inv.model.served_name or inv.model.path
    pdplan = plan_pd(pdp, prof, inv.model.path, served,
                     [(n.name, net) for n, net in zip(nodes[:need], resolved[:need])])
    run_extra = [a for d in pdp.shared_dirs for a in ("-v", f"{d}:{d}")]
    specs: list[NodeSpec] = []
    links: list[Link] = []
    p_node, p_net = (nodes[need], resolved[need]) if len(nodes) > need else (nodes[0], resolved[0])
    heads: dict[int, str] = {}
    for pos, (pn, node, net) in enumerate(zip(pdplan.nodes, nodes, resolved)):
        g = pdp.prefill if pn.role == "prefill" else pdp.decode
        env = node_env(inv, prof, node, net, pn.env)
        cmd = None
        if pn.path_prepend:  # the seed's `export LD_LIBRARY_PATH=<dir>:$LD_LIBRARY_PATH`
            script = "; ".join(f'export {k}="{v}${{{k}:+:${k}}}"'
                               for k, v in pn.path_prepend.items())
            cmd = ["sh", "-c", script + '; exec "$@"', "sh", *pn.serve_argv]
        first = next(i for i, n in enumerate(pdplan.nodes) if n.instance == pn.instance)
        member = pos - first
        listens: tuple[Port, ...] = ()
        if pn.head:
            heads[pn.instance] = node.name
            listens = (Port(f"{pn.role} API", g.api_port),)
            if g.data > 1:
                listens += (Port(f"{pn.role} rpc", g.rpc_port),)
            links.append(Link(p_node.name, node.name, f"{pn.role} API", g.api_port))
        elif g.data > 1:
            links.append(Link(node.name, heads[pn.instance], f"{pn.role} rpc", g.rpc_port))
        specs.append(container_spec(
            inv=inv, prof=prof, container=pb.container, node=node, net=net, role=pn.role,
            serve=pn.serve_argv, env=env, digests=digests,
            used_devices=g.tensor * g.data_local, publish=g.api_port,
            ranks=tuple(range(member * g.data_local, (member + 1) * g.data_local)),
            api_port=g.api_port if pn.head else None, instance=pn.instance, listens=listens,
            command=cmd, extra_run=run_extra))
    metrics = pdp.proxy_port + 1000 if pdp.proxy_port + 1000 <= 65535 else pdp.proxy_port - 1000
    command = pdplan.proxy_argv(pdp, metrics)
    listens = (Port("proxy", pdp.proxy_port),)
    if pdp.proxy == "vllm-router":
        listens += (Port("proxy metrics", metrics),)
        if inv.api_key is not None:
            command = WITH_KEY + command
    specs.append(container_spec(
        inv=inv, prof=prof, container=pb.container, node=p_node, net=p_net, role="proxy",
        serve=[], env={}, digests=digests, used_devices=0, publish=pdp.proxy_port,
        api_port=pdp.proxy_port, listens=listens, command=command, image=pdp.proxy_image))
    links = [lk for lk in links if lk.src != lk.dst]
    warnings = api_warnings(pdp.host, pdp.serve, inv)
    if pdp.proxy == "vllm-router" and inv.api_key is not None:
        warnings.append("vllm-router asks clients for no key: whoever reaches the proxy's port "
                        f"{pdp.proxy_port} is served (the instances' key is sent for them); keep that "
                        "port inside the cluster network, or use proxy: command")
    return Plan(deployment=inv.deployment, playbook=pb.name, topology="pd", runtime=inv.runtime,
                image=inv.image, model=inv.model.path, served_name=served,
                api_host=p_node.host if p_node.name in unresolved else p_net.ip,
                api_port=pdp.proxy_port, nodes=specs, dp_size=pdp.decode.data, proxy=pdp.proxy,
                links=tuple(links), setup_dirs=tuple(pdp.shared_dirs), unresolved=unresolved,
                warnings=warnings)
