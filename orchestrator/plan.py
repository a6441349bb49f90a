"""Planning: inventory + playbook + profile (+ each node's NIC/IP) -> per-node launch specs.

Pure: no I/O.  Every container name, label and argv element is computed here, so `orch plan`
shows exactly what `orch up` will run, and status/down find containers by the same labels.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Literal

from . import flags as vflags
from .capacity import check_capacity
from .errors import TopologyError
from .inventory import Inventory, Node
from .playbook import FlagValue, Playbook, Profile

LABEL_DEPLOYMENT = "orch.deployment"
LABEL_NODE = "orch.node"
LABEL_ROLE = "orch.role"
LABEL_SPEC = "orch.spec"

# Flags orch derives from the topology; a playbook or override may not set them directly.
DERIVED_FLAGS = frozenset(
    {
        "--host", "--port", "--headless", "--data-parallel-size", "--data-parallel-size-local",
        "--data-parallel-start-rank", "--data-parallel-address", "--data-parallel-rpc-port",
        "--api-server-count", "--served-model-name", "--tensor-parallel-size",
        "--enable-expert-parallel", "-dp", "-dpl", "-dpr", "-dpa", "-dpp", "-tp", "-asc",
    }
)

# single/dp: head, headless, single; ray: ray-head, ray-worker; pd: prefill, decode, proxy
Role = Literal["head", "headless", "single", "ray-head", "ray-worker", "prefill", "decode", "proxy"]


@dataclass(frozen=True)
class NodeNet:
    """The cluster NIC and IP of one node (from the inventory or detected on the host)."""

    nic: str
    ip: str


@dataclass(frozen=True)
class NodeSpec:
    name: str
    role: Role
    host: str
    rank_start: int
    dp_local: int
    nic: str
    ip: str
    container: str
    labels: dict[str, str]
    env: dict[str, str]
    serve_argv: list[str]
    argv: list[str]
    spec_hash: str
    secret_env: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "role": self.role,
            "host": self.host,
            "nic": self.nic,
            "ip": self.ip,
            "data_parallel_start_rank": self.rank_start,
            "data_parallel_size_local": self.dp_local,
            "container": self.container,
            "labels": self.labels,
            "spec_hash": self.spec_hash,
            "argv": self.argv,
            "env": {**self.env, **{k: "***" for k in self.secret_env}},
        }


@dataclass(frozen=True)
class Plan:
    deployment: str
    playbook: str
    runtime: str
    image: str
    model: str
    served_name: str
    api_host: str
    api_port: int
    nodes: list[NodeSpec]
    unresolved: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def head(self) -> NodeSpec:
        return self.nodes[0]

    @property
    def dp_size(self) -> int:
        return sum(n.dp_local for n in self.nodes)

    @property
    def api_url(self) -> str:
        return f"http://{self.api_host}:{self.api_port}"

    def node(self, name: str) -> NodeSpec:
        return next(n for n in self.nodes if n.name == name)

    def to_json(self) -> dict[str, object]:
        return {
            "deployment": self.deployment,
            "playbook": self.playbook,
            "runtime": self.runtime,
            "image": self.image,
            "model": self.model,
            "served_model_name": self.served_name,
            "api_url": self.api_url,
            "unresolved": self.unresolved,
            "warnings": self.warnings,
            "nodes": [n.to_json() for n in self.nodes],
        }


def ordered_nodes(inv: Inventory) -> list[Node]:
    """Head first (rank 0), then the others in inventory order."""
    head = inv.head_node
    return [head] + [n for n in inv.nodes if n.name != head.name]


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
    if n < pb.min_nodes or (pb.max_nodes is not None and n > pb.max_nodes):
        want = f"{pb.min_nodes}" + (f"-{pb.max_nodes}" if pb.max_nodes != pb.min_nodes else "")
        raise TopologyError(f"playbook {pb.name!r} needs {want} node(s), the inventory lists {n}")
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


def check_devices(inv: Inventory, pb: Playbook, prof: Profile, tp: int, sizes: list[int]) -> None:
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


def check_ports(api: int, rpc: int) -> None:
    if api == rpc:
        raise TopologyError(f"the API port and the data parallel RPC port are both {api}")


def spec_hash(payload: object) -> str:
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def render_flags(flags: dict[str, FlagValue]) -> list[str]:
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


def build_plan(
    inv: Inventory,
    pb: Playbook,
    prof: Profile,
    nets: dict[str, NodeNet] | None = None,
    secret_digest: str | None = None,
) -> Plan:
    """Render every node's launch spec. `nets` holds detected NIC/IP per node name;
    `secret_digest` (from secrets.Secrets.digest) folds secret values into the spec hash.
    Topologies ray and pd are planned in orchestrator/topologies/."""
    if pb.topology in ("ray", "pd"):
        from .topologies import build_topology_plan

        return build_topology_plan(inv, pb, prof, nets, secret_digest)
    nets = nets or {}
    tp, dp, sizes = local_sizes(inv, pb)
    check_devices(inv, pb, prof, tp, sizes)
    api_port = inv.overrides.api_port or pb.ports.api
    rpc_port = inv.overrides.rpc_port or pb.ports.rpc
    check_ports(api_port, rpc_port)
    flags = merged_serve_flags(inv, pb)
    capacity_warnings = check_capacity(pb, prof, flags, [tp * s for s in sizes], dp)
    served = inv.model.served_name or inv.model.path
    nodes = ordered_nodes(inv)
    unresolved: list[str] = []
    resolved: list[NodeNet] = []
    for node in nodes:
        got = nets.get(node.name)
        nic = node.nic or (got.nic if got else None)
        ip = node.ip or (got.ip if got else None)
        if nic is None or ip is None:
            unresolved.append(node.name)
        resolved.append(NodeNet(nic or f"<nic of {node.name}>", ip or f"<ip of {node.name}>"))
    head_ip = resolved[0].ip
    bind_host = inv.overrides.host or pb.host
    specs = []
    rank = 0
    for node, local, net in zip(nodes, sizes, resolved):
        if pb.topology == "single":
            role: Role = "single"
        else:
            role = "head" if rank == 0 else "headless"
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

        env: dict[str, str] = {}
        env.update(prof.env)
        env.update(pb.env)
        for key, tmpl in prof.nic_env.items():
            env[key] = tmpl.format(nic=net.nic, ip=net.ip)
        env.update(inv.overrides.env)
        env.update(node.env)

        specs.append(
            _node_spec(inv, pb, prof, node, role, rank, local, net, serve, env, secret_digest,
                       tp * local, api_port)
        )
        rank += local
    head = nodes[0]
    warnings = []
    if bind_host == "0.0.0.0" and "--api-key" not in flags and inv.api_key is None:
        warnings.append("the API listens on 0.0.0.0 without --api-key: anyone on the network can use it")
    warnings += capacity_warnings
    warnings += vflags.env_warnings(specs[0].env, pb.vllm_version)
    return Plan(
        deployment=inv.deployment,
        playbook=pb.name,
        runtime=inv.runtime,
        image=inv.image,
        model=inv.model.path,
        served_name=served,
        api_host=head.host if head.name in unresolved else resolved[0].ip,
        api_port=api_port,
        nodes=specs,
        unresolved=unresolved,
        warnings=warnings,
    )


def _node_spec(
    inv: Inventory,
    pb: Playbook,
    prof: Profile,
    node: Node,
    role: Role,
    rank: int,
    local: int,
    net: NodeNet,
    serve: list[str],
    env: dict[str, str],
    secret_digest: str | None,
    used_devices: int,
    api_port: int,
    command: list[str] | None = None,
    extra_run: list[str] | None = None,
) -> NodeSpec:
    """The container spec of one node.  `command` (default: `serve`) is what the container
    runs, when that is not `vllm serve` itself (ray start, the PD proxy); `extra_run` adds
    run options.  Both count in the spec hash only when given."""
    c = pb.container
    run_opts: list[str] = []
    if c.net_host:
        run_opts.append("--net=host")
    if c.privileged:
        run_opts.append("--privileged=true")
    if c.shm_size:
        run_opts.append(f"--shm-size={c.shm_size}")
    if c.ipc_host:
        run_opts.append("--ipc=host")
    if not c.net_host:  # bridge network: publish the API port, or nothing reaches it
        run_opts += ["-p", f"{api_port}:{api_port}"]
    ndev = node.devices if node.devices is not None else prof.devices
    if c.devices == "used":
        ndev = min(ndev, used_devices)
    for i in range(ndev):
        for tmpl in prof.device_paths:
            run_opts += ["--device", tmpl.format(i=i)]
    for dev in prof.shared_devices:
        run_opts += ["--device", dev]
    for m in prof.mounts:
        run_opts += ["-v", m]
    for m in c.mounts:
        run_opts += ["-v", m]
    if inv.model.path.startswith("/"):
        run_opts += ["-v", f"{inv.model.path}:{inv.model.path}:ro"]
    for m in inv.overrides.mounts:
        run_opts += ["-v", m]
    run_opts += prof.run_flags + c.extra + (extra_run or [])
    secret_env = tuple(inv.secrets) + (("VLLM_API_KEY",) if inv.api_key else ())
    env_opts: list[str] = ["--env-file", "/dev/stdin"] if secret_env else []
    for key, value in env.items():
        env_opts += ["-e", f"{key}={value}"]
    payload: dict[str, object] = {"image": inv.image, "run": run_opts, "env": env, "serve": serve,
                                  "runtime": inv.runtime}
    if secret_env:
        payload["secrets"] = [list(secret_env), secret_digest]
    if command is not None:
        payload["command"] = command
    h = spec_hash(payload)
    name = f"orch-{inv.deployment}-{node.name}-{h[:8]}"
    labels = {
        LABEL_DEPLOYMENT: inv.deployment,
        LABEL_NODE: node.name,
        LABEL_ROLE: role,
        LABEL_SPEC: h,
    }
    argv = [inv.runtime, "run", "-d", "--name", name]
    for k, v in labels.items():
        argv += ["--label", f"{k}={v}"]
    argv += run_opts + env_opts + [inv.image] + (serve if command is None else command)
    return NodeSpec(
        name=node.name,
        role=role,
        host=node.host,
        rank_start=rank,
        dp_local=local,
        nic=net.nic,
        ip=net.ip,
        container=name,
        labels=labels,
        env=env,
        serve_argv=serve,
        argv=argv,
        spec_hash=h,
        secret_env=secret_env,
    )
