"""Prefill/decode disaggregation, the planning side (seed 001, "Three Node A3 - PD
disaggregation"): which nodes form which prefill and decode instances, every node's
`vllm serve` argv and env with its `--kv-transfer-config`, and the proxy's argv.

Pure, like plan.py.  The playbook models (PDGroup, PDPlaybook) live in playbook.py (a PD file
loads as a Playbook of topology pd); the launch is orchestrator/topologies/pd.py.

    PD playbook (playbooks/pd/*.yaml) + ordered nodes (name, NIC, IP)
      -> prefill instances 0..P-1, then decode instances P..P+D-1, each on `nodes` nodes:
         the first node of an instance is its head (API server), the others run --headless
      -> kv_transfer_config per instance: kv_role kv_producer / kv_consumer, a unique
         engine_id (the instance's index), the role's kv_port, and
         kv_connector_extra_config.prefill/decode.{dp_size, tp_size} taken from the groups
      -> proxy: --prefiller-hosts/--prefiller-ports = the prefill heads' IP and API port,
         --decoder-hosts/--decoder-ports = the decode heads'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from . import flags as vflags
from .errors import TopologyError
from .plan import NodeNet, render_flags
from .playbook import PDGroup, PDPlaybook, Profile

PDRole = Literal["prefill", "decode"]
__all__ = ["PDGroup", "PDPlaybook", "PDNode", "PDPlan", "kv_transfer_config", "plan_pd"]


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
    proxy_argv: list[str]

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
    The profile gives the NIC/IP env templates and its own env, as for plan.build_plan."""
    want = pb.prefill.instances * pb.prefill.nodes + pb.decode.instances * pb.decode.nodes
    if len(nodes) != want:
        raise TopologyError(
            f"PD playbook {pb.name!r} needs {want} nodes ({pb.prefill.instances} prefill x "
            f"{pb.prefill.nodes} + {pb.decode.instances} decode x {pb.decode.nodes}), got {len(nodes)}"
        )
    out: list[PDNode] = []
    heads: dict[PDRole, list[tuple[str, int]]] = {"prefill": [], "decode": []}
    it = iter(nodes)
    engine = 0
    for role in ("prefill", "decode"):
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
                env.update({k: t.format(nic=net.nic, ip=net.ip) for k, t in prof.nic_env.items()})
                env.update(pb.env)
                env.update(g.env)
                out.append(PDNode(name, role, engine, i == 0, net.ip, serve, env, dict(pb.path_prepend)))
            engine += 1
    proxy = [*pb.proxy_command, "--port", str(pb.proxy_port)]
    for role, flag in (("prefill", "--prefiller"), ("decode", "--decoder")):
        proxy += [f"{flag}-hosts", *(h for h, _ in heads[role])]
        proxy += [f"{flag}-ports", *(str(p) for _, p in heads[role])]
    return PDPlan(out, proxy)
