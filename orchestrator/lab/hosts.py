"""Lab hosts: a bridge, one network namespace + veth + sshd per host, the client key.

Each creation is recorded in the LabState (and saved) right after it succeeds, so a failure
half-way leaves a lab.json from which `down` removes exactly what exists.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from ._util import LabError, child_pids, lab_dir, pid_alive, pid_cmdline, run, stop_pid
from .state import BRIDGE, BRIDGE_IP, FORWARD_RULE, LabHost, LabState

SSHD = "/usr/sbin/sshd"
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def ssh_dir() -> Path:
    return lab_dir() / "ssh"


def client_key() -> Path:
    return ssh_dir() / "id_ed25519"


def known_hosts() -> Path:
    return ssh_dir() / "known_hosts"


def containers_conf() -> Path:
    return lab_dir() / "containers.conf"


# podman in the lab: runc (crun 1.8 rejects this machine's mixed cgroup v1/v2 layout),
# explicit ulimits (raising them is forbidden here), cgroupfs and file events (no systemd).
CONTAINERS_CONF = """\
# Written by orch lab: handed to ssh sessions on lab hosts via sshd SetEnv CONTAINERS_CONF.
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""


def ensure_client_key() -> None:
    """One client keypair for every lab host (kept across up/down)."""
    ssh_dir().mkdir(parents=True, exist_ok=True, mode=0o700)
    if not client_key().exists():
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "orch-lab",
             "-f", str(client_key())])
    (ssh_dir() / "authorized_keys").write_text(
        client_key().with_suffix(".pub").read_text())


def create_bridge(state: LabState) -> None:
    if not Path(f"/sys/class/net/{BRIDGE}").exists():
        run(["ip", "link", "add", BRIDGE, "type", "bridge"])
    state.bridge = BRIDGE  # also taken over when left by a crashed lab
    state.save()
    run(["ip", "addr", "replace", f"{BRIDGE_IP}/24", "dev", BRIDGE])
    run(["ip", "link", "set", BRIDGE, "up"])
    if run(["iptables", "-C", *FORWARD_RULE], check=False).returncode != 0:
        run(["iptables", "-I", FORWARD_RULE[0], "1", *FORWARD_RULE[1:]])
    state.forward_rule = FORWARD_RULE
    state.save()


def create_netns(state: LabState, host: LabHost, pause_pid: int | None = None) -> None:
    """`ip netns add`, or (docker) `ip netns attach` to the pause container's process."""
    if pause_pid is None:
        run(["ip", "netns", "add", host.netns])
    else:
        run(["ip", "netns", "attach", host.netns, str(pause_pid)])
    host.netns_created = True
    state.save()
    run(["ip", "link", "add", host.veth, "type", "veth", "peer", "name", host.nic,
         "netns", host.netns])
    run(["ip", "link", "set", host.veth, "master", BRIDGE])
    run(["ip", "link", "set", host.veth, "up"])
    ns = ["ip", "-n", host.netns]
    run([*ns, "link", "set", "lo", "up"])
    run([*ns, "addr", "add", f"{host.ip}/24", "dev", host.nic])
    run([*ns, "link", "set", host.nic, "up"])


def write_sshd_config(host: LabHost, runtime: str) -> None:
    hdir = Path(host.dir)
    hdir.mkdir(parents=True, exist_ok=True)
    key = hdir / "ssh_host_ed25519_key"
    if not key.exists():
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"orch-lab-{host.name}",
             "-f", str(key)])
    setenv = f"PATH={host.bin_dir}:{BASE_PATH}"
    if runtime == "podman":
        setenv += f" CONTAINERS_CONF={containers_conf()}"
    host.sshd_config.write_text(f"""\
# orch lab host {host.name} ({host.netns}); started with nsenter --net=/run/netns/{host.netns}
Port 22
ListenAddress {host.ip}
HostKey {key}
PidFile {hdir / 'sshd.pid'}
AuthorizedKeysFile {ssh_dir() / 'authorized_keys'}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PrintMotd no
UseDNS no
MaxSessions 64
MaxStartups 64:30:128
Subsystem sftp /usr/lib/openssh/sftp-server
SetEnv {setenv}
""")


def start_sshd(state: LabState, host: LabHost) -> None:
    pidfile = Path(host.dir) / "sshd.pid"
    pidfile.unlink(missing_ok=True)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation directory
    run([SSHD, "-t", "-f", str(host.sshd_config)])
    run(["nsenter", f"--net=/run/netns/{host.netns}", SSHD, "-f", str(host.sshd_config),
         "-E", str(Path(host.dir) / "sshd.log")])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if pidfile.exists() and pidfile.read_text().strip():
            host.sshd_pid = int(pidfile.read_text().strip())
            state.save()
            break
        time.sleep(0.05)
    else:
        raise LabError(f"sshd of {host.name} did not write {pidfile}; see {host.dir}/sshd.log")
    if not wait_port(host.ip, 22, 10):
        raise LabError(f"sshd of {host.name} does not accept on {host.ip}:22")


def wait_port(ip: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((ip, port), timeout=1):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def write_known_hosts(hosts: list[LabHost]) -> None:
    lines = []
    for h in hosts:
        keytype, key = (Path(h.dir) / "ssh_host_ed25519_key.pub").read_text().split()[:2]
        lines.append(f"{h.ip} {keytype} {key}\n")
    known_hosts().write_text("".join(lines))


def end_sessions(host: LabHost) -> list[str]:
    """End the host's open ssh sessions (one sshd per connection, children of the host's
    sshd), while its network still works so that the clients see them close: a long-lived
    connection such as orch's keeper would otherwise outlive the host, blocked in a namespace
    that has no network any more.  Returns problems."""
    problems = []
    if host.sshd_pid and host.sshd_config.name in pid_cmdline(host.sshd_pid):
        for pid in child_pids(host.sshd_pid):
            if not stop_pid(pid, expect_in_cmdline="sshd", timeout=5):
                problems.append(f"ssh session {pid} of {host.name} did not exit")
    return problems


def remove_host(host: LabHost) -> list[str]:
    """Stop the host's sshd (by PID), delete its namespace and veth. Returns problems."""
    problems = end_sessions(host)
    if host.sshd_pid and not stop_pid(host.sshd_pid, expect_in_cmdline=host.sshd_config.name):
        problems.append(f"sshd {host.sshd_pid} of {host.name} did not exit")
    host.sshd_pid = None
    if Path(f"/run/netns/{host.netns}").exists():
        cp = run(["ip", "netns", "delete", host.netns], check=False)
        if cp.returncode != 0:
            problems.append(f"ip netns delete {host.netns}: {cp.stderr.strip()}")
    if Path(f"/sys/class/net/{host.veth}").exists():
        run(["ip", "link", "del", host.veth], check=False)
    return problems


def remove_bridge(state: LabState) -> list[str]:
    problems = []
    if state.forward_rule:
        if run(["iptables", "-C", *state.forward_rule], check=False).returncode == 0:
            run(["iptables", "-D", *state.forward_rule], check=False)
        state.forward_rule = None
    if state.bridge and Path(f"/sys/class/net/{state.bridge}").exists():
        cp = run(["ip", "link", "del", state.bridge], check=False)
        if cp.returncode != 0:
            problems.append(f"ip link del {state.bridge}: {cp.stderr.strip()}")
    state.bridge = None
    return problems


def host_status(host: LabHost) -> dict[str, bool]:
    return {
        "netns_ok": Path(f"/run/netns/{host.netns}").exists(),
        "nic_ok": host.nic in netns_links(host.netns),
        "sshd": pid_alive(host.sshd_pid),
        "ssh_port": wait_port(host.ip, 22, 0.5),
    }


def netns_links(netns: str) -> list[str]:
    if not Path(f"/run/netns/{netns}").exists():
        return []
    cp = run(["ip", "-n", netns, "-o", "link"], check=False)
    return [line.split(":")[1].strip().split("@")[0] for line in cp.stdout.splitlines()]


def netns_inode(netns: str) -> int | None:
    try:
        return os.stat(f"/run/netns/{netns}").st_ino
    except OSError:
        return None
