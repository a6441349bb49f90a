"""The inventory: which nodes, which image, which model, which playbook.

Every field is validated before anything is contacted; `config.load_inventory` turns a
validation failure into an `InventoryError` naming the file, the field path and what was
expected.  Inventory values are data: they only ever reach a remote shell as single,
quoted argv elements (see `remote.py`).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

NAME_RE = r"^[a-z0-9][a-z0-9-]{0,38}$"
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
NIC_RE = r"^[A-Za-z0-9_.:@-]{1,15}$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def check_env(env: dict[str, str]) -> dict[str, str]:
    for key in env:
        if not ENV_NAME_RE.match(key):
            raise ValueError(f"{key!r} is not a valid environment variable name")
    return env


EnvDict = Annotated[dict[str, str], AfterValidator(check_env)]


class SSHOptions(Strict):
    """How to reach a node over SSH. Node-level values override the inventory-level ones."""

    user: str | None = Field(None, description="login user (default: ~/.ssh/config, else the local user name)")
    port: int | None = Field(None, ge=1, le=65535, description="SSH port (default 22)")
    key: str | None = Field(None, description="private key file; the SSH agent is used too")
    known_hosts: str | None = Field(
        None, description="known_hosts file to verify host keys (default ~/.ssh/known_hosts)"
    )
    jump: str | None = Field(None, description="jump host, [user@]host[:port]")
    config: str | None = Field(None, description="ssh config file (default ~/.ssh/config)")
    persist: int = Field(
        120, ge=0, le=86400,
        description="seconds a background keeper holds the SSH connections open after "
        "`orch status` so that the next one reuses them (like OpenSSH's ControlPersist); 0: never",
    )


class Node(Strict):
    name: str = Field(pattern=NAME_RE, description="short node name, used in container names")
    host: str = Field(min_length=1, description="address or ~/.ssh/config alias to SSH to")
    user: str | None = None
    port: int | None = Field(None, ge=1, le=65535)
    key: str | None = None
    jump: str | None = None
    nic: str | None = Field(
        None, pattern=NIC_RE, description="cluster NIC; detected when omitted"
    )
    ip: str | None = Field(None, description="cluster IPv4 on that NIC; detected when omitted")
    devices: int | None = Field(
        None, ge=0, description="accelerators on this node (default: the profile's count)"
    )
    data_parallel_local: int | None = Field(
        None, ge=1, description="DP ranks on this node (default: the playbook's)"
    )
    cpus: str | None = Field(
        None, pattern=r"^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$",
        description="CPUs this node's vLLM container may use (`--cpuset-cpus`, e.g. 0-23,48-71 "
        "for one NUMA node); default: all")
    env: EnvDict = Field(default_factory=dict, description="extra env for this node")

    @field_validator("ip")
    @classmethod
    def _ip(cls, v: str | None) -> str | None:
        if v is not None:
            ipaddress.IPv4Address(v)
        return v

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        if v.startswith("-") or any(c.isspace() for c in v):
            raise ValueError("must be a host name, address or ssh config alias")
        return v


class Model(Strict):
    path: str = Field(
        min_length=1,
        description="what `vllm serve` loads: a path on the nodes, or a hub id",
    )
    served_name: str | None = Field(None, min_length=1, description="--served-model-name")
    digest_in_spec: bool = Field(
        False, description="fold the model directory's manifest digest (every file's size and "
        "hash, `orch stage`) into the spec hash: changed weights are drift and `orch up` "
        "redeploys (costs one cached manifest per node per up/status)")

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if v.startswith("-"):
            raise ValueError("must not start with '-'")
        if any(ord(c) < 32 for c in v):
            raise ValueError("must not hold control characters (newlines, tabs)")
        return v


class Overrides(Strict):
    """Per-deployment changes to the playbook."""

    tensor_parallel: int | None = Field(None, ge=1)
    data_parallel: int | None = Field(None, ge=1)
    data_parallel_local: int | None = Field(None, ge=1)
    api_port: int | None = Field(None, ge=1, le=65535)
    rpc_port: int | None = Field(None, ge=1, le=65535)
    host: str | None = Field(None, description="address the API binds to (--host)")
    args: dict[str, str | int | float | bool | None] = Field(
        default_factory=dict,
        description="vllm serve flags to add or replace; null or true = bare flag, false = drop",
    )
    env: EnvDict = Field(default_factory=dict)
    mounts: list[str] = Field(default_factory=list, description="host:container[:ro]")

    @field_validator("args")
    @classmethod
    def _args(cls, v: dict[str, object]) -> dict[str, object]:
        for flag in v:
            if not re.match(r"^--[a-z0-9][a-z0-9.-]*$", flag):
                raise ValueError(f"{flag!r} is not a long vllm flag like --max-model-len")
        return v

    @field_validator("mounts")
    @classmethod
    def _mounts(cls, v: list[str]) -> list[str]:
        for m in v:
            parts = m.split(":")
            if len(parts) not in (2, 3) or not parts[0].startswith("/") or not parts[1].startswith("/"):
                raise ValueError(f"{m!r} is not /host/path:/container/path[:ro]")
        return v


class SecretRef(Strict):
    """Where orch reads a secret value on the machine it runs on: exactly one of env / file.
    The value never enters the plan, the state directory, logs or argv."""

    env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="variable name")
    file: str | None = Field(None, min_length=1, description="file holding the value")

    @model_validator(mode="after")
    def _one(self) -> SecretRef:
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of env: VARIABLE or file: PATH")
        return self

    def describe(self) -> str:
        return f"${self.env}" if self.env else f"file {self.file}"


class Router(Strict):
    """vllm-router in front of a fleet's replicas (docs/fleet.md): one API URL for all."""

    node: str | None = Field(None, description="node that runs it (default: the first node)")
    port: int = Field(8080, ge=1, le=65535, description="its API port (clients use this one)")
    host: str = Field("0.0.0.0", description="address it binds to")
    image: str | None = Field(
        None, pattern=r"^[^\s-][^\s]*$",
        description="image with vllm-router in it (default: the inventory's image)")
    policy: Literal["round_robin", "random", "power_of_two", "cache_aware", "consistent_hash"] = Field(
        "round_robin", description="vllm-router --policy")
    health_check_interval_s: int = Field(
        2, ge=1, le=3600, description="how often the router checks each replica's /health")
    health_failure_threshold: int = Field(
        2, ge=1, le=100, description="failed checks before it stops routing to a replica")
    args: dict[str, str | int | float | bool | None] = Field(
        default_factory=dict, description="more vllm-router flags; null or true = bare flag")

    @field_validator("args")
    @classmethod
    def _args(cls, v: dict[str, object]) -> dict[str, object]:
        for flag in v:
            if not re.match(r"^--[a-z0-9][a-z0-9-]*$", flag):
                raise ValueError(f"{flag!r} is not a long vllm-router flag like --queue-size")
        return v


class Update(Strict):
    """How a fleet's replicas are replaced when the inventory or playbook changes."""

    max_unavailable: int = Field(
        1, ge=1, description="replicas taken out of the router and replaced at the same time")


class Inventory(Strict):
    deployment: str = Field(pattern=NAME_RE, description="deployment name (container names)")
    playbook: str = Field(min_length=1, description="playbook name in playbooks/, or a path")
    runtime: Literal["docker", "podman"] = "docker"
    runtime_socket: str | None = Field(
        None, pattern=r"^(off|/[^\s]+)$",
        description="the runtime's API socket on the nodes, read through SSH to list containers "
        "without running the CLI (default /var/run/docker.sock, podman: /run/podman/podman.sock); "
        "off: always the CLI",
    )
    image: str = Field(min_length=1, pattern=r"^[^\s-][^\s]*$")
    model: Model
    ssh: SSHOptions = SSHOptions()
    head: str | None = Field(None, description="node serving the API (default: first node)")
    nodes: list[Node] = Field(min_length=1)
    overrides: Overrides = Overrides()
    secrets: dict[str, SecretRef] = Field(
        default_factory=dict,
        description="container env vars with secret values (HF_TOKEN, ...), passed via stdin",
    )
    api_key: SecretRef | None = Field(
        None, description="the API key: set in the containers as VLLM_API_KEY, sent by orch's probes"
    )
    replicas: int | None = Field(
        None, ge=1, description="a fleet: the nodes split in order into this many equal groups, each "
        "one complete deployment of the playbook's topology, behind the router")
    groups: list[list[str]] | None = Field(
        None, min_length=1, description="a fleet with the replicas' nodes named (instead of "
        "replicas:); a node in no group may only run the router")
    router: Router | None = Field(None, description="the fleet's router (vllm-router)")
    update: Update = Update()

    @field_validator("secrets")
    @classmethod
    def _secret_names(cls, v: dict[str, SecretRef]) -> dict[str, SecretRef]:
        check_env({k: "" for k in v})
        if "VLLM_API_KEY" in v:
            raise ValueError("set the API key with the top-level api_key field, not as VLLM_API_KEY")
        return v

    @model_validator(mode="after")
    def _nodes(self) -> Inventory:
        names = [n.name for n in self.nodes]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate node names: {', '.join(dup)}")
        hosts = [(n.host, n.port) for n in self.nodes]
        duph = sorted({h for h, p in hosts if hosts.count((h, p)) > 1})
        if duph:
            raise ValueError(f"the same host appears twice: {', '.join(duph)}")
        ips = [n.ip for n in self.nodes if n.ip]
        dupi = sorted({i for i in ips if ips.count(i) > 1})
        if dupi:
            raise ValueError(f"the same cluster IP appears twice: {', '.join(dupi)}")
        if self.head is not None and self.head not in names:
            raise ValueError(f"head {self.head!r} is not one of the nodes ({', '.join(names)})")
        if self.replicas is not None and self.groups is not None:
            raise ValueError("give replicas: N or groups: [[...], ...], not both")
        if self.replicas is not None and len(names) % self.replicas:
            raise ValueError(f"{len(names)} nodes do not split into {self.replicas} equal replicas "
                             "(or name each replica's nodes with groups:)")
        if self.groups is not None:
            seen = [n for g in self.groups for n in g]
            unknown = sorted(set(seen) - set(names))
            if unknown:
                raise ValueError(f"groups: {', '.join(unknown)} not among the nodes ({', '.join(names)})")
            twice = sorted({n for n in seen if seen.count(n) > 1})
            if twice:
                raise ValueError(f"groups: {', '.join(twice)} in more than one replica")
            if any(not g for g in self.groups):
                raise ValueError("groups: a replica needs at least one node")
            spare = [n for n in names if n not in seen]
            router = self.router.node if self.router else None
            if [n for n in spare if n != router]:
                raise ValueError(f"groups: {', '.join(n for n in spare if n != router)} in no replica "
                                 "(only the router's node may be left out)")
        if self.router is not None and self.router.node is not None and self.router.node not in names:
            raise ValueError(f"router.node {self.router.node!r} is not one of the nodes")
        if self.fleet and self.head is not None:
            raise ValueError("head: is for a single deployment; in a fleet each replica's head is "
                             "its first node")
        return self

    @property
    def fleet(self) -> bool:
        """Several replicas (or one) behind a router, rather than one plain deployment."""
        return self.replicas is not None or self.groups is not None or self.router is not None

    def replica_nodes(self) -> list[list[Node]]:
        """The nodes of each replica, in order (a plain inventory: one group of every node)."""
        by_name = {n.name: n for n in self.nodes}
        if self.groups is not None:
            return [[by_name[x] for x in g] for g in self.groups]
        k = self.replicas or 1
        per = len(self.nodes) // k
        return [self.nodes[i * per:(i + 1) * per] for i in range(k)]

    @property
    def head_node(self) -> Node:
        if self.head is None:
            return self.nodes[0]
        return next(n for n in self.nodes if n.name == self.head)
