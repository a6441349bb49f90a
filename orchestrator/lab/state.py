"""lab.json: what the lab created, written as it goes, so `down` removes exactly that."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ._util import lab_dir

SUBNET_PREFIX = "10.77.0"
BRIDGE = "orchlab0"
BRIDGE_IP = f"{SUBNET_PREFIX}.1"
FORWARD_RULE = ["FORWARD", "-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT"]
# Machine paths each lab host sees a private dir at (bind mounts in its mount namespace),
# backed by <host dir>/<name>: host-local model weights, orch's per-node caches.
PRIVATE_DIRS = {"/srv/orch-lab": "srv", "/var/cache/orch": "cache"}


@dataclass
class LabHost:
    """One lab host: a network namespace with its own NIC, IP and sshd."""

    name: str          # h0, h1, ... (the inventory's node name)
    index: int
    netns: str         # orchlab-h0: /run/netns/<netns>
    ip: str            # 10.77.0.(11+index)
    nic: str           # the host's NIC inside its namespace: enp<index>s0
    veth: str          # the root-namespace end of the veth pair, on the bridge
    dir: str           # <lab dir>/hosts/<name>: sshd config, host key, pid file, logs
    bin_dir: str       # first on the PATH of ssh sessions: npu-smi, hccn_tool, docker wrapper
    sshd_pid: int | None = None
    pause_container: str | None = None  # docker runtime only: owner of the namespace
    netns_created: bool = False         # `ip netns add` or `ip netns attach` done
    fault: dict[str, int] | None = None  # fake NPU fault now rendered (None = healthy)
    mnt_ns: str | None = None           # bound mount-namespace file, once `unshare` made it
    podman_service_pid: int | None = None  # podman: this host's API service (in its ns)
    image_hidden: bool = False          # podman: the shared image store is hidden here
    pid_ns: str | None = None           # podman: bound PID-namespace file (create_pidns)
    pidns_pid: int | None = None        # podman: the `unshare` holding that namespace's init

    @property
    def sshd_config(self) -> Path:
        return Path(self.dir) / "sshd_config"

    def private_dir(self, machine_path: str) -> Path:
        """The backing dir of one of PRIVATE_DIRS (what the host sees at machine_path)."""
        try:
            return Path(self.dir) / PRIVATE_DIRS[machine_path]
        except KeyError:
            raise ValueError(f"{machine_path} is not a host-private dir "
                             f"({', '.join(PRIVATE_DIRS)})") from None

    # podman: per-host storage and engine state (see runtime_shims)
    @property
    def storage_conf(self) -> Path:
        return Path(self.dir) / "storage.conf"

    @property
    def containers_conf(self) -> Path:
        return Path(self.dir) / "containers.conf"

    @property
    def run_dir(self) -> Path:  # runroot, engine tmp_dir, /run/podman of this host
        return Path(self.dir) / "run"

    @property
    def podman_socket(self) -> Path:
        """This host's /run/podman/podman.sock, as a path in the machine's namespace."""
        return self.run_dir / "podman" / "podman.sock"


@dataclass
class LabState:
    runtime: str
    n_hosts: int
    status: str = "creating"  # creating | up
    created_at: float = field(default_factory=time.time)
    hosts: list[LabHost] = field(default_factory=list)
    bridge: str | None = None         # set once the bridge exists
    forward_rule: list[str] | None = None  # iptables rule inserted (delete with -D)
    dockerd_pid: int | None = None    # only when the lab started dockerd
    dockerd_log: str | None = None
    forward_policy: str | None = None  # FORWARD policy before the lab's dockerd (restored)
    podman_service_pid: int | None = None  # legacy: one shared API service (labs before
    # per-host storage); stopped by down. Each host's own is LabHost.podman_service_pid.
    mntns_dir: str | None = None      # private bind mount holding the hosts' mnt-ns files
    made_dirs: list[str] = field(default_factory=list)  # mount points the lab created
    timings: dict[str, float] = field(default_factory=dict)

    @staticmethod
    def path() -> Path:
        return lab_dir() / "lab.json"

    def save(self) -> None:
        p = self.path()
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        os.replace(tmp, p)

    @classmethod
    def load(cls) -> LabState | None:
        p = cls.path()
        if not p.exists():
            return None
        data = json.loads(p.read_text())
        hosts = [LabHost(**h) for h in data.pop("hosts", [])]
        return cls(hosts=hosts, **data)


def host_spec(index: int) -> LabHost:
    name = f"h{index}"
    hdir = lab_dir() / "hosts" / name
    return LabHost(name=name, index=index, netns=f"orchlab-{name}",
                   ip=f"{SUBNET_PREFIX}.{11 + index}", nic=f"enp{index}s0",
                   veth=f"olab-{name}", dir=str(hdir), bin_dir=str(hdir / "bin"))
