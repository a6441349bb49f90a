"""Lab hosts differ like real machines: each has its own /srv/orch-lab and /var/cache/orch
(seen through ssh and through `lab.run_on`), and on podman its own container storage and API
service, and a way to lack the lab image (`hide_image`) and get it back (`restore_image`).

Runs on the session `lab` fixture (tests/lab/conftest.py); the podman-only parts skip on the
docker lab (dockerd is one daemon shared by all hosts: see docs/lab.md)."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import httpx
import pytest

IMAGE = "localhost/orch-lab/vllm-cpu:0.32.0"
TINY = "localhost/orch-lab/iso-tiny:1"


def ssh(lab, host: str, cmd: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(lab.ssh_argv(host, cmd), capture_output=True, text=True,
                          timeout=timeout)


def only_podman(lab) -> None:
    if lab.runtime != "podman":
        pytest.skip("podman only: per-host storage and API services (docker: one dockerd)")


def machine_env() -> dict[str, str]:
    """The machine's own podman (its storage is the lab's shared image store)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("CONTAINERS_")}


@pytest.mark.parametrize("private", ["/srv/orch-lab", "/var/cache/orch"])
def test_private_dirs_are_per_host(lab, private: str) -> None:
    tag = uuid.uuid4().hex[:12]
    name = f"iso-{tag}"
    r = ssh(lab, "h0", f"echo {tag} > {private}/{name} && cat {private}/{name}")
    assert r.returncode == 0 and r.stdout.strip() == tag, r.stderr
    try:
        # h0 sees it through ssh and run_on; h1 through neither; the machine does not either
        assert lab.run_on("h0", ["cat", f"{private}/{name}"]).stdout.strip() == tag
        r = ssh(lab, "h1", f"test -e {private}/{name}; echo $?")
        assert r.returncode == 0 and r.stdout.strip() == "1", r.stdout + r.stderr
        assert lab.run_on("h1", ["test", "-e", f"{private}/{name}"]).returncode == 1
        assert not Path(private, name).exists()
        # it lives in h0's backing dir, which a test may also fill directly
        assert (lab.private_dir("h0", private) / name).read_text().strip() == tag
        (lab.private_dir("h2", private) / name).write_text("h2's own\n")
        assert ssh(lab, "h2", f"cat {private}/{name}").stdout == "h2's own\n"
        assert ssh(lab, "h0", f"cat {private}/{name}").stdout.strip() == tag
        # run_on writes into the host's dir as well (relative paths: this process's cwd)
        lab.run_on("h1", ["sh", "-c", f"echo h1 > {private}/{name}"], check=True)
        assert (lab.private_dir("h1", private) / name).read_text() == "h1\n"
        assert ssh(lab, "h0", f"cat {private}/{name}").stdout.strip() == tag
    finally:
        for h in lab.hosts:
            (lab.private_dir(h, private) / name).unlink(missing_ok=True)


def test_podman_hosts_have_their_own_processes_and_shm(lab) -> None:
    """A process started on h1 is in h1's /proc (under h1's PID), not in h0's; each host's
    /dev/shm is its own; the PIDs lab.json records are the machine's."""
    only_podman(lab)
    tag = uuid.uuid4().hex[:12]
    r = ssh(lab, "h1", f"bash --norc -c 'exec -a iso-{tag} sleep 60' </dev/null >/dev/null 2>&1 & echo $!; "
                       f"echo {tag} > /dev/shm/iso-{tag}")
    assert r.returncode == 0, r.stderr
    inner = int(r.stdout.split()[0])
    from orchestrator.lab.hosts import outer_pid

    outer = outer_pid(lab.host("h1"), inner)
    try:
        assert outer is not None and outer != inner
        assert f"iso-{tag}" in Path(f"/proc/{outer}/cmdline").read_bytes().decode()
        seen = ssh(lab, "h1", f"cat /proc/{inner}/cmdline; echo; ls /proc | grep -c '^[0-9]'")
        assert f"iso-{tag}" in seen.stdout, seen.stdout
        assert int(seen.stdout.split()[-1]) < 50, seen.stdout  # the host's few, not the machine's
        assert f"iso-{tag}" not in ssh(lab, "h0", "cat /proc/[0-9]*/cmdline").stdout
        assert ssh(lab, "h1", f"cat /dev/shm/iso-{tag}").stdout.strip() == tag
        assert ssh(lab, "h0", f"test -e /dev/shm/iso-{tag}; echo $?").stdout.strip() == "1"
        assert not Path(f"/dev/shm/iso-{tag}").exists()
        for h in lab.hosts:  # machine PIDs, in the host's PID namespace
            assert os.stat(f"/proc/{h.sshd_pid}/ns/pid").st_ino == os.stat(h.pid_ns).st_ino
            assert "sshd" in Path(f"/proc/{h.sshd_pid}/cmdline").read_bytes().decode()
    finally:
        ssh(lab, "h1", f"kill {inner}; rm -f /dev/shm/iso-{tag}")


def test_podman_hosts_keep_their_locks_and_state_apart(lab) -> None:
    """No podman state is shared between hosts: file locks and engine state under each
    host's own run dir, not the machine's /dev/shm/libpod_lock or /run/libpod."""
    only_podman(lab)
    for h in lab.hosts:
        r = ssh(lab, h.name, "podman info --format '{{.Store.RunRoot}} {{.Host.EventLogger}}'; "
                             "grep -E '^(lock_type|tmp_dir)' $CONTAINERS_CONF")
        assert r.returncode == 0, r.stderr
        run_dir = f"{h.dir}/run"
        assert r.stdout.split()[:2] == [f"{run_dir}/storage", "file"], r.stdout
        assert 'lock_type = "file"' in r.stdout and f'tmp_dir = "{run_dir}/libpod"' in r.stdout
        assert (Path(run_dir) / "libpod" / "locks").is_dir()  # podman has used them


def _api(lab, host, path: str) -> httpx.Response:
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(lab.podman_socket(host))),
                      timeout=30) as c:
        return c.get(f"http://d{path}")


def test_podman_storage_and_api_service_per_host(lab) -> None:
    only_podman(lab)
    names = {h.name: f"iso-{h.name}-{uuid.uuid4().hex[:6]}" for h in lab.hosts[:2]}
    try:
        for host, name in names.items():
            r = ssh(lab, host, f"podman run -d --name {name} --net=host {IMAGE} sleep infinity")
            assert r.returncode == 0, r.stderr
        roots = {h.name: ssh(lab, h.name, "podman info --format '{{.Store.GraphRoot}}'").stdout.strip()
                 for h in lab.hosts}
        assert roots == {h.name: f"{h.dir}/storage" for h in lab.hosts}, roots
        def only_own(host: str, listed: list[str]) -> None:
            assert [n for n in names.values() if n in listed] == \
                ([names[host]] if host in names else []), (host, listed)

        for h in lab.hosts:
            # the CLI of an ssh session lists only this host's containers
            r = ssh(lab, h.name, "podman ps -a --format '{{.Names}}'")
            assert r.returncode == 0, r.stderr
            only_own(h.name, r.stdout.split())
            # and so does the host's API service, on its machine path and, from inside the
            # host, on /run/podman/podman.sock (what orch reaches over SSH)
            assert _api(lab, h, "/_ping").text == "OK"
            only_own(h.name, [c["Names"][0].lstrip("/")
                              for c in _api(lab, h, "/containers/json?all=true").json()])
            r = ssh(lab, h.name, "curl -sf --unix-socket /run/podman/podman.sock "
                                 "'http://d/containers/json?all=true'")
            assert r.returncode == 0, r.stderr
            only_own(h.name, [c["Names"][0].lstrip("/") for c in json.loads(r.stdout)])
            assert ssh(lab, h.name, "curl -sf --unix-socket /run/podman/podman.sock "
                                    "http://d/_ping").stdout == "OK"
        # the machine's own podman has none of them
        r = subprocess.run(["podman", "ps", "-a", "--format", "{{.Names}}"], env=machine_env(),
                           capture_output=True, text=True, timeout=60)
        assert not set(r.stdout.split()) & set(names.values())
    finally:
        for host, name in names.items():
            lab.run_on(host, ["podman", "rm", "-f", "-t", "0", name])


def _tiny_archive(tmp_path: Path) -> Path:
    """A small image (one file), made and saved with the machine's podman."""
    root = tmp_path / "rootfs"
    root.mkdir()
    (root / "hello").write_text("hi\n")
    tar = tmp_path / "rootfs.tar"
    subprocess.run(["tar", "-C", str(root), "-cf", str(tar), "."], check=True)
    env = machine_env()
    subprocess.run(["podman", "import", str(tar), TINY], env=env, check=True,
                   capture_output=True, timeout=120)
    archive = tmp_path / "tiny.tar"
    subprocess.run(["podman", "save", "-o", str(archive), TINY], env=env, check=True,
                   capture_output=True, timeout=120)
    return archive


def _images(lab, host: str) -> dict[str, str]:
    """{repo:tag: "true"/"false" (read-only: from the shared store)} as the host sees them."""
    r = lab.run_on(host, ["podman", "images", "--format", "{{.Repository}}:{{.Tag}} {{.ReadOnly}}"],
                   check=True)
    return dict(line.split() for line in r.stdout.splitlines())


def test_hide_image_and_restore_image(lab, tmp_path: Path) -> None:
    only_podman(lab)
    from orchestrator.lab.state import LabState

    archive = _tiny_archive(tmp_path)  # TINY is now a shared image too (machine storage)
    name = f"iso-h1-{uuid.uuid4().hex[:6]}"
    try:
        assert ssh(lab, "h1", f"podman run -d --name {name} --net=host {IMAGE} sleep infinity"
                   ).returncode == 0
        before = _images(lab, "h1")
        assert (before[IMAGE], before[TINY]) == ("true", "true"), before

        lab.hide_image("h1")
        state = LabState.load()
        assert state and [h.image_hidden for h in state.hosts] == [False, True, False]
        # h1 lacks the image, through ssh and run_on, and its API service agrees; h0, h2 do not
        r = ssh(lab, "h1", f"podman image inspect {IMAGE}")
        assert r.returncode != 0 and "image not known" in r.stderr, r.stdout + r.stderr
        assert lab.run_on("h1", ["podman", "image", "inspect", IMAGE]).returncode != 0
        assert _api(lab, "h1", f"/images/{IMAGE}/json").status_code == 404
        for other in ("h0", "h2"):
            assert ssh(lab, other, f"podman image inspect {IMAGE}").returncode == 0
            assert _api(lab, other, f"/images/{IMAGE}/json").status_code == 200
        # its container of the lab image went with it (as `podman rmi -f` does)
        assert name not in ssh(lab, "h1", "podman ps -a --format '{{.Names}}'").stdout.split()

        # `podman load` on h1 writes into h1's own storage: a private copy, not shared
        r = ssh(lab, "h1", f"podman load -i {archive}")
        assert r.returncode == 0, r.stderr
        assert _images(lab, "h1") == {TINY: "false"}  # only what it loaded
        assert TINY.split(":")[0] in (Path(lab.host("h1").dir) / "storage" / "overlay-images" /
                                      "images.json").read_text()
        assert _images(lab, "h0") == before

        # restore: the shared store is back, the private copy is gone
        lab.restore_image("h1")
        assert _images(lab, "h1") == before
        assert ssh(lab, "h1", f"podman image inspect {IMAGE}").returncode == 0
        assert _api(lab, "h1", f"/images/{IMAGE}/json").status_code == 200
        assert not [h for h in LabState.load().hosts if h.image_hidden]  # type: ignore[union-attr]

        # `lab up` on the healthy lab clears a hidden image, as it clears faults
        lab.hide_image("h2")
        lab.up(hosts=len(lab.hosts), runtime="podman", quiet=True)  # reloads lab.json
        assert ssh(lab, "h2", f"podman image inspect {IMAGE}").returncode == 0
        assert not [h for h in LabState.load().hosts if h.image_hidden]  # type: ignore[union-attr]
    finally:
        lab.run_on("h1", ["podman", "rm", "-f", "-t", "0", name])
        for h in ("h1", "h2"):
            if lab.host(h).image_hidden:
                lab.restore_image(h)
        subprocess.run(["podman", "rmi", "-f", TINY], env=machine_env(), capture_output=True,
                       timeout=120)
