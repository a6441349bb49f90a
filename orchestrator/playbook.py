"""Playbooks and hardware profiles: deployment recipes as data.

A playbook (playbooks/<name>.yaml) holds what the seeds' tutorials type by hand: the vLLM
flags, the environment, the container options, the parallel sizes.  A hardware profile
(playbooks/profiles/<name>.yaml) holds what depends on the machine: device nodes, driver
mounts, and which environment variables carry the node's own NIC and IP.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from .inventory import EnvDict, Strict

Scalar = str | int | float | bool | None
# A serve flag's value: a scalar, or a mapping/list rendered as compact JSON (--compilation-config).
FlagValue = Scalar | dict[str, Any] | list[Any]


class ContainerOptions(Strict):
    net_host: bool = Field(True, description="--net=host (multi-node vLLM needs it)")
    privileged: bool = Field(False, description="--privileged=true")
    shm_size: str | None = Field(None, description="--shm-size=VALUE, e.g. 500g")
    ipc_host: bool = Field(False, description="--ipc=host")
    devices: Literal["all", "used"] = Field(
        "all",
        description="accelerator device nodes passed in: all of the node's, or only the first "
        "TP x local DP ones the ranks use (single-NPU / TP2 recipes)",
    )
    mounts: list[str] = Field(
        default_factory=list, description="bind mounts of the recipe, host:container[:ro]"
    )
    extra: list[str] = Field(default_factory=list, description="more run flags, verbatim")


class Profile(Strict):
    """What a kind of machine needs in every container."""

    name: str
    kind: Literal["ascend", "nvidia", "rocm", "cpu"]
    description: str = ""
    devices: int = Field(ge=0, description="accelerators per node (0: CPU, not checked)")
    device_paths: list[str] = Field(
        default_factory=list, description="per-accelerator device node, {i} = index"
    )
    shared_devices: list[str] = Field(default_factory=list, description="--device for all")
    mounts: list[str] = Field(default_factory=list, description="driver/tool bind mounts")
    run_flags: list[str] = Field(default_factory=list, description="e.g. --gpus all")
    nic_env: dict[str, str] = Field(
        default_factory=dict, description="env templates with {nic} and {ip} of the node"
    )
    env: EnvDict = Field(default_factory=dict)
    device_memory_gb: float | None = Field(
        None, gt=0, description="memory per accelerator in GB (capacity check; none: skipped)"
    )


class Parallel(Strict):
    tensor: int = Field(1, ge=1, description="--tensor-parallel-size")
    pipeline: int = Field(1, ge=1, description="--pipeline-parallel-size (topology ray)")
    data: int = Field(1, ge=1, description="--data-parallel-size (all nodes together)")
    data_local: int | None = Field(
        None, ge=1, description="--data-parallel-size-local (default: data / nodes)"
    )
    expert: bool = Field(False, description="--enable-expert-parallel")


class Ports(Strict):
    api: int = Field(8000, ge=1, le=65535, description="--port of the API server")
    rpc: int = Field(29550, ge=1, le=65535, description="--data-parallel-rpc-port")


class ModelMemory(Strict):
    """What the recipe's model needs in accelerator memory (see orchestrator/capacity.py)."""

    weights_gb: float = Field(gt=0, description="size of the checkpoint's weights in GB")
    kv_bytes_per_token: int = Field(
        0, ge=0, description="KV cache bytes per token, all layers (layers x KV heads x head "
        "dim x 2 x dtype bytes); 0: not counted",
    )
    native_max_model_len: int | None = Field(
        None, ge=1, description="the model's own context length, used when no --max-model-len"
    )


class RayOptions(Strict):
    """The Ray topology (seed 001 "Multi-node Deployment with Ray"): `ray start --head` on the
    first node, `ray start --address` on the others, then one `vllm serve
    --distributed-executor-backend ray` in the head's container."""

    port: int = Field(6379, ge=1, le=65535, description="the head's GCS port (ray start --port)")
    start_args: list[str] = Field(
        default_factory=list,
        description="more `ray start` arguments on every node, e.g. --num-cpus 1 or "
        "--resources '{\"NPU\": 1}' (the lab's CPU build counts one rank slot per node so)",
    )
    head_args: list[str] = Field(
        default_factory=list, description="`ray start` arguments of the head only, e.g. "
        "--include-dashboard false (Ray refuses them on the other nodes)",
    )
    join_timeout_s: float = Field(180, gt=0, description="how long all nodes may take to join")


class PDGroup(Strict):
    """One role's instances (prefill or decode): all alike."""

    instances: int = Field(1, ge=1, description="how many instances of this role")
    nodes: int = Field(1, ge=1, description="nodes per instance")
    tensor: int = Field(ge=1, description="--tensor-parallel-size")
    data: int = Field(ge=1, description="--data-parallel-size of one instance")
    kv_port: int = Field(ge=1, le=65535, description="kv_port (Mooncake uses kv_port..+chips)")
    rpc_port: int = Field(ge=1, le=65535, description="--data-parallel-rpc-port")
    api_port: int = Field(8000, ge=1, le=65535, description="--port of the instance's head")
    serve: dict[str, FlagValue] = Field(default_factory=dict, description="flags of this role")
    env: EnvDict = Field(default_factory=dict, description="env of this role")

    @property
    def data_local(self) -> int:
        return self.data // self.nodes


class PDPlaybook(Strict):
    """A prefill/decode playbook (playbooks/pd/*.yaml); see orchestrator/pd.py."""

    name: str
    description: str = ""
    source: str = ""
    profile: str
    vllm_version: str
    topology: Literal["pd"] = "pd"
    host: str = "0.0.0.0"
    expert: bool = Field(False, description="--enable-expert-parallel")
    connector: str = "MooncakeConnectorV1"
    connector_extra: dict[str, Any] = Field(
        default_factory=dict, description="kv_connector_extra_config besides prefill/decode"
    )
    serve: dict[str, FlagValue] = Field(default_factory=dict, description="flags of every instance")
    env: EnvDict = Field(default_factory=dict)
    path_prepend: EnvDict = Field(
        default_factory=dict,
        description="NAME: dirs put in front of the container's own value (LD_LIBRARY_PATH)",
    )
    container: ContainerOptions = ContainerOptions()
    shared_dirs: list[str] = Field(
        default_factory=list,
        description="host dirs orch creates on every node and mounts at the same path (the KV "
        "store of a shared-storage connector such as ExampleConnector)",
    )
    prefill: PDGroup
    decode: PDGroup
    proxy_port: int = Field(ge=1, le=65535)
    proxy_command: list[str] = Field(
        default_factory=lambda: [
            "python",
            "/vllm-workspace/vllm-ascend/examples/disaggregated_prefill_v1/load_balance_proxy_server_example.py"],
        description="proxy: command: the proxy to run, before --host/--port/--prefiller-*/--decoder-*",
    )
    proxy: Literal["vllm-router", "command"] = Field(
        "vllm-router", description="vllm-router: vllm-router in PD mode (in the image, or "
        "proxy_image); command: proxy_command as it is (the seed's load_balance_proxy_server_example.py "
        "that vllm-ascend images ship)",
    )
    proxy_image: str | None = Field(
        None, pattern=r"^[^\s-][^\s]*$",
        description="image of the proxy's container (default: the deployment's image)")

    @model_validator(mode="after")
    def _sizes(self) -> PDPlaybook:
        for role in ("prefill", "decode"):
            g: PDGroup = getattr(self, role)
            if g.data % g.nodes:
                raise ValueError(f"{role}: data parallel size {g.data} does not divide over {g.nodes} nodes")
        for d in self.shared_dirs:
            if not d.startswith("/") or ":" in d:
                raise ValueError(f"shared_dirs: {d!r} is not an absolute path")
        return self

    @property
    def nodes_needed(self) -> int:
        return self.prefill.instances * self.prefill.nodes + self.decode.instances * self.decode.nodes


class Playbook(Strict):
    name: str
    description: str = ""
    source: str = Field("", description="where the recipe comes from (seed, tutorial)")
    profile: str = Field(description="hardware profile name (playbooks/profiles/)")
    vllm_version: str = Field(description="vLLM version of the image, e.g. 0.11.0")
    topology: Literal["single", "dp", "ray", "pd"] = "dp"
    parallel: Parallel = Parallel()
    ports: Ports = Ports()
    host: str = Field("0.0.0.0", description="--host the API binds to")
    api_server_count: int | None = Field(None, ge=1, description="head only")
    serve: dict[str, FlagValue] = Field(
        default_factory=dict,
        description="further vllm serve flags in order; null/true = bare flag, "
        "a mapping or list = compact JSON",
    )
    rope_scaling: dict[str, Scalar] | None = Field(
        None,
        description="RoPE scaling (rope_type, factor, original_max_position_embeddings, "
        "rope_theta, ...), rendered in the form vllm_version takes (orchestrator/flags.py)",
    )
    model_memory: ModelMemory | None = Field(None, description="for the capacity check")
    env: EnvDict = Field(default_factory=dict)
    container: ContainerOptions = ContainerOptions()
    min_nodes: int = Field(1, ge=1)
    max_nodes: int | None = Field(None, ge=1)
    ray: RayOptions | None = Field(None, description="topology ray: how Ray starts")
    pd: PDPlaybook | None = Field(None, description="topology pd: the prefill/decode playbook")

    @model_validator(mode="before")
    @classmethod
    def _from_pd(cls, data: Any) -> Any:
        """A prefill/decode playbook file (it has prefill: and decode:) loads as a Playbook of
        topology pd that carries it, so inventories, plan, up, status and down take both."""
        if not isinstance(data, dict) or "prefill" not in data or "decode" not in data:
            return data
        pd = PDPlaybook.model_validate(data)
        return {"name": pd.name, "description": pd.description, "source": pd.source,
                "profile": pd.profile, "vllm_version": pd.vllm_version, "topology": "pd",
                "host": pd.host, "serve": pd.serve, "env": pd.env, "container": pd.container,
                "min_nodes": pd.nodes_needed, "max_nodes": pd.nodes_needed + 1, "pd": pd}

    @model_validator(mode="after")
    def _topology(self) -> Playbook:
        if self.topology == "ray" and self.ray is None:
            object.__setattr__(self, "ray", RayOptions())
        if self.topology != "ray" and self.parallel.pipeline != 1:
            raise ValueError("parallel.pipeline is only planned for topology ray")
        if (self.topology == "pd") != (self.pd is not None):
            raise ValueError("topology pd comes with a prefill/decode playbook (prefill:, decode:)")
        return self

    @field_validator("vllm_version")
    @classmethod
    def _version(cls, v: str) -> str:
        if not re.match(r"^v?\d+(\.\d+){0,2}", v):
            raise ValueError("must be a vLLM version like 0.11.0 (a suffix like rc2 is allowed)")
        return v

    @field_validator("rope_scaling")
    @classmethod
    def _rope(cls, v: dict[str, Scalar] | None) -> dict[str, Scalar] | None:
        if v is not None and "rope_type" not in v:
            raise ValueError("needs rope_type (e.g. yarn)")
        return v

    @field_validator("serve")
    @classmethod
    def _serve(cls, v: dict[str, FlagValue]) -> dict[str, FlagValue]:
        for flag in v:
            if not flag.startswith("--"):
                raise ValueError(f"{flag!r}: flags are written in long form, like --seed")
            if "=" in flag:
                raise ValueError(f"{flag!r}: write the value as the mapping's value, not after '='")
        return v
