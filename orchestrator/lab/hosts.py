"""Lab hosts: a bridge; per host a network namespace + veth, a mount namespace with its
private dirs, (podman) a PID namespace with its own /proc and /dev/shm, an sshd running in
them; the client key.

Each creation is recorded in the LabState (and saved) right after it succeeds, so a failure
half-way leaves a lab.json from which `down` removes exactly what exists.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path

from ._util import (
    LabError,
    child_pids,
    lab_dir,
    mounts_under,
    pid_alive,
    pid_cmdline,
    run,
    stop_pid,
    term_pid,
    umount_all,
)
from .state import BRIDGE, BRIDGE_IP, FORWARD_RULE, PRIVATE_DIRS, LabHost, LabState

SSHD = "/usr/sbin/sshd"
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def ssh_dir() -> Path:
    return lab_dir() / "ssh"


def client_key() -> Path:
    return ssh_dir() / "id_ed25519"


def known_hosts() -> Path:
    return ssh_dir() / "known_hosts"


def containers_conf() -> Path:
    """The one containers.conf of labs before per-host storage (removed by down)."""
    return lab_dir() / "containers.conf"


def mntns_dir() -> Path:
    """Where each host's mount namespace is bound to a file (`unshare --mount=FILE`). The
    dir is a private bind mount of itself: a mount-namespace file cannot live on a shared
    mount (systemd machines make / shared)."""
    return lab_dir() / "mntns"


def session_vars(host: LabHost, runtime: str) -> dict[str, str]:
    """What the host's sshd hands to sessions (SetEnv), and run_on to its commands."""
    env = {"PATH": f"{host.bin_dir}:{BASE_PATH}"}
    if runtime == "podman":
        env["CONTAINERS_CONF"] = str(host.containers_conf)
        env["CONTAINERS_STORAGE_CONF"] = str(host.storage_conf)
    return env


def ns_argv(host: LabHost, argv: list[str], *, wd: str | None = None) -> list[str]:
    """argv inside the host's mount and network namespaces (nsenter; never `ip netns exec`,
    which remounts /sys and hides /sys/fs/cgroup from podman/runc)."""
    pre = ["nsenter"]
    if host.mnt_ns:
        pre.append(f"--mount={host.mnt_ns}")
        if wd:  # nsenter --mount starts in / otherwise
            pre.append(f"--wd={wd}")
    if host.pid_ns:  # the host's /proc shows its PID namespace: enter both (nsenter forks)
        pre.append(f"--pid={host.pid_ns}")
    return [*pre, f"--net=/run/netns/{host.netns}", *argv]


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


def ensure_mntns_dir(state: LabState) -> None:
    d = mntns_dir()
    d.mkdir(parents=True, exist_ok=True)
    state.mntns_dir = str(d)
    state.save()
    if str(d.resolve()) not in mounts_under(d):
        run(["mount", "--bind", str(d), str(d)])
    run(["mount", "--make-private", str(d)])


def ensure_mount_points(state: LabState, paths: list[str]) -> None:
    """The machine paths the hosts bind private dirs over must exist (mkdir; recorded, so
    that down removes only what the lab made, and only when empty)."""
    for p in paths:
        missing = [q for q in [Path(p), *Path(p).parents] if not q.exists()]
        for q in reversed(missing):
            q.mkdir(mode=0o755)
            state.made_dirs.append(str(q))
            state.save()


def create_mntns(state: LabState, host: LabHost, binds: list[tuple[str, str, bool]]) -> None:
    """The host's own mount namespace, bound to mntns_dir()/<name>: a slave copy of the
    machine's (mounts made there later, e.g. new /run/netns entries, still show up inside;
    nothing mounted inside leaks out), with `binds` (source, machine path, read-only) mounted
    in it. /dev/shm stays the machine's (what docker's containers get from dockerd; podman
    hosts keep their locks in files of their own, see runtime_shims)."""
    nsfile = mntns_dir() / host.name
    nsfile.touch()
    host.mnt_ns = str(nsfile)
    state.save()
    run(["unshare", f"--mount={nsfile}", "--propagation", "slave", "true"])
    ns = ["nsenter", f"--mount={nsfile}"]
    for src, dst, ro in binds:
        Path(src).mkdir(parents=True, exist_ok=True)
        run([*ns, "mount", "--bind", *(["-o", "ro"] if ro else []), src, dst])


TINI = "tini"


def create_pidns(state: LabState, host: LabHost) -> None:
    """The host's own PID namespace, as a real host has its own process table: its /proc
    (mounted in its mount namespace) and its /dev/shm (a tmpfs of the machine's size) show
    only what runs on it.  On the machine's one, every host's process scan (orch check's
    procs, `ss -p`, fuser) would read all hosts' processes, and a segment held on one host
    would look free to the others.  Its init is tini (reaps orphans, e.g. daemonized sshd
    and podman), under `unshare --kill-child`: stopping that unshare by PID ends every
    process in the namespace.  Call after create_mntns (its bind mounts need the machine's
    /proc); from then on enter the host with ns_argv (--pid too)."""
    nsfile = mntns_dir() / f"{host.name}.pidns"
    nsfile.touch()
    host.pid_ns = str(nsfile)
    state.save()
    log = Path(host.dir) / "init.log"
    out = run(["sh", "-c", 'setsid unshare "--pid=$2" --fork --kill-child "$3" -- sleep infinity '
               '>>"$1" 2>&1 </dev/null & echo $!', "sh", str(log), str(nsfile),
               shutil.which(TINI) or TINI])
    host.pidns_pid = int(out.stdout.strip())
    state.save()
    deadline = time.monotonic() + 10
    while not mounts_under(nsfile):  # unshare binds the file once its child runs
        if not pid_alive(host.pidns_pid) or time.monotonic() > deadline:
            raise LabError(f"unshare --pid for {host.name} did not start; see {log}")
        time.sleep(0.02)
    shm = os.statvfs("/dev/shm")
    shm_kib = shm.f_blocks * shm.f_frsize // 1024
    ns = ["nsenter", f"--mount={host.mnt_ns}", f"--pid={nsfile}"]
    run([*ns, "mount", "-t", "proc", "-o", "nosuid,nodev,noexec", "proc", "/proc"])
    run([*ns, "mount", "-t", "tmpfs", "-o", f"nosuid,nodev,mode=1777,size={shm_kib}k",
         "tmpfs", "/dev/shm"])


def outer_pid(host: LabHost, inner: int) -> int | None:
    """The machine's PID of the process that is PID `inner` in the host's PID namespace
    (a pid file or `echo $!` on the host gives the inner one); None if none is."""
    if not host.pid_ns:
        return inner
    try:
        ino = os.stat(host.pid_ns).st_ino
    except OSError:
        return None
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            if os.stat(f"/proc/{d}/ns/pid").st_ino != ino:
                continue
            for ln in Path(f"/proc/{d}/status").read_text().splitlines():
                if ln.startswith("NSpid:") and int(ln.split()[-1]) == inner:
                    return int(d)
        except (OSError, ValueError):
            continue
    return None


def pidns_ok(host: LabHost) -> bool:
    """No PID namespace (docker hosts), or its init runs and its file is bound."""
    if not host.pid_ns:
        return True
    return pid_alive(host.pidns_pid) and bool(mounts_under(Path(host.pid_ns)))


def remove_pidns(host: LabHost) -> list[str]:
    """Stop the namespace's init, tini (every process left in the namespace goes with it),
    then the unshare that holds it (by its PID), unbind its file. Returns problems.
    `unshare --fork` blocks SIGTERM while it waits for its child: signalled alone it stayed
    until stop_pid's SIGKILL, 10 s per host (64 hosts: 11 minutes)."""
    problems = []
    if host.pidns_pid and "unshare" in pid_cmdline(host.pidns_pid):
        for child in child_pids(host.pidns_pid):
            term_pid(child, expect_in_cmdline="tini")
    if host.pidns_pid and not stop_pid(host.pidns_pid, expect_in_cmdline="unshare", timeout=10):
        problems.append(f"init {host.pidns_pid} of {host.name}'s PID namespace did not exit")
    host.pidns_pid = None
    if host.pid_ns:
        more, released = release_ns_file(Path(host.pid_ns))
        problems += more
        if released:
            host.pid_ns = None
    return problems


def release_ns_file(nsfile: Path) -> tuple[list[str], bool]:
    """Unbind a namespace file (the namespace goes once nothing else holds it) and remove
    it. Returns (problems, whether it was released); it stays while a mount is left."""
    problems = umount_all(nsfile)
    if mounts_under(nsfile):
        return problems, False
    nsfile.unlink(missing_ok=True)
    return problems, True


def host_binds(host: LabHost) -> list[tuple[str, str, bool]]:
    return [(str(host.private_dir(p)), p, False) for p in PRIVATE_DIRS]


def mntns_inode(host: LabHost) -> int | None:
    """The inode of the host's mount namespace, None unless its file is bound."""
    if not host.mnt_ns or not mounts_under(Path(host.mnt_ns)):
        return None
    try:
        return os.stat(host.mnt_ns).st_ino
    except OSError:
        return None


def procs_in_mntns(ino: int) -> list[int]:
    """PIDs of the processes in the mount namespace with inode `ino`."""
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) != os.getpid():
            try:
                if os.stat(f"/proc/{d}/ns/mnt").st_ino == ino:
                    pids.append(int(d))
            except OSError:
                continue
    return pids


def mntns_ok(host: LabHost) -> bool:
    """sshd runs in the host's bound mount namespace, and the private dirs are there."""
    ino = mntns_inode(host)
    if ino is None or not pid_alive(host.sshd_pid):
        return False
    try:
        if os.stat(f"/proc/{host.sshd_pid}/ns/mnt").st_ino != ino:
            return False
        mps = {ln.split()[4] for ln in Path(f"/proc/{host.sshd_pid}/mountinfo").read_text().splitlines()}
    except OSError:
        return False
    return all(p in mps for p in PRIVATE_DIRS)


def remove_mntns(host: LabHost) -> list[str]:
    """End what still runs in the host's mount namespace (by PID: processes started on the
    lab host, e.g. left by an ssh session), unbind its file: the namespace and every mount in
    it go. Returns problems."""
    if not host.mnt_ns:
        return []
    problems = []
    nsfile = Path(host.mnt_ns)
    if (ino := mntns_inode(host)) is not None:
        for pid in procs_in_mntns(ino):
            cmd = pid_cmdline(pid)
            if cmd and not stop_pid(pid, expect_in_cmdline=cmd, timeout=10):
                problems.append(f"process {pid} ({cmd[:60]}) in {host.name}'s mount namespace "
                                "did not exit")
    more, released = release_ns_file(nsfile)
    problems += more
    if released:
        host.mnt_ns = None
    return problems


def remove_mntns_dir(state: LabState) -> list[str]:
    """Unmount the namespace-file dir, remove the mount points the lab made (if empty)."""
    problems = []
    if state.mntns_dir:
        d = Path(state.mntns_dir)
        problems += umount_all(d)
        if not problems:
            try:
                d.rmdir()
            except FileNotFoundError:
                pass
            except OSError as e:
                problems.append(f"rmdir {d}: {e}")
            state.mntns_dir = None
    for p in reversed(state.made_dirs):
        try:
            Path(p).rmdir()
        except FileNotFoundError:
            pass
        except OSError:
            continue  # not empty: someone put something there; leave it
    state.made_dirs = []
    return problems


def write_sshd_config(host: LabHost, runtime: str) -> None:
    hdir = Path(host.dir)
    hdir.mkdir(parents=True, exist_ok=True)
    key = hdir / "ssh_host_ed25519_key"
    if not key.exists():
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"orch-lab-{host.name}",
             "-f", str(key)])
    setenv = " ".join(f"{k}={v}" for k, v in session_vars(host, runtime).items())
    host.sshd_config.write_text(f"""\
# orch lab host {host.name}: started with nsenter --mount={host.mnt_ns}
# --net=/run/netns/{host.netns} (its own mount namespace: private {', '.join(PRIVATE_DIRS)})
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
    run(ns_argv(host, [SSHD, "-f", str(host.sshd_config), "-E", str(Path(host.dir) / "sshd.log")]))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if pidfile.exists() and pidfile.read_text().strip():
            host.sshd_pid = outer_pid(host, int(pidfile.read_text().strip()))  # PID ns: inner
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
    """Stop the host's sshd (by PID), remove its mount namespace, delete its network
    namespace and veth. Returns problems."""
    problems = end_sessions(host)
    if host.sshd_pid and not stop_pid(host.sshd_pid, expect_in_cmdline=host.sshd_config.name):
        problems.append(f"sshd {host.sshd_pid} of {host.name} did not exit")
    host.sshd_pid = None
    problems += remove_pidns(host)
    problems += remove_mntns(host)
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
        "mntns_ok": mntns_ok(host),
        "pidns_ok": pidns_ok(host),
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
