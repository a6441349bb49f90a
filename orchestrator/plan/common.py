"""What every topology's planner shares: node order, NIC/IP resolution, env layering, serve
flags, spec hashes."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

from .. import flags as vflags
from ..errors import TopologyError
from ..inventory import Inventory, Node
from ..playbook import FlagValue, Playbook, Profile
from .model import NodeNet

# Flags orch derives from the topology; a playbook or override may not set them directly.
DERIVED_FLAGS = frozenset(
    {
        "--host", "--port", "--headless", "--data-parallel-size", "--data-parallel-size-local",
        "--data-parallel-start-rank", "--data-parallel-address", "--data-parallel-rpc-port",
        "--api-server-count", "--served-model-name", "--tensor-parallel-size",
        "--enable-expert-parallel", "-dp", "-dpl", "-dpr", "-dpa", "-dpp", "-tp", "-asc",
    }
)


def ordered_nodes(inv: Inventory) -> list[Node]:
    """Head first (rank 0), then the others in inventory order."""
    head = inv.head_node
    return [head] + [n for n in inv.nodes if n.name != head.name]


def resolve_nets(inv: Inventory, nets: Mapping[str, NodeNet] | None
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


def nic_env(prof: Profile, net: NodeNet) -> dict[str, str]:
    """The profile's NIC/IP templates filled with one node's NIC and IP."""
    return {k: t.format(nic=net.nic, ip=net.ip) for k, t in prof.nic_env.items()}


def node_env(inv: Inventory, prof: Profile, node: Node, net: NodeNet,
             *layers: Mapping[str, str]) -> dict[str, str]:
    """Env of one node: the profile's, the given layers (playbook, role), the profile's NIC/IP
    templates (they win over the layers), the inventory's overrides, the node's own."""
    env: dict[str, str] = dict(prof.env)
    for layer in layers:
        env.update(layer)
    env.update(nic_env(prof, net))
    env.update(inv.overrides.env)
    env.update(node.env)
    return env


def api_warnings(bind_host: str, flags: Mapping[str, object], inv: Inventory) -> list[str]:
    if bind_host == "0.0.0.0" and "--api-key" not in flags and inv.api_key is None:
        return ["the API listens on 0.0.0.0 without --api-key: anyone on the network can use it"]
    return []


def check_ports(api: int, rpc: int) -> None:
    if api == rpc:
        raise TopologyError(f"the API port and the data parallel RPC port are both {api}")


def spec_hash(payload: object) -> str:
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def render_flags(flags: Mapping[str, FlagValue]) -> list[str]:
    out: list[str] = []
    for flag, value in flags.items():
        if value is False:
            continue
        out.append(flag)
        if value is None or value is True:
            continue
        if isinstance(value, (dict, list)):
            out.append(json.dumps(value, separators=(",", ":")))
        else:
            out.append(str(value))
    return out


def merged_serve_flags(inv: Inventory, pb: Playbook) -> dict[str, FlagValue]:
    """The playbook's flags, the inventory's overrides on top, then the version-specific
    rendering of structured fields (rope_scaling)."""
    flags: dict[str, FlagValue] = dict(pb.serve)
    for flag, value in inv.overrides.args.items():
        flags[flag] = value
    bad = sorted(f for f in flags if f.split("=", 1)[0].replace("_", "-") in DERIVED_FLAGS)
    if bad:
        raise TopologyError(
            f"{', '.join(bad)}: derived by orch from the topology; set them with the "
            "playbook's parallel/ports or the inventory's overrides instead"
        )
    if pb.rope_scaling:
        for flag, value in vflags.rope_flags(pb.rope_scaling, pb.vllm_version).items():
            have = flags.get(flag)
            if flag == "--hf-overrides" and isinstance(have, (dict, str)):
                base = have if isinstance(have, dict) else json.loads(have)
                flags[flag] = {**base, **json.loads(value)}
            elif flag in flags and have is not False:
                raise TopologyError(
                    f"{flag} is set both by the playbook's rope_scaling and as a flag; keep one"
                )
            else:
                flags[flag] = value
    return flags


def check_node_count(pb: Playbook, n: int) -> None:
    if n < pb.min_nodes or (pb.max_nodes is not None and n > pb.max_nodes):
        want = f"{pb.min_nodes}" + (f"-{pb.max_nodes}" if pb.max_nodes != pb.min_nodes else "")
        if pb.max_nodes is None:
            want = f"{pb.min_nodes}+"
        raise TopologyError(f"playbook {pb.name!r} needs {want} node(s), the inventory lists {n}")
