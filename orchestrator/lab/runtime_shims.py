"""Container runtimes on lab hosts, adapted so orch can send exactly what it sends to a
real cluster.

podman: launched from an ssh session inside a host's namespaces, `--net=host` is that
network namespace. Each host has its own storage (graphroot, runroot, engine tmp_dir, file
locks under it) from its own storage.conf / containers.conf, handed to
sessions by sshd's `SetEnv CONTAINERS_CONF=... CONTAINERS_STORAGE_CONF=...`; the lab image
comes from the machine's podman storage, mounted read-only in every host and listed as an
additional image store (no per-host copy). Each host runs its own API service on its
private /run/podman/podman.sock. `hide_image` drops the shared store from one host.

docker: the daemon lives in the root namespace, so `--net=host` would mean the machine's
network. Each lab host's namespace is therefore owned by a long-running pause container
(`--network none`, `ip netns attach`), and a `docker` wrapper first on the host's PATH turns
`--net=host` / `--network host` into `--network container:<pause>`.
"""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from ._util import IMAGE_TAG, LabError, Progress, lab_dir, pid_alive, run, stop_pid, term_pid
from .hosts import mntns_inode, netns_inode, ns_argv, outer_pid, session_vars
from .state import LabHost, LabState

PAUSE_LABEL = "orch.lab.pause"


def docker_client() -> str:
    for c in ("/usr/bin/docker", "/usr/local/bin/docker"):
        if os.access(c, os.X_OK):
            return c
    raise LabError("no docker client found (run scripts/install-lab-deps.sh)")


def docker_up() -> bool:
    return run([docker_client(), "info", "--format", "{{.ID}}"], check=False,
               timeout=30).returncode == 0


def ensure_dockerd(state: LabState, progress: Progress) -> None:
    """Start dockerd unless one answers already; record its PID only if the lab started it."""
    if docker_up():
        return
    if not os.access("/usr/sbin/dockerd", os.X_OK):
        raise LabError("dockerd is not installed (run scripts/install-lab-deps.sh)")
    # dockerd sets the FORWARD policy to DROP and leaves it so; restore it when we stop it
    policy = run(["iptables", "-S", "FORWARD"]).stdout.splitlines()[0].split()
    state.forward_policy = policy[2] if policy[:2] == ["-P", "FORWARD"] else None
    log = lab_dir() / "dockerd.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    # Detached (not our child): it outlives this process on purpose; down stops it by PID.
    out = run(["sh", "-c", 'setsid /usr/sbin/dockerd >>"$1" 2>&1 </dev/null & echo $!', "sh", str(log)])
    pid = int(out.stdout.strip())
    state.dockerd_pid, state.dockerd_log = pid, str(log)
    state.save()
    wait_answering(pid, docker_up, "dockerd", log, timeout=60)
    progress.say(f"started dockerd (pid {pid}, log {log})")


def wait_answering(pid: int, answers: Callable[[], bool], what: str, log: Path,
                   timeout: float) -> None:
    """Wait until a daemon the lab started answers; LabError if it exits or stays silent."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            raise LabError(f"{what} exited at start; see {log}")
        if answers():
            return
        time.sleep(0.2)
    raise LabError(f"{what} did not answer within {timeout:.0f} s; see {log}")


def stop_dockerd(state: LabState) -> list[str]:
    if not state.dockerd_pid:
        return []
    ok = stop_pid(state.dockerd_pid, expect_in_cmdline="dockerd", timeout=30)
    pid, state.dockerd_pid = state.dockerd_pid, None
    if ok and state.forward_policy:
        run(["iptables", "-P", "FORWARD", state.forward_policy], check=False)
    return [] if ok else [f"dockerd {pid} did not exit"]


PODMAN_SOCKET = "/run/podman/podman.sock"  # orch's default for podman (runtime_api.py)


def socket_answers(path: str) -> bool:
    """Whether a docker-compatible API answers /_ping with 200 on this UNIX socket."""
    if not Path(path).exists():
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(path)
            s.sendall(b"GET /_ping HTTP/1.0\r\nHost: lab\r\n\r\n")
            status = s.recv(256).split(b"\r\n", 1)[0].split()
    except OSError:
        return False
    return len(status) >= 2 and status[0].startswith(b"HTTP/") and status[1] == b"200"


# --- podman: per-host storage and API service ----------------------------------------
SHARED_STORE = "/var/lib/containers/storage"  # the machine's podman storage: the lab image


def _podman_conf_texts(host: LabHost) -> tuple[str, str]:
    run_dir = host.run_dir
    stores = "" if host.image_hidden else f'additionalimagestores = ["{SHARED_STORE}"]\n'
    storage = f"""\
# Written by orch lab for host {host.name}: its own container storage (sshd SetEnv
# CONTAINERS_STORAGE_CONF). {SHARED_STORE} is the machine's (read-only in this host).
[storage]
driver = "overlay"
graphroot = "{Path(host.dir) / 'storage'}"
runroot = "{run_dir / 'storage'}"

[storage.options]
{stores}"""
    # runc: crun 1.8 rejects this machine's mixed cgroup v1/v2 layout; explicit ulimits
    # (raising them is forbidden here); cgroupfs and file events (no systemd). File locks
    # under tmp_dir: podman's default SHM locks are one segment, /dev/shm/libpod_lock, for
    # every storage on the machine, and a first podman after "boot" (a new tmp_dir) frees
    # all of its locks.
    containers = f"""\
# Written by orch lab for host {host.name} (sshd SetEnv CONTAINERS_CONF).
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
lock_type = "file"
tmp_dir = "{run_dir / 'libpod'}"
image_copy_tmp_dir = "{Path(host.dir) / 'tmp'}"
"""
    return storage, containers


def write_podman_confs(host: LabHost) -> None:
    storage, containers = _podman_conf_texts(host)
    for d in (host.run_dir / "podman", Path(host.dir) / "tmp"):
        d.mkdir(parents=True, exist_ok=True)
    host.storage_conf.write_text(storage)
    host.containers_conf.write_text(containers)


def podman_binds(host: LabHost) -> list[tuple[str, str, bool]]:
    """Mounts of a podman host's namespace: its /run/podman, the shared store read-only."""
    return [(str(host.run_dir / "podman"), "/run/podman", False),
            (SHARED_STORE, SHARED_STORE, True)]


def podman_on(host: LabHost, *args: str, check: bool = False,
              timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """podman inside the host's namespaces with its storage (as its ssh sessions run it)."""
    env = {**os.environ, **session_vars(host, "podman")}
    return run(ns_argv(host, ["podman", *args]), check=check, env=env, timeout=timeout)


def start_podman_service(state: LabState, host: LabHost) -> None:
    """podman's API service of this host, as `systemctl enable --now podman.socket` gives a
    real podman host: inside the host's namespaces, with its storage, on its private
    /run/podman/podman.sock. Detached; PID recorded; wait with wait_podman_services."""
    host.podman_socket.unlink(missing_ok=True)
    log = Path(host.dir) / "podman-service.log"
    env = {**os.environ, **session_vars(host, "podman")}
    out = run(ns_argv(host, ["sh", "-c", 'setsid podman system service --time=0 "unix://$2" '
                             '>>"$1" 2>&1 </dev/null & echo $!', "sh", str(log), PODMAN_SOCKET]),
              env=env)
    host.podman_service_pid = outer_pid(host, int(out.stdout.strip()))  # PID ns: inner
    state.save()


def wait_podman_services(hosts: list[LabHost], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    for h in hosts:
        assert h.podman_service_pid
        wait_answering(h.podman_service_pid, functools.partial(socket_answers, str(h.podman_socket)),
                       f"podman system service of {h.name}", Path(h.dir) / "podman-service.log",
                       timeout=max(1.0, deadline - time.monotonic()))


SERVICE_CMD = "podman system service"


def _service_ours(host: LabHost, pid: int) -> bool:
    ino = mntns_inode(host)
    try:  # a recycled PID in another namespace is not ours
        return ino is None or os.stat(f"/proc/{pid}/ns/mnt").st_ino == ino
    except OSError:
        return False


def term_host_podman_service(host: LabHost) -> None:
    """SIGTERM the host's API service without waiting (stop_host_podman_service waits)."""
    if host.podman_service_pid and _service_ours(host, host.podman_service_pid):
        term_pid(host.podman_service_pid, expect_in_cmdline=SERVICE_CMD)


def stop_host_podman_service(host: LabHost) -> list[str]:
    pid = host.podman_service_pid
    if not pid:
        return []
    if _service_ours(host, pid) and not stop_pid(pid, expect_in_cmdline=SERVICE_CMD, timeout=30):
        return [f"podman system service {pid} of {host.name} did not exit"]
    host.podman_service_pid = None
    host.podman_socket.unlink(missing_ok=True)
    return []


def shared_image_ids() -> list[str]:
    """IDs of the images in the shared store (the machine's own podman storage)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTAINERS_")}
    cp = run(["podman", "images", "-q", "--no-trunc"], env=env, check=False, timeout=60)
    return sorted({i.removeprefix("sha256:") for i in cp.stdout.split()})


def set_image_hidden(state: LabState, host: LabHost, hidden: bool) -> None:
    """Hide the shared image store from one podman host (it lacks the lab image: `podman
    image inspect` fails there, `podman load` writes into its own storage), or show it again
    (any private copy of a shared image is removed). Containers of the host that use an image
    that goes away are removed, as `podman rmi -f` does. The API service is restarted: it
    reads the store once."""
    if state.runtime != "podman":
        raise LabError("hide_image/restore_image need the podman runtime (dockerd is one "
                       "daemon shared by all lab hosts)")
    ids = shared_image_ids()
    if hidden and not host.image_hidden:
        users = set()
        for iid in ids:
            users |= set(podman_on(host, "ps", "-aq", "--no-trunc", "--filter",
                                   f"ancestor={iid}").stdout.split())
        if users:
            podman_on(host, "rm", "-f", "-t", "0", *sorted(users), check=True)
    elif not hidden and host.image_hidden:
        # the host sees only its own storage now: what is there of a shared image is a copy
        mine = {i.removeprefix("sha256:")
                for i in podman_on(host, "images", "-q", "--no-trunc").stdout.split()}
        copies = sorted(mine & set(ids))
        if copies:
            podman_on(host, "rmi", "-f", *copies, check=True)
    else:
        return
    problems = stop_host_podman_service(host)
    if problems:
        raise LabError("; ".join(problems))
    host.image_hidden = hidden
    write_podman_confs(host)
    state.save()
    start_podman_service(state, host)
    wait_podman_services([host])


def stop_podman_service(state: LabState) -> list[str]:
    """The one shared API service of labs before per-host storage (lab.json of such a lab)."""
    if not state.podman_service_pid:
        return []
    pid, state.podman_service_pid = state.podman_service_pid, None
    if not stop_pid(pid, expect_in_cmdline="podman", timeout=30):
        return [f"podman system service {pid} did not exit"]
    Path(PODMAN_SOCKET).unlink(missing_ok=True)
    return []


def pause_name(host: LabHost) -> str:
    return f"orchlab-pause-{host.name}"


def start_pause(state: LabState, host: LabHost) -> int:
    """Start the host's pause container; return its PID (owner of the host's namespace)."""
    name = pause_name(host)
    run([docker_client(), "rm", "-f", name], check=False)
    run([docker_client(), "run", "-d", "--name", name, "--network", "none",
         "--label", f"{PAUSE_LABEL}={host.name}", "--restart", "no",
         "--entrypoint", "/bin/sleep", IMAGE_TAG, "infinity"], timeout=120)
    host.pause_container = name
    state.save()
    pid = int(run([docker_client(), "inspect", "-f", "{{.State.Pid}}", name]).stdout.strip())
    if pid <= 0:
        raise LabError(f"pause container {name} is not running")
    return pid


DOCKER_WRAPPER = """\
#!/bin/bash
# orch lab host {host}: its `docker`. This host is the network namespace of the pause
# container {pause}; dockerd's `--net=host` would be the machine's root namespace, so
# --net=host / --network=host / --network host become --network=container:{pause}.
# Every other argument passes through unchanged to {real}.
args=()
want_net=0
for a in "$@"; do
  if [[ $want_net == 1 ]]; then
    want_net=0
    [[ $a == host ]] && a="container:{pause}"
    args+=("$a"); continue
  fi
  case "$a" in
    --net=host|--network=host) a="--network=container:{pause}" ;;
    --net|--network) want_net=1 ;;
  esac
  args+=("$a")
done
exec {real} "${{args[@]}}"
"""


def write_docker_wrapper(host: LabHost) -> None:
    path = Path(host.bin_dir) / "docker"
    path.write_text(DOCKER_WRAPPER.format(host=host.name, pause=pause_name(host),
                                          real=docker_client()))
    path.chmod(0o755)


def lab_containers(state: LabState) -> list[tuple[str, str]]:
    """(runtime client, container id) of the containers in the machine's runtime that belong
    to the lab: containers sharing a pause container's namespace and the pause containers
    themselves (docker); podman hosts keep theirs in their own storage (remove_host_containers),
    except in labs from before per-host storage (lab.json without storage.conf per host):
    there, containers inside a lab host's namespace or from the lab image."""
    found: list[tuple[str, str]] = []
    legacy = [h for h in state.hosts if not h.storage_conf.exists()]
    if state.runtime == "podman" and legacy:
        inodes = {i for h in legacy if (i := netns_inode(h.netns)) is not None}
        cp = run(["podman", "ps", "-q", "--no-trunc"], check=False, timeout=60)
        for cid in cp.stdout.split():
            pid = run(["podman", "inspect", "-f", "{{.State.Pid}}", cid], check=False).stdout
            try:
                ino = os.stat(f"/proc/{int(pid)}/ns/net").st_ino
            except (ValueError, OSError):
                continue
            if ino in inodes:
                found.append(("podman", cid))
        cp = run(["podman", "ps", "-aq", "--no-trunc", "--filter", f"ancestor={IMAGE_TAG}"],
                 check=False, timeout=60)
        found += [("podman", cid) for cid in cp.stdout.split() if ("podman", cid) not in found]
        return found
    if state.runtime == "docker" and docker_up():
        pauses = [h.pause_container for h in state.hosts if h.pause_container]
        if not pauses:
            return []
        ids = {}
        for p in pauses:
            cp = run([docker_client(), "inspect", "-f", "{{.Id}}", p], check=False)
            if cp.returncode == 0:
                ids[p] = cp.stdout.strip()
        modes = {f"container:{x}" for x in [*ids.keys(), *ids.values()]}
        cp = run([docker_client(), "ps", "-aq", "--no-trunc"], check=False, timeout=60)
        for cid in cp.stdout.split():
            mode = run([docker_client(), "inspect", "-f", "{{.HostConfig.NetworkMode}}", cid],
                       check=False).stdout.strip()
            if mode in modes:
                found.append((docker_client(), cid))
        # pause containers last: the others share their namespaces
        found += [(docker_client(), ids[p]) for p in pauses if p in ids]
    return found


def remove_host_containers(host: LabHost) -> list[str]:
    """Every container in a podman host's own storage (all of them are the lab's)."""
    if not host.storage_conf.exists() or mntns_inode(host) is None:
        return []  # no storage of its own, or no namespace left to run its podman in
    cp = podman_on(host, "ps", "-aq", "--no-trunc", timeout=60)
    if cp.returncode != 0:
        return [f"podman ps on {host.name}: {cp.stderr.strip()[-300:]}"]
    if not cp.stdout.split():
        return []
    cp = podman_on(host, "rm", "-f", "-t", "0", *cp.stdout.split(), timeout=120)
    return [] if cp.returncode == 0 else [f"podman rm on {host.name}: {cp.stderr.strip()[-300:]}"]


def remove_containers(containers: list[tuple[str, str]]) -> list[str]:
    problems = []
    for client, cid in containers:
        # podman's rm -f waits the stop timeout (10 s) first; docker's kills at once
        extra = ["-t", "0"] if client == "podman" else []
        cp = run([client, "rm", "-f", *extra, cid], check=False, timeout=120)
        if cp.returncode != 0:
            problems.append(f"{client} rm -f {cid[:12]}: {cp.stderr.strip()}")
    return problems


def pause_running(host: LabHost) -> bool:
    if not host.pause_container:
        return False
    cp = run([docker_client(), "inspect", "-f", "{{.State.Running}}", host.pause_container],
             check=False)
    return cp.stdout.strip() == "true"


def dockerd_alive(state: LabState) -> bool:
    return pid_alive(state.dockerd_pid)
