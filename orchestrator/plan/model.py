"""What a plan is made of: per-node container specs, the plan of one serving group, and the
fleet of groups behind a router.  Pure data; built by the topology planners of this package.

    Fleet                    what `orch up` deploys for one inventory
      groups: [Plan, ...]    one per replica (a plain inventory has exactly one)
      router: NodeSpec|None  vllm-router in front of the groups (fleets only)
    Plan                     one serving group of the playbook's topology
      nodes: [NodeSpec]      its containers, head (the API) first
      links: [Link]          which node connects to which port of which node
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

LABEL_DEPLOYMENT = "orch.deployment"
LABEL_NODE = "orch.node"
LABEL_ROLE = "orch.role"
LABEL_SPEC = "orch.spec"

Topology = Literal["single", "dp", "ray", "pd"]
# single/dp: head, headless, single; ray: ray-head, ray-worker; pd: prefill, decode, proxy;
# fleets: router
Role = Literal["head", "headless", "single", "ray-head", "ray-worker", "prefill", "decode",
               "proxy", "router"]
RANK_ROLES: frozenset[str] = frozenset({"head", "headless", "single", "ray-head", "ray-worker"})


@dataclass(frozen=True)
class Digests:
    """Values the spec hash folds in without showing them: the secrets' digest
    (secrets.Secrets.digest: a rotated token redeploys) and, when the inventory asks for it
    (model.digest_in_spec), the model directory's manifest digest (changed weights redeploy)."""

    secrets: str | None = None
    model: str | None = None


@dataclass(frozen=True)
class NodeNet:
    """The cluster NIC and IP of one node (from the inventory or detected on the host)."""

    nic: str
    ip: str


@dataclass(frozen=True)
class Port:
    """A port a container binds on its node."""

    label: str  # what it is for the operator: API, rpc, ray GCS, proxy, router
    number: int


@dataclass(frozen=True)
class Link:
    """`src` connects to `port` of `dst` (by dst's cluster IP) once the group runs."""

    src: str
    dst: str
    label: str
    port: int


@dataclass(frozen=True)
class NodeSpec:
    """One container of the plan, on one node."""

    name: str  # the inventory's node name
    role: Role
    host: str  # what orch SSHes to
    nic: str
    ip: str  # the node's cluster IP
    container: str  # orch-<deployment>-<node>-<spec hash>
    labels: dict[str, str]
    env: dict[str, str]
    serve_argv: list[str]  # the `vllm serve` it runs (or, ray head, execs later); [] if none
    argv: list[str]  # the whole `<runtime> run ...`
    spec_hash: str
    ranks: tuple[int, ...] = ()  # DP ranks (engine numbers) it runs, within its API group
    api_port: int | None = None  # the HTTP API it serves; None: headless, ray worker
    instance: int | None = None  # pd: the prefill/decode instance it belongs to
    listens: tuple[Port, ...] = ()  # ports it binds on the node
    secret_env: tuple[str, ...] = ()  # env names whose values come on stdin

    @property
    def label(self) -> str:
        """How the operator is told which container: the node, plus the role where a node's
        role is not implied by the topology's rank layout (pd, router)."""
        return self.name if self.role in RANK_ROLES else f"{self.name} ({self.role})"

    @property
    def api_url(self) -> str | None:
        return None if self.api_port is None else f"http://{self.ip}:{self.api_port}"

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "role": self.role,
            "host": self.host,
            "nic": self.nic,
            "ip": self.ip,
            "data_parallel_start_rank": self.ranks[0] if self.ranks else 0,
            "data_parallel_size_local": len(self.ranks),
            "container": self.container,
            "labels": self.labels,
            "spec_hash": self.spec_hash,
            "argv": self.argv,
            "env": {**self.env, **{k: "***" for k in self.secret_env}},
        }


@dataclass(frozen=True)
class Plan:
    """One serving group: every container of it, and how they find each other."""

    deployment: str
    playbook: str
    topology: Topology
    runtime: str
    image: str
    model: str
    served_name: str
    api_host: str  # where the group's API answers (the entry container's node)
    api_port: int
    nodes: list[NodeSpec]
    dp_size: int = 1  # engines behind the API: every one must serve (health.group_probe)
    links: tuple[Link, ...] = ()
    setup_dirs: tuple[str, ...] = ()  # created on every node before launching
    unresolved: list[str] = field(default_factory=list)  # nodes whose NIC/IP is a placeholder
    warnings: list[str] = field(default_factory=list)
    replica: int | None = None  # its index in a fleet; None: a plain inventory
    proxy: str | None = None  # pd: what the proxy is ("vllm-router" or "command")

    @property
    def head(self) -> NodeSpec:
        """The first container (rank 0 / the Ray head / the first prefill node)."""
        return self.nodes[0]

    @property
    def entry(self) -> NodeSpec:
        """The container whose API is the group's API (the head, or the PD proxy)."""
        return next((n for n in self.nodes if n.role == "proxy"), self.nodes[0])

    @property
    def api_url(self) -> str:
        return f"http://{self.api_host}:{self.api_port}"

    @property
    def name(self) -> str:
        """How the operator is told which group: the deployment, or replica N of it."""
        return self.deployment if self.replica is None else f"replica {self.replica}"

    def node(self, name: str) -> NodeSpec:
        return next(n for n in self.nodes if n.name == name)

    def node_names(self) -> list[str]:
        return list(dict.fromkeys(n.name for n in self.nodes))

    def on(self, name: str) -> list[NodeSpec]:
        """Every container planned on one node."""
        return [n for n in self.nodes if n.name == name]

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


@dataclass(frozen=True)
class Fleet:
    """What one inventory deploys: its serving groups (replicas) and, for a fleet, the router
    in front of them.  A plain inventory is a fleet of one group and no router."""

    deployment: str
    groups: list[Plan]
    router: NodeSpec | None = None
    warnings: list[str] = field(default_factory=list)
    router_unresolved: list[str] = field(default_factory=list)  # the router's node, when its
    # NIC/IP is a placeholder (a router-only node is in no group's `unresolved`)

    @property
    def is_fleet(self) -> bool:
        return self.router is not None or len(self.groups) > 1

    @property
    def api_url(self) -> str:
        """The one URL clients use: the router's, else the only group's API."""
        if self.router is not None and self.router.api_url is not None:
            return self.router.api_url
        return self.groups[0].api_url

    @property
    def served_name(self) -> str:
        return self.groups[0].served_name

    @property
    def nodes(self) -> list[NodeSpec]:
        """Every container of the fleet: the groups' in order, then the router."""
        out = [n for g in self.groups for n in g.nodes]
        return out + ([self.router] if self.router is not None else [])

    @property
    def unresolved(self) -> list[str]:
        return list(dict.fromkeys([*(u for g in self.groups for u in g.unresolved),
                                   *self.router_unresolved]))

    def node_names(self) -> list[str]:
        return list(dict.fromkeys(n.name for n in self.nodes))

    def on(self, name: str) -> list[NodeSpec]:
        return [n for n in self.nodes if n.name == name]

    def group_of(self, node: str) -> Plan | None:
        return next((g for g in self.groups if node in g.node_names()), None)

    def to_json(self) -> dict[str, object]:
        if not self.is_fleet:
            return self.groups[0].to_json()
        return {
            "deployment": self.deployment,
            "api_url": self.api_url,
            "warnings": self.warnings,
            "replicas": [{"replica": g.replica, **g.to_json()} for g in self.groups],
            "router": self.router.to_json() if self.router is not None else None,
        }
