"""The lab's inventory for orch: a data-parallel deployment over the first lab hosts."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from ._util import IMAGE_TAG, LabError
from .hosts import client_key, known_hosts
from .model import model_dir


class HostLike(Protocol):
    name: str
    ip: str
    nic: str


def _q(v: str) -> str:
    return json.dumps(v)  # a JSON string is a valid, safely quoted YAML scalar


def render_inventory(hosts: Sequence[HostLike], runtime: str, *, nodes: int = 2,
                     deployment: str = "lab-dp", playbook: str = "cpu-lab-dp",
                     image: str = IMAGE_TAG, model_path: str | None = None,
                     served_name: str = "tiny", head: str | None = None,
                     node_env: dict[str, dict[str, str]] | None = None) -> str:
    """YAML text for the core's Inventory model. `nodes` first hosts are used; each node
    gets its own core, round-robin over this machine's cores: its container may only use
    that core (`cpus`, a cpuset) and vLLM binds its OMP threads to it
    (`VLLM_CPU_OMP_THREADS_BIND`); `node_env` adds or overrides env per node name.

    The cpuset is what makes lab hosts separate machines for the scheduler too: every process
    that loads torch moves itself once onto each CPU it may use (cpuinfo's probe), and on this
    2-core VM's kernel such a move onto a core where another host's vLLM worker computes
    hangs in sched_setaffinity, unkillable, for minutes (a new replica starting beside a
    serving one never got past its imports)."""
    if runtime not in ("podman", "docker"):
        raise LabError(f"runtime must be podman or docker, not {runtime!r}")
    if not 1 <= nodes <= len(hosts):
        raise LabError(f"{nodes} nodes asked, the lab has {len(hosts)} hosts")
    chosen = list(hosts)[:nodes]
    head = head or chosen[0].name
    cores = sorted(os.sched_getaffinity(0))  # the CPUs this machine lets us use
    lines = [
        "# Written by `orch lab up`: the lab's hosts as an orch inventory.",
        f"deployment: {_q(deployment)}",
        f"playbook: {_q(playbook)}",
        f"runtime: {runtime}",
        f"image: {_q(image)}",
        "model:",
        f"  path: {_q(model_path or str(model_dir()))}",
        f"  served_name: {_q(served_name)}",
        "ssh:",
        "  user: root",
        f"  key: {_q(str(client_key()))}",
        f"  known_hosts: {_q(str(known_hosts()))}",
        f"head: {_q(head)}",
        "nodes:",
    ]
    for i, h in enumerate(chosen):
        core = str(cores[i % len(cores)])
        env = {"VLLM_CPU_OMP_THREADS_BIND": core, **(node_env or {}).get(h.name, {})}
        env_txt = ", ".join(f"{k}: {_q(v)}" for k, v in env.items())
        lines += [
            f"  - name: {_q(h.name)}",
            f"    host: {_q(h.ip)}",
            f"    nic: {_q(h.nic)}",
            f"    ip: {_q(h.ip)}",
            f"    cpus: {_q(core)}",
            f"    env: {{{env_txt}}}",
        ]
    return "\n".join(lines) + "\n"


def write_inventory(path: str | Path, hosts: Sequence[HostLike], runtime: str, nodes: int = 2,
                    deployment: str = "lab-dp", **kwargs: object) -> Path:
    """Write render_inventory(...) to `path` (see there for the keyword arguments)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(render_inventory(hosts, runtime, nodes=nodes, deployment=deployment,
                                  **kwargs))  # type: ignore[arg-type]
    return p
