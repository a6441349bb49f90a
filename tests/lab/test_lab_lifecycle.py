"""The lab itself: `orch lab up` makes real hosts (network and mount namespaces, NICs, sshd
with strict host keys, a working container runtime; podman: storage and API service per
host), a crashed piece is rebuilt by the next `up`, and `orch lab down` leaves nothing
behind: no namespace, mount, bridge, veth, FORWARD rule, lab container, sshd, podman service
or dockerd the lab started.

Needs root (conftest.require_lab: fails without root unless ORCH_SKIP_LAB=1). Missing
system packages skip with the list and the script that installs them. `up` and `down` run
as CLI subprocesses, each under its own timeout (a cold `up` builds the image: minutes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.lab.conftest import ROOT, require_lab

UP_TIMEOUT = int(os.environ.get("ORCH_LAB_UP_TIMEOUT", "900"))
DOWN_TIMEOUT = 120


def lab_cli(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator.lab.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def netns_names() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def links() -> list[str]:
    return sorted(os.listdir("/sys/class/net"))


def forward_rules() -> list[str]:
    return subprocess.run(["iptables", "-S", "FORWARD"], capture_output=True, text=True,
                          check=True).stdout.splitlines()


def lab_mounts() -> list[str]:
    """Lines of the machine's mount table that belong to a lab (ns files, private dirs)."""
    from orchestrator.lab import lab_dir

    return [ln for ln in Path("/proc/self/mountinfo").read_text().splitlines()
            if str(lab_dir()) in ln or "orchlab-" in ln.split(" - ")[-1]]


def procs_with_mntns(inodes: set[int]) -> list[int]:
    pids = []
    for d in os.listdir("/proc"):
        try:
            if d.isdigit() and os.stat(f"/proc/{d}/ns/mnt").st_ino in inodes:
                pids.append(int(d))
        except OSError:
            continue
    return pids


def require_lab_deps(runtime: str) -> None:
    require_lab()
    from orchestrator.lab import missing_deps

    if missing := missing_deps(runtime):
        pytest.skip(f"lab deps missing for {runtime}: {', '.join(missing)} "
                    "(run scripts/install-lab-deps.sh)")


def take_down_any_lab() -> tuple[int, str] | None:
    """Another test's lab may still be up (a session fixture): this test starts from none,
    and gives back (hosts, runtime) of the lab it removed so that it can restore it."""
    from orchestrator.lab import Lab

    lab = Lab()
    if lab.state is None:
        return None
    was = (lab.state.n_hosts, lab.state.runtime) if lab.is_up else None
    assert lab.down(quiet=True) == [], "could not remove the lab left by another test"
    return was


@pytest.mark.parametrize("runtime", ["podman", "docker"])
def test_up_then_down_leaves_nothing(runtime: str, tmp_path: Path) -> None:
    require_lab_deps(runtime)
    from orchestrator.lab import IMAGE_TAG, Lab, image, model
    from orchestrator.lab._util import child_pids, pid_alive
    from orchestrator.lab.state import BRIDGE, LabState

    previous = take_down_any_lab()
    policy_before = forward_rules()[0]
    assert not [n for n in netns_names() if n.startswith("orchlab-")]
    assert not lab_mounts()

    r = lab_cli("up", "--hosts", "3", "--runtime", runtime, timeout=UP_TIMEOUT)
    assert r.returncode == 0, r.stderr[-3000:]
    try:
        lab = Lab()
        st = lab.status()
        assert st["healthy"], st
        assert [h.name for h in lab.hosts] == ["h0", "h1", "h2"]
        assert len({h.nic for h in lab.hosts}) == 3  # each host its own NIC name

        # every host over real ssh, host key verified strictly, its own NIC and IP, the
        # session PATH with the fake NPU tools, and a working container runtime
        for h in lab.hosts:
            r = subprocess.run(lab.ssh_argv(h, f"ip -o -4 addr show; command -v npu-smi "
                                               f"hccn_tool; {runtime} ps -q"),
                               capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, r.stderr
            assert f"{h.nic}    inet {h.ip}/24" in r.stdout
            assert f"{h.bin_dir}/npu-smi" in r.stdout and f"{h.bin_dir}/hccn_tool" in r.stdout
        # a host key that does not match is refused (h1's key under h0's address)
        bad = Path(lab.known_hosts).with_name("known_hosts.swapped")
        keys = Path(lab.known_hosts).read_text().splitlines()
        bad.write_text(f"{lab.hosts[0].ip} {keys[1].split(' ', 1)[1]}\n")
        argv = lab.ssh_argv("h0", "true")
        argv[argv.index(f"UserKnownHostsFile={lab.known_hosts}")] = f"UserKnownHostsFile={bad}"
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        bad.unlink()
        assert r.returncode == 255 and "Host key verification failed" in r.stderr, r.stderr

        # up again with the same parameters: the same lab, nothing restarted
        pids = [h.sshd_pid for h in lab.hosts]
        r = lab_cli("up", "--hosts", "3", "--runtime", runtime, timeout=60)
        assert r.returncode == 0 and "lab already up" in r.stderr, r.stderr[-2000:]
        assert [h.sshd_pid for h in Lab().hosts] == pids

        # a container started the way orch starts one (--net=host) lands in that host's
        # namespace: on podman natively, on docker through the lab's docker wrapper
        r = subprocess.run(lab.ssh_argv("h1", f"{runtime} run -d --name lab-probe-h1 "
                                              f"--net=host {IMAGE_TAG} sleep infinity"),
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        probe = r.stdout.strip().splitlines()[-1]
        r = lab.run_on("h1", [runtime, "exec", probe, "ip", "-o", "-4", "addr"], timeout=60)
        assert "enp1s0    inet 10.77.0.12/24" in r.stdout, r.stdout + r.stderr
        if runtime == "podman":  # in h1's own storage: not in h0's, not in the machine's
            assert lab.run_on("h0", ["podman", "container", "exists", probe]).returncode == 1
            machine_env = {k: v for k, v in os.environ.items() if not k.startswith("CONTAINERS_")}
            assert subprocess.run(["podman", "container", "exists", probe], env=machine_env,
                                  ).returncode == 1
            assert probe in (Path(lab.hosts[1].dir) / "storage" / "overlay-containers" /
                             "containers.json").read_text()

        # every host's sshd runs in the host's own mount namespace
        inodes = {os.stat(f"/proc/{h.sshd_pid}/ns/mnt").st_ino for h in lab.hosts}
        assert len(inodes) == 3 and os.stat("/proc/self/ns/mnt").st_ino not in inodes
        assert all(row["mntns_ok"] for row in st["hosts"]), st

        # a crashed piece (h2's sshd killed; on podman also h2's API service) makes the lab
        # unhealthy, and the next `up` rebuilds it
        import signal

        h2 = lab.host("h2")
        os.kill(h2.sshd_pid, signal.SIGKILL)
        if runtime == "podman":
            os.kill(h2.podman_service_pid, signal.SIGKILL)
        end = time.monotonic() + 10
        while Lab().status()["healthy"] and time.monotonic() < end:
            time.sleep(0.1)
        assert not Lab().status()["healthy"]
        r = lab_cli("up", "--hosts", "3", "--runtime", runtime, timeout=UP_TIMEOUT)
        assert r.returncode == 0 and "removing the previous" in r.stderr, r.stderr[-2000:]
        lab = Lab()
        assert lab.status()["healthy"]
        inodes = {os.stat(f"/proc/{h.sshd_pid}/ns/mnt").st_ino for h in lab.hosts}
        r = subprocess.run(lab.ssh_argv("h1", f"{runtime} run -d --name lab-probe-h1 "
                                              f"--net=host {IMAGE_TAG} sleep infinity"),
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        probe = r.stdout.strip().splitlines()[-1]

        # a long-lived connection into every host (orch's keeper, left by `orch status`)
        kenv = {**os.environ, "ORCH_STATE_DIR": str(tmp_path / "state")}
        r = subprocess.run([sys.executable, "-m", "orchestrator", "status", str(lab.inventory_path),
                            "--no-requests", "--json"], cwd=ROOT, capture_output=True, text=True,
                           timeout=120, env=kenv)
        assert json.loads(r.stdout)["via"] == "fresh SSH connections", r.stderr
        from orchestrator import keeper

        end = time.monotonic() + 60
        while not (kept := keeper.running(base=tmp_path / "state")) and time.monotonic() < end:
            time.sleep(0.2)
        assert kept, "orch status left no keeper"
        sessions = {h.name: child_pids(h.sshd_pid) for h in lab.hosts if h.sshd_pid}
        assert sessions["h0"] and sessions["h1"], sessions

        state = LabState.load()
        assert state is not None
        if runtime == "podman":  # each host's API service answers, as podman.socket would
            from orchestrator.lab.runtime_shims import socket_answers

            assert all(socket_answers(str(lab.podman_socket(h))) for h in lab.hosts)
        pause_ids = []
        if runtime == "docker":
            for h in state.hosts:
                cp = lab.run_on(h, ["docker", "inspect", "-f", "{{.Id}}", str(h.pause_container)])
                pause_ids.append(cp.stdout.strip())
            assert all(pause_ids)
    finally:
        r = lab_cli("down", timeout=DOWN_TIMEOUT)
    assert r.returncode == 0, r.stderr[-2000:]

    # nothing left: namespaces, mounts, bridge, veths, FORWARD rule (and policy), processes,
    # containers, per-host dirs, state file
    assert not [n for n in netns_names() if n.startswith("orchlab-")]
    assert not lab_mounts()
    assert not procs_with_mntns(inodes), "processes still run in a lab host's mount namespace"
    from orchestrator.lab import lab_dir

    assert not (lab_dir() / "hosts").exists() and not (lab_dir() / "mntns").exists()
    assert BRIDGE not in links()
    assert not [x for x in links() if x.startswith("olab-")]
    assert not [x for x in forward_rules() if BRIDGE in x]
    assert forward_rules()[0] == policy_before
    for h in state.hosts:
        assert not pid_alive(h.sshd_pid), f"sshd {h.sshd_pid} of {h.name} still runs"
    # the open sessions were ended with their hosts, and the keeper, its connections
    # gone, left on its own
    assert not [p for ps in sessions.values() for p in ps if pid_alive(p)], sessions
    end = time.monotonic() + keeper.CHECK_S + 30
    while keeper.running(base=tmp_path / "state") and time.monotonic() < end:
        time.sleep(0.5)
    assert keeper.running(base=tmp_path / "state") == [], "the keeper outlived the lab"
    if state.dockerd_pid:
        assert not pid_alive(state.dockerd_pid), "the lab's dockerd still runs"
    for h in state.hosts:
        assert h.podman_service_pid or runtime == "docker"
        assert not pid_alive(h.podman_service_pid), f"{h.name}'s podman API service still runs"
    if runtime == "podman":  # its storage went with hosts/; nothing of it runs any more
        left = [d for d in os.listdir("/proc") if d.isdigit() and probe.encode() in
                _cmdline(int(d))]
        assert not left, f"processes of probe container {probe[:12]} survived lab down: {left}"
    else:
        for cid in [probe, *pause_ids]:  # works whether or not a dockerd still runs
            assert not Path(f"/var/lib/docker/containers/{cid}").exists(), cid[:12]
    assert not LabState.path().exists()
    # caches stay, so the next `up` is fast
    assert (image.cache_dir() / ".stage-fixups").exists() and model.model_dir().is_dir()

    r = lab_cli("down", timeout=DOWN_TIMEOUT)  # idempotent
    assert r.returncode == 0 and "nothing to do" in r.stderr, r.stderr

    if previous:  # put back the lab another test's fixture had up
        Lab().up(hosts=previous[0], runtime=previous[1], quiet=True)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_lab_needs_root() -> None:
    argv = [sys.executable, "-m", "orchestrator.lab.cli", "up"]
    if os.geteuid() == 0:
        argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv]
    r = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60,
                       env={**os.environ, "ORCH_LAB_DIR": "/nonexistent/orch-lab"})
    assert r.returncode == 1
    assert "needs root" in r.stderr


def test_write_inventory_is_valid_for_the_core(tmp_path: Path) -> None:
    from orchestrator.config import load_inventory
    from orchestrator.lab import write_inventory

    hosts = [SimpleNamespace(name=f"h{i}", ip=f"10.77.0.{11 + i}", nic=f"enp{i}s0")
             for i in range(3)]
    inv = load_inventory(write_inventory(tmp_path / "dp.yaml", hosts, "podman"))
    assert (inv.deployment, inv.playbook, inv.runtime, inv.head) == \
        ("lab-dp", "cpu-lab-dp", "podman", "h0")
    assert [(n.name, n.host, n.nic, n.ip) for n in inv.nodes] == [
        ("h0", "10.77.0.11", "enp0s0", "10.77.0.11"), ("h1", "10.77.0.12", "enp1s0", "10.77.0.12")]
    assert len({n.env["VLLM_CPU_OMP_THREADS_BIND"] for n in inv.nodes}) == min(2, os.cpu_count() or 1)
    assert [n.cpus for n in inv.nodes] == [n.env["VLLM_CPU_OMP_THREADS_BIND"] for n in inv.nodes]
    assert inv.ssh.known_hosts and inv.ssh.key and inv.model.served_name == "tiny"

    one = load_inventory(write_inventory(tmp_path / "one.yaml", hosts, "docker", nodes=1,
                                         deployment="single", playbook="cpu-lab-single"))
    assert (one.runtime, one.deployment, [n.name for n in one.nodes]) == ("docker", "single", ["h0"])


def test_fault_knob_rewrites_the_fake_tools(tmp_path: Path) -> None:
    from orchestrator.lab import fakes

    fakes.write_tools(tmp_path, {"link_down": 3}, host_index=1, all_indices=[0, 1])
    link = [subprocess.run([str(tmp_path / "hccn_tool"), "-i", str(d), "-link", "-g"],
                           capture_output=True, text=True).stdout.strip() for d in (2, 3)]
    assert link == ["link status: UP", "link status: DOWN"]
    fakes.write_tools(tmp_path, None, host_index=1, all_indices=[0, 1])
    r = subprocess.run([str(tmp_path / "hccn_tool"), "-i", "3", "-link", "-g"],
                       capture_output=True, text=True)
    assert r.stdout.strip() == "link status: UP"
    assert fakes.parse_fault("h1:link_down=3,no_ip=2") == ("h1", {"link_down": 3, "no_ip": 2})
    with pytest.raises(ValueError):
        fakes.parse_fault("h1:link_down")
