"""Container runtimes on lab hosts, adapted so orch can send exactly what it sends to a
real cluster.

podman: launched from an ssh session inside a host's namespace, `--net=host` is that
namespace. It only needs a containers.conf (runc, ulimits) given to sessions by sshd's
`SetEnv CONTAINERS_CONF=...`.

docker: the daemon lives in the root namespace, so `--net=host` would mean the machine's
network. Each lab host's namespace is therefore owned by a long-running pause container
(`--network none`, `ip netns attach`), and a `docker` wrapper first on the host's PATH turns
`--net=host` / `--network host` into `--network container:<pause>`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from ._util import IMAGE_TAG, LabError, Progress, lab_dir, pid_alive, run, stop_pid
from .hosts import netns_inode
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
    """Whether a docker-compatible API answers /_ping on this UNIX socket."""
    import httpx

    if not Path(path).exists():
        return False
    try:
        with httpx.Client(transport=httpx.HTTPTransport(uds=path), timeout=5) as c:
            return c.get("http://localhost/_ping").status_code == 200
    except httpx.HTTPError:
        return False


def ensure_podman_service(state: LabState, progress: Progress, conf: Path) -> None:
    """podman's API service on its default socket, as `systemctl enable --now podman.socket`
    gives a real podman host: orch reads container state through it (over SSH).  One service
    serves every lab host (they share the machine's podman storage).  Started detached unless
    one answers already; its PID is recorded only when the lab started it."""
    if socket_answers(PODMAN_SOCKET):
        return
    Path(PODMAN_SOCKET).parent.mkdir(parents=True, exist_ok=True)
    Path(PODMAN_SOCKET).unlink(missing_ok=True)
    log = lab_dir() / "podman-service.log"
    out = run(["sh", "-c", 'CONTAINERS_CONF="$2" setsid podman system service --time=0 "unix://$3" '
               '>>"$1" 2>&1 </dev/null & echo $!', "sh", str(log), str(conf), PODMAN_SOCKET])
    pid = state.podman_service_pid = int(out.stdout.strip())
    state.save()
    wait_answering(pid, lambda: socket_answers(PODMAN_SOCKET),
                   f"podman system service on {PODMAN_SOCKET}", log, timeout=30)
    progress.say(f"started podman's API service (pid {pid}, {PODMAN_SOCKET})")


def stop_podman_service(state: LabState) -> list[str]:
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
    """(runtime client, container id) of every container that belongs to the lab: running
    containers inside a lab host's namespace (podman), containers sharing a pause
    container's namespace, and the pause containers themselves (docker)."""
    found: list[tuple[str, str]] = []
    if state.runtime == "podman":
        inodes = {i for h in state.hosts if (i := netns_inode(h.netns)) is not None}
        cp = run(["podman", "ps", "-q", "--no-trunc"], check=False, timeout=60)
        for cid in cp.stdout.split():
            pid = run(["podman", "inspect", "-f", "{{.State.Pid}}", cid], check=False).stdout
            try:
                ino = os.stat(f"/proc/{int(pid)}/ns/net").st_ino
            except (ValueError, OSError):
                continue
            if ino in inodes:
                found.append(("podman", cid))
        # stopped containers have no namespace left: the lab image marks them as the lab's
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
