"""The container spec of one node: `<runtime> run` argv, labels, name and spec hash.

The spec hash covers everything that changes what runs (image, run options, env, the served
command, the runtime, secret digest); it names the container and labels it, so `orch up`
and `orch status` tell drift by comparing hashes."""

from __future__ import annotations

from collections.abc import Sequence

from ..inventory import Inventory, Node
from ..playbook import ContainerOptions, Profile
from .common import spec_hash
from .model import LABEL_DEPLOYMENT, LABEL_NODE, LABEL_ROLE, LABEL_SPEC, Digests, NodeNet, NodeSpec, Port, Role


def run_options(*, inv: Inventory, prof: Profile, container: ContainerOptions, node: Node,
                used_devices: int, publish: int | None,
                extra_run: Sequence[str] = ()) -> list[str]:
    """The run options of one node's container (network, devices, mounts, ...)."""
    c = container
    opts: list[str] = []
    if c.net_host:
        opts.append("--net=host")
    if c.privileged:
        opts.append("--privileged=true")
    if c.shm_size:
        opts.append(f"--shm-size={c.shm_size}")
    if c.ipc_host:
        opts.append("--ipc=host")
    if node.cpus:
        opts.append(f"--cpuset-cpus={node.cpus}")
    if not c.net_host and publish is not None:  # bridge network: publish the API port
        opts += ["-p", f"{publish}:{publish}"]
    ndev = node.devices if node.devices is not None else prof.devices
    if c.devices == "used":
        ndev = min(ndev, used_devices)
    for i in range(ndev):
        for tmpl in prof.device_paths:
            opts += ["--device", tmpl.format(i=i)]
    for dev in prof.shared_devices:
        opts += ["--device", dev]
    for m in prof.mounts:
        opts += ["-v", m]
    for m in c.mounts:
        opts += ["-v", m]
    if inv.model.path.startswith("/"):
        opts += ["-v", f"{inv.model.path}:{inv.model.path}:ro"]
    for m in inv.overrides.mounts:
        opts += ["-v", m]
    return opts + prof.run_flags + c.extra + list(extra_run)


def container_spec(
    *,
    inv: Inventory,
    prof: Profile,
    container: ContainerOptions,
    node: Node,
    net: NodeNet,
    role: Role,
    serve: list[str],
    env: dict[str, str],
    digests: Digests,
    used_devices: int,
    publish: int | None,
    ranks: tuple[int, ...] = (),
    api_port: int | None = None,
    instance: int | None = None,
    listens: tuple[Port, ...] = (),
    command: list[str] | None = None,
    extra_run: Sequence[str] = (),
    image: str | None = None,
    run_opts: list[str] | None = None,
) -> NodeSpec:
    """The spec of one container.  `serve` is the `vllm serve` argv; the container runs it
    unless `command` is given (ray start, a proxy, the router), in which case `command` runs
    and counts in the hash.  `publish`: the port `-p` publishes on a bridge network.
    `image`, `run_opts`: another image than the inventory's and run options of their own (the
    router: no accelerator, no model)."""
    if run_opts is None:
        run_opts = run_options(inv=inv, prof=prof, container=container, node=node,
                               used_devices=used_devices, publish=publish, extra_run=extra_run)
    secret_env = tuple(inv.secrets) + (("VLLM_API_KEY",) if inv.api_key else ())
    env_opts: list[str] = ["--env-file", "/dev/stdin"] if secret_env else []
    for key, value in env.items():
        env_opts += ["-e", f"{key}={value}"]
    img = image or inv.image
    payload: dict[str, object] = {"image": img, "run": run_opts, "env": env, "serve": serve,
                                  "runtime": inv.runtime}
    if secret_env:
        payload["secrets"] = [list(secret_env), digests.secrets]
    if digests.model is not None and serve:
        payload["model_manifest"] = digests.model
    if command is not None:
        payload["command"] = command
    h = spec_hash(payload)
    name = f"orch-{inv.deployment}-{node.name}-{h[:8]}"
    labels = {LABEL_DEPLOYMENT: inv.deployment, LABEL_NODE: node.name, LABEL_ROLE: role,
              LABEL_SPEC: h}
    argv = [inv.runtime, "run", "-d", "--name", name]
    for k, v in labels.items():
        argv += ["--label", f"{k}={v}"]
    argv += run_opts + env_opts + [img] + (serve if command is None else command)
    return NodeSpec(name=node.name, role=role, host=node.host, nic=net.nic, ip=net.ip,
                    container=name, labels=labels, env=env, serve_argv=serve, argv=argv,
                    spec_hash=h, ranks=ranks, api_port=api_port, instance=instance,
                    listens=listens, secret_env=secret_env)
