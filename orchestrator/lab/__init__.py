"""The lab: a real multi-host cluster on one machine, for the demo and integration tests.

N network namespaces (`orchlab-h0`, ...) on a bridge `orchlab0` (10.77.0.0/24; the machine
is 10.77.0.1, host i is 10.77.0.(11+i) on its own NIC `enp{i}s0`), each with its own
mount namespace (private /srv/orch-lab, /var/cache/orch; podman: its own container
storage, locks and API service), its own OpenSSH sshd, the container runtime adapted per host (see
runtime_shims), fake NPU tools, a locally built vLLM-CPU image, a tiny model and an
inventory for orch. State in lab.json.

    lab = Lab().up(hosts=3, runtime="podman")   # idempotent; reuses caches
    lab.run_on("h1", ["podman", "ps"])          # inside h1's namespaces, like an ssh session
    lab.hide_image("h1")                        # h1 lacks the image (restore_image: back)
    lab.down()                                  # removes exactly what lab.json records
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import fakes, image, model
from . import hosts as H
from . import runtime_shims as R
from ._util import IMAGE_TAG, LabError, Progress, lab_dir, mounts_under, require_root, run, term_pid
from .inventory import write_inventory
from .state import BRIDGE, FORWARD_RULE, PRIVATE_DIRS, LabHost, LabState, host_spec

__all__ = ["Lab", "LabError", "LabHost", "IMAGE_TAG", "write_inventory", "lab_dir"]

MAX_HOSTS = 64


def missing_deps(runtime: str) -> list[str]:
    """Commands the lab needs that this machine lacks (install: scripts/install-lab-deps.sh)."""
    need = ["ip", "iptables", "nsenter", "unshare", "mount", "umount", "ssh-keygen", "tar"]
    paths = ["/usr/sbin/sshd"]
    if not (image.cache_dir() / ".stage-fixups").exists():
        need.append("debootstrap")
    if runtime == "podman":
        need += ["podman", "runc", "tini"]
    else:
        need += ["docker"]
        paths += ["/usr/sbin/dockerd"]
    missing = [c for c in need if not shutil.which(c) and not os.access(f"/usr/sbin/{c}", os.X_OK)]
    return missing + [p for p in paths if not os.access(p, os.X_OK)]


class Lab:
    """The lab as recorded in lab.json (`Lab()` loads it; an empty lab if there is none)."""

    def __init__(self) -> None:
        self.state: LabState | None = LabState.load()

    # --- what tests read -------------------------------------------------------------
    @property
    def is_up(self) -> bool:
        return self.state is not None and self.state.status == "up"

    @property
    def hosts(self) -> list[LabHost]:
        return list(self.state.hosts) if self.state else []

    @property
    def runtime(self) -> str | None:
        return self.state.runtime if self.state else None

    @property
    def inventory_path(self) -> Path:
        return lab_dir() / "inventory.yaml"

    @property
    def ssh_key(self) -> Path:
        return H.client_key()

    @property
    def known_hosts(self) -> Path:
        return H.known_hosts()

    @property
    def model_path(self) -> Path:
        return model.model_dir()

    @property
    def image(self) -> str:
        return IMAGE_TAG

    def host(self, name: str) -> LabHost:
        for h in self.hosts:
            if h.name == name or h.netns == name or h.ip == name:
                return h
        raise LabError(f"no lab host {name!r} (hosts: {', '.join(h.name for h in self.hosts)})")

    # --- lifecycle -------------------------------------------------------------------
    def up(self, hosts: int = 3, runtime: str = "podman", *, replace: bool = False,
           faults: dict[str, dict[str, Any]] | None = None, quiet: bool = False) -> Lab:
        """Bring the lab up (or return it if it is already up, healthy, with the same
        parameters). A lab up with other parameters is an error unless `replace`."""
        require_root()
        if runtime not in ("podman", "docker"):
            raise LabError(f"--runtime must be podman or docker, not {runtime!r}")
        if not 1 <= hosts <= MAX_HOSTS:
            raise LabError(f"--hosts must be 1..{MAX_HOSTS}")
        if missing := missing_deps(runtime):
            raise LabError(f"missing: {', '.join(missing)}; run scripts/install-lab-deps.sh")
        for name, f in (faults or {}).items():  # invalid faults fail before anything is made
            if name not in {f"h{i}" for i in range(hosts)}:
                raise LabError(f"fault for {name!r}: no such host (h0..h{hosts - 1})")
            try:
                fakes.render_fake_tools(f)
            except ValueError as e:
                raise LabError(f"fault for {name}: {e}") from e
        progress = Progress(quiet=quiet)
        old = LabState.load()
        if old is not None:
            same = old.runtime == runtime and old.n_hosts == hosts
            if old.status == "up" and same and self._healthy(old):
                self.state = old
                progress.say(f"lab already up: {hosts} hosts, {runtime}")
                for h in old.hosts:  # `up` states the faults wanted: others are cleared
                    if h.fault and h.name not in (faults or {}):
                        self.set_fault(h, None)
                    if h.image_hidden:  # and so is a hidden image
                        self.restore_image(h)
                self._apply_faults(faults)
                return self
            if old.status == "up" and not same and not replace:
                raise LabError(f"a lab is up with {old.n_hosts} hosts on {old.runtime}; "
                               "run `orch lab down` first (or pass replace=True / --replace)")
            progress.say("removing the previous (partial, unhealthy or replaced) lab")
            self.state = old
            self.down(quiet=quiet)
        t0 = time.monotonic()
        state = self.state = LabState(runtime=runtime, n_hosts=hosts)
        state.save()
        if runtime == "docker":
            with progress.phase("dockerd"):
                R.ensure_dockerd(state, progress)
        image.build_rootfs(progress)
        image.import_image(runtime, progress)
        model.ensure_model(progress)
        with progress.phase(f"{hosts} hosts (netns, veth, mount ns, sshd)"):
            self._make_hosts(state, hosts)
        if runtime == "podman":
            with progress.phase(f"{hosts} podman API services"):
                for h in state.hosts:
                    R.start_podman_service(state, h)
                R.wait_podman_services(state.hosts, timeout=60 + 2 * hosts)
        self._apply_faults(faults)
        write_inventory(self.inventory_path, state.hosts, runtime)
        state.status = "up"
        state.timings = {**progress.timings, "total": round(time.monotonic() - t0, 1)}
        state.save()
        progress.say(f"lab up: {hosts} hosts on {runtime}; inventory {self.inventory_path}")
        return self

    def _make_hosts(self, state: LabState, n: int) -> None:
        podman = state.runtime == "podman"
        H.ensure_client_key()
        H.create_bridge(state)
        H.ensure_mntns_dir(state)
        H.ensure_mount_points(state, [*PRIVATE_DIRS, *(["/run/podman"] if podman else [])])
        for i in range(n):
            host = host_spec(i)
            state.hosts.append(host)
            state.save()
            Path(host.bin_dir).mkdir(parents=True, exist_ok=True)
            pause_pid = R.start_pause(state, host) if state.runtime == "docker" else None
            H.create_netns(state, host, pause_pid)
            binds = H.host_binds(host)
            if podman:
                R.write_podman_confs(host)
                binds += R.podman_binds(host)
            H.create_mntns(state, host, binds)
            if podman:  # docker: the containers are dockerd's, in the machine's PID space
                H.create_pidns(state, host)
            fakes.write_tools(host.bin_dir, None, host_index=i, all_indices=list(range(n)))
            if state.runtime == "docker":
                R.write_docker_wrapper(host)
            H.write_sshd_config(host, state.runtime)
            H.start_sshd(state, host)
        H.write_known_hosts(state.hosts)

    def _healthy(self, state: LabState) -> bool:
        ok = all(all(H.host_status(h).values()) for h in state.hosts)
        if state.runtime == "docker":
            ok = ok and all(R.pause_running(h) for h in state.hosts)
        if state.runtime == "podman":  # each host its own storage and API service
            ok = ok and not state.podman_service_pid and all(
                h.pid_ns and h.storage_conf.exists() and R.socket_answers(str(h.podman_socket))
                for h in state.hosts)
        return ok and len(state.hosts) == state.n_hosts

    def down(self, *, quiet: bool = False) -> list[str]:
        """Remove what lab.json records (containers in lab hosts, podman API services, sshd,
        mount and network namespaces, veths, bridge, FORWARD rule, dockerd if the lab started
        it, the per-host dirs with their storage). Idempotent. Keeps the caches (rootfs/venv,
        images, model) and the client key. Returns problems (empty = clean)."""
        require_root()
        progress = Progress(quiet=quiet)
        state = LabState.load() or self.state  # lab.json is the truth (another Lab object
        # may have rebuilt the lab since this one was loaded)
        if state is None:
            progress.say("no lab recorded; nothing to do")
            return []
        problems: list[str] = []
        for h in state.hosts:  # while the hosts' network still works (docker: pause containers)
            problems += H.end_sessions(h)
        try:
            for h in state.hosts if state.runtime == "podman" else []:
                problems += R.remove_host_containers(h)
            problems += R.remove_containers(R.lab_containers(state))
        except (LabError, OSError, subprocess.SubprocessError) as e:
            problems.append(f"removing lab containers: {e}")
        for h in state.hosts:  # SIGTERM them all at once; the stops below then only wait
            R.term_host_podman_service(h)
            if h.sshd_pid:
                term_pid(h.sshd_pid, expect_in_cmdline=h.sshd_config.name)
        for h in state.hosts:
            problems += R.stop_host_podman_service(h)
            problems += H.remove_host(h)
        problems += H.remove_bridge(state)
        problems += R.stop_dockerd(state)
        problems += R.stop_podman_service(state)
        problems += H.remove_mntns_dir(state)
        problems += [f"still mounted: {mp}" for mp in mounts_under(lab_dir() / "hosts")]
        if problems:
            state.save()
            for problem in problems:
                progress.say(f"problem: {problem}")
            return problems
        shutil.rmtree(lab_dir() / "hosts", ignore_errors=True)
        for p in (self.inventory_path, H.containers_conf(), LabState.path()):
            p.unlink(missing_ok=True)
        self.state = None
        progress.say("lab down")
        return []

    def status(self) -> dict[str, Any]:
        """What exists now, per host and for the shared pieces."""
        st = self.state
        if st is None:
            return {"up": False, "hosts": []}
        out: dict[str, Any] = {
            "up": st.status == "up", "status": st.status, "runtime": st.runtime,
            "bridge": Path(f"/sys/class/net/{BRIDGE}").exists(),
            "forward_rule": run(["iptables", "-C", *FORWARD_RULE], check=False).returncode == 0,
            "dockerd_pid": st.dockerd_pid,
            "inventory": str(self.inventory_path),
            "timings": st.timings, "hosts": [],
        }
        for h in st.hosts:
            row: dict[str, Any] = {"name": h.name, "ip": h.ip, "nic": h.nic, "netns": h.netns,
                                   "sshd_pid": h.sshd_pid, "fault": h.fault,
                                   **H.host_status(h)}
            if st.runtime == "docker":
                row["pause"] = R.pause_running(h)
            if st.runtime == "podman":
                row.update(podman_service_pid=h.podman_service_pid,
                           podman_api=R.socket_answers(str(h.podman_socket)),
                           image_hidden=h.image_hidden)
            out["hosts"].append(row)
        out["healthy"] = out["up"] and self._healthy(st)
        return out

    # --- for tests -------------------------------------------------------------------
    def session_env(self, host: str | LabHost) -> dict[str, str]:
        """The environment an ssh session on `host` gets (sshd SetEnv)."""
        h = host if isinstance(host, LabHost) else self.host(host)
        return {**os.environ, **H.session_vars(h, self.runtime or "podman")}

    def run_on(self, host: str | LabHost, argv: Sequence[str], *, check: bool = False,
               timeout: float | None = 120, input: str | None = None,
               ) -> subprocess.CompletedProcess[str]:
        """Run argv inside the host's mount and network namespaces (nsenter --mount --net, in
        this process's working directory), with the environment of the host's ssh sessions
        (PATH, podman's CONTAINERS_CONF / CONTAINERS_STORAGE_CONF); output captured as text."""
        h = host if isinstance(host, LabHost) else self.host(host)
        return subprocess.run(H.ns_argv(h, list(argv), wd=os.getcwd()),
                              capture_output=True, text=True, input=input, timeout=timeout,
                              env=self.session_env(h), check=check)

    def ssh_argv(self, host: str | LabHost, command: str) -> list[str]:
        """An `ssh` command line that reaches `host` with strict host-key checking."""
        h = host if isinstance(host, LabHost) else self.host(host)
        return ["ssh", "-i", str(self.ssh_key), "-o", "BatchMode=yes",
                "-o", f"UserKnownHostsFile={self.known_hosts}",
                "-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=5",
                f"root@{h.ip}", command]

    def set_fault(self, host: str | LabHost, fault: dict[str, Any] | None) -> None:
        """Rewrite the host's npu-smi / hccn_tool for `fault`, e.g. {"link_down": 3}
        (None = healthy); see orchestrator.hw.fakes for the faults."""
        h = host if isinstance(host, LabHost) else self.host(host)
        fakes.write_tools(h.bin_dir, fault, host_index=h.index,
                          all_indices=[x.index for x in self.hosts])
        h.fault = dict(fault) if fault else None
        if self.state:
            self.state.save()

    def private_dir(self, host: str | LabHost, machine_path: str = "/srv/orch-lab") -> Path:
        """Where, on this machine, the host's private `machine_path` lives (one of
        /srv/orch-lab, /var/cache/orch): to put files there without entering the host."""
        h = host if isinstance(host, LabHost) else self.host(host)
        return h.private_dir(machine_path)

    def podman_socket(self, host: str | LabHost) -> Path:
        """The host's /run/podman/podman.sock, as a path on this machine."""
        h = host if isinstance(host, LabHost) else self.host(host)
        return h.podman_socket

    def hide_image(self, host: str | LabHost) -> None:
        """podman: the host no longer sees the shared image store, as if the lab image had
        been removed there (`podman image inspect` fails; `podman load` writes into the
        host's own storage). Its containers of a shared image are removed (`rmi -f` does so).
        Kept in lab.json; `restore_image` or the next `up` undoes it."""
        h = host if isinstance(host, LabHost) else self.host(host)
        if self.state is None:
            raise LabError("no lab")
        R.set_image_hidden(self.state, h, True)

    def restore_image(self, host: str | LabHost) -> None:
        """Undo hide_image: the shared store is visible again on the host, and any private
        copy of a shared image there (e.g. staged with `podman load`) is removed."""
        h = host if isinstance(host, LabHost) else self.host(host)
        if self.state is None:
            raise LabError("no lab")
        R.set_image_hidden(self.state, h, False)

    def _apply_faults(self, faults: dict[str, dict[str, Any]] | None) -> None:
        for name, fault in (faults or {}).items():
            self.set_fault(name, fault)
