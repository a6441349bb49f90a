"""Preflight parsers against outputs recorded on the lab and on real hosts, and the preflight
scripts run for real (locally, with fake tools on PATH)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.preflight import cross, scripts
from orchestrator.preflight.parse import (
    Listener,
    NodeFacts,
    fill_runtime,
    image_id,
    is_vllm,
    parse_cross,
    parse_df,
    parse_gather,
    parse_listeners,
    parse_proc_net_tcp,
    parse_procs,
    parse_shm_files,
    shm_size_bytes,
)
from orchestrator.stage.manifest import MANIFEST_SCRIPT, parse_manifest

# `ss -ltnp` on a lab host while a vLLM head runs (iproute2 6.1, header included)
SS_LAB = """\
State  Recv-Q Send-Q Local Address:Port  Peer Address:PortProcess
LISTEN 0      100       10.77.0.11:34895      0.0.0.0:*    users:(("VLLM::DPCoordin",pid=27076,fd=16))
LISTEN 0      128       10.77.0.11:22         0.0.0.0:*    users:(("sshd",pid=23775,fd=4))
LISTEN 0      100       10.77.0.11:13345      0.0.0.0:*    users:(("vllm",pid=16225,fd=27))
LISTEN 0      4096               *:39289            *:*    users:(("vllm",pid=16225,fd=18))
"""
# `ss -Hltn` without root (no process column), IPv6 and a scoped address
SS_PLAIN = """\
LISTEN 0      4096         0.0.0.0:8000       0.0.0.0:*
LISTEN 0      128             [::]:22            [::]:*
LISTEN 0      128   fe80::1%enp1s0:29550         [::]:*
"""
PROC_NET_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0B004D0A:884F 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 163455 1
   1: 0B004D0A:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 116683 1
   2: 0B004D0A:0016 0C004D0A:D2F0 01 00000000:00000000 02:000A2B5D 00000000     0        0 176712 4
"""
DF_LAB = """\
Filesystem     1024-blocks     Used Available Capacity Mounted on
/dev/vda         264212084 31535444  74855468      30% /
/dev/nvme0n1p1  7440000000 10000000     40000      99% /mnt/models
"""
CID = "9ca6d5905d99c12e26a1c7840c51b8612bace2493c3e3c11e6cc234e0e7af6c6"


def test_ss_with_header_and_processes():
    ls = parse_listeners(SS_LAB)
    assert Listener("10.77.0.11", 13345, "vllm pid 16225") in ls
    assert Listener("*", 39289, "vllm pid 16225") in ls
    assert {x.port for x in ls} == {34895, 22, 13345, 39289}


def test_ss_without_header_ipv6_and_scoped():
    assert parse_listeners(SS_PLAIN) == [Listener("0.0.0.0", 8000), Listener("[::]", 22),
                                         Listener("fe80::1", 29550)]


def test_proc_net_tcp_fallback_keeps_only_listeners():
    assert parse_listeners("# /proc/net/tcp\n" + PROC_NET_TCP) == [
        Listener("10.77.0.11", 0x884F), Listener("10.77.0.11", 22)]
    assert parse_proc_net_tcp(PROC_NET_TCP)[1].port == 22


def test_df_posix_rows():
    d = parse_df(DF_LAB)
    assert [(x.mount, x.avail_bytes) for x in d] == [("/", 74855468 * 1024),
                                                     ("/mnt/models", 40000 * 1024)]


def test_procs_only_vllm_and_their_containers():
    text = (f"16225\t/libpod_parent/libpod-{CID} \t/opt/vllm/bin/python3 /opt/vllm/bin/vllm serve /m\n"
            "1859\t/system.slice/docker-" + "a" * 64 + ".scope \tVLLM::EngineCore_DP0\n"
            "4242\t/user.slice/user-0.slice/session-3.scope \tpython3 -m vllm.entrypoints.openai.api_server\n"
            "8505\t/ \tbash -c podman run -d orch vllm serve /m\n"
            "garbage line\n")
    ps = parse_procs(text)
    assert [(p.pid, p.in_container) for p in ps] == [(16225, True), (1859, True), (4242, False)]
    assert ps[0].container_ids == (CID,)


@pytest.mark.parametrize("args,want", [
    ("vllm serve /models/x --port 8000", True),
    ("VLLM::Worker_TP0", True),
    ("/usr/bin/python3.11 -X dev /usr/local/bin/vllm serve m", True),
    ("python3 -u -m vllm.entrypoints.cli.main serve m", True),
    ("sh -c vllm serve m", False),
    ("python3 train.py --vllm", False),
    ("docker run -d img vllm serve m", False),
])
def test_is_vllm(args, want):
    assert is_vllm(args) is want


def test_shm_files():
    assert [(s.path, s.held) for s in parse_shm_files(
        "held 4194304 /dev/shm/psm_1a2b\nfree 16777216 /dev/shm/vllm-abc def\nbogus\n")] == [
        ("/dev/shm/psm_1a2b", True), ("/dev/shm/vllm-abc def", False)]


@pytest.mark.parametrize("v,want", [("1g", 2**30), ("500g", 500 * 2**30), ("64m", 64 * 2**20),
                                    ("2gb", 2 * 2**30), ("1024", 1024), ("lots", None),
                                    (None, None)])
def test_shm_size_syntax(v, want):
    assert shm_size_bytes(v) == want


def test_cross_output():
    text = ("==== listen 13345 ====\nbound python3\naccepted 10.0.0.2\n==== rc 0 ====\n"
            "==== ping 10.0.0.2 ====\nvia tcp (no ping on this node)\nrefused\n==== rc 0 ====\n"
            "==== ping 10.0.0.3 ====\nPING ...\n1 packets transmitted, 0 received\n==== rc 1 ====\n"
            "==== tcp 10.0.0.1 8000 ====\ntimeout\n==== rc 1 ====\n"
            "==== hccn 0 ping 192.168.101.1 ====\n3 packets transmitted, 3 received, 0.00% "
            "packet loss\n==== rc 0 ====\n")
    c = parse_cross(text)
    assert c.listens[13345] == ["bound python3", "accepted 10.0.0.2"]
    assert c.pings["10.0.0.2"].ok and c.pings["10.0.0.2"].how == "tcp"
    assert not c.pings["10.0.0.3"].ok and c.pings["10.0.0.3"].how == "ping"
    assert c.connects[("10.0.0.1", 8000)] == "timeout"
    assert c.hccn.startswith("==== hccn 0 ping 192.168.101.1 ====")


def test_cross_args_validate_ips_and_keep_values_apart():
    assert cross.cross_args(["10.0.0.2"], [("10.0.0.1", 8000)], [(13345, 2)],
                              {0: ["192.168.1.1", "192.168.2.1"]}) == [
        "L", "13345", "2", str(cross.LISTEN_DEADLINE), "P", "10.0.0.2",
        "T", "10.0.0.1", "8000", str(cross.CONNECT_DEADLINE), "H", "0", "192.168.1.1,192.168.2.1"]
    with pytest.raises(ValueError):
        cross.cross_args(["10.0.0.2; reboot"])


@pytest.mark.parametrize("script", [scripts.gather_script("cpu"), scripts.gather_script("nvidia"),
                                    scripts.gather_script("cpu", False, False),
                                    scripts.runtime_script(), scripts.cross_script(),
                                    scripts.clean_script(), scripts.check_script("cpu"),
                                    scripts.check_script("nvidia", False, False)])
def test_scripts_are_posix_sh(script):
    shell = shutil.which("dash") or "sh"
    subprocess.run([shell, "-n"], input=script, text=True, check=True)


# ------------------------------------------------------------- scripts run for real

needs_tools = pytest.mark.skipif(not all(shutil.which(t) for t in ("sh", "ip", "ps", "df")),
                                 reason="needs sh, ip, ps, df")

FAKE_PODMAN = """#!/bin/sh
case "$1 $2" in
  "info --format") echo 4.3.1 ;;
  "image inspect") [ "$5" = "img:ok" ] && echo sha256:1111 || { echo "Error: $5: image not known" >&2; exit 125; } ;;
  "ps -a") echo %s ;;
  "inspect %s") cat %s ;;
  *) echo "fake podman: $*" >&2; exit 2 ;;
esac
"""


def _fake_bin(tmp: Path) -> Path:
    b = tmp / "bin"
    b.mkdir()
    inspect = tmp / "inspect.json"
    inspect.write_text(json.dumps([{"Id": CID, "Name": "/orch-x-h0-1", "State": {"Status": "running"},
                                    "Config": {"Labels": {"orch.deployment": "x", "orch.node": "h0",
                                                          "orch.spec": "abc"}}}]))
    (b / "podman").write_text(FAKE_PODMAN % (CID, CID, inspect))
    (b / "podman").chmod(0o755)
    return b


@needs_tools
def test_gather_script_runs_and_parses(tmp_path):
    b = _fake_bin(tmp_path)
    model = tmp_path / "model"
    model.mkdir()
    (model / "w.safetensors").write_bytes(b"x" * 5000)
    env = {"PATH": f"{b}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"}
    out = subprocess.run(["sh", "-c", scripts.gather_script("cpu"), "sh", "podman", "img:ok",
                          str(model)], capture_output=True, text=True, env=env, timeout=60).stdout
    f = parse_gather(out)
    assert f.complete and f.uid is not None
    assert f.runtime_path == str(b / "podman")
    assert f.runtime_info and f.runtime_info.text.strip() == "4.3.1"
    assert f.image and f.image.text.strip() == "sha256:1111"
    assert f.model == "ok" and f.model_bytes is not None and f.model_bytes >= 5000
    assert f.net is not None and any(i.name == "lo" for i in f.net.ifaces)
    assert f.disks and f.disks[0].mount == "/"
    assert f.shm is not None and f.shm.mount not in [d.mount for d in f.disks[1:]]
    assert [c.name for c in f.containers or []] == ["orch-x-h0-1"]
    assert f.listeners is None  # no planned ports: nobody asked who listens
    assert f.manifest is None
    assert f.uid == os.getuid()


@needs_tools
def test_gather_script_one_df_for_disks_and_shm_and_both_apart_when_it_fails(tmp_path):
    b = _fake_bin(tmp_path)
    calls = tmp_path / "df.calls"
    real = shutil.which("df")
    (b / "df").write_text(f'#!/bin/sh\necho "$*" >> {calls}\n'
                          f'case " $* " in *" /dev/shm "*) [ -e {tmp_path}/noshm ] && exit 1 ;; esac\n'
                          f'exec {real} "$@"\n')
    (b / "df").chmod(0o755)
    model = tmp_path / "model"
    model.mkdir()
    env = {"PATH": f"{b}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"}

    def gather():
        calls.write_text("")
        out = subprocess.run(["sh", "-c", scripts.gather_script("cpu"), "sh", "podman", "img:ok",
                              str(model)], capture_output=True, text=True, env=env, timeout=60).stdout
        return parse_gather(out), calls.read_text().splitlines()

    f, ran = gather()
    assert ran == [f"-Pk / {model} /dev/shm"]
    assert f.disks and f.disks[0].mount == "/" and f.shm is not None
    (tmp_path / "noshm").write_text("")  # df fails on /dev/shm: the disks are still read
    f, ran = gather()
    assert ran == [f"-Pk / {model} /dev/shm", f"-Pk / {model}", "-Pk /dev/shm"]
    assert f.disks and f.disks[0].mount == "/" and f.shm is None and f.complete


@needs_tools
@pytest.mark.skipif(not shutil.which("ss") or not shutil.which("python3"), reason="needs ss, python3")
def test_gather_script_asks_who_listens_only_when_a_planned_port_is_taken(tmp_path):
    b = _fake_bin(tmp_path)
    env = {"PATH": f"{b}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"}
    held, free = socket.socket(), _free_port()
    held.bind(("127.0.0.1", 0))
    held.listen(1)
    port = held.getsockname()[1]
    try:
        def listeners(ports: list[int]) -> list[Listener]:
            out = subprocess.run(["sh", "-c", scripts.gather_script("cpu"), "sh",
                                  *scripts.gather_args("podman", "img:ok", "/nonexistent", ports)],
                                 capture_output=True, text=True, env=env, timeout=60).stdout
            got = parse_gather(out).listeners
            assert got is not None
            return got

        mine = [x for x in listeners([free]) if x.port == port]
        assert mine and mine[0].process == ""  # `ss -ltn`: no process asked for
        if os.geteuid() == 0:  # `ss -p` names other users' processes for root only
            mine = [x for x in listeners([free, port]) if x.port == port]
            assert mine and mine[0].process.endswith(f" pid {os.getpid()}")
    finally:
        held.close()


@needs_tools
def test_gather_script_without_the_cli_sections_runs_no_runtime_command(tmp_path):
    b = tmp_path / "bin"
    b.mkdir()
    called = tmp_path / "called"
    (b / "podman").write_text(f"#!/bin/sh\ntouch {called}\nexit 2\n")
    (b / "podman").chmod(0o755)
    env = {"PATH": f"{b}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"}
    out = subprocess.run(["sh", "-c", scripts.gather_script("cpu", runtime_cli=False), "sh",
                          *scripts.gather_args("podman", "img:ok", "/nonexistent")],
                         capture_output=True, text=True, env=env, timeout=60).stdout
    f = parse_gather(out)
    assert f.complete and f.runtime_path == str(b / "podman")
    assert f.runtime_info is None and f.image is None and f.containers is None
    assert not called.exists()
    # the `runtime` script asks the CLI the same three questions the gather would have
    (tmp_path / "x").mkdir()
    b2 = _fake_bin(tmp_path / "x")
    out = subprocess.run(["sh", "-c", scripts.runtime_script(), "sh",
                          *scripts.gather_args("podman", "img:ok", "/m")], capture_output=True,
                         text=True, env={"PATH": f"{b2}:/usr/bin:/bin"}, timeout=60).stdout
    g = NodeFacts()
    fill_runtime(g, out)
    assert g.runtime_info and g.runtime_info.text.strip() == "4.3.1"
    assert image_id(g.image) == "1111"
    assert [c.name for c in g.containers or []] == ["orch-x-h0-1"]


@needs_tools
@pytest.mark.skipif(not shutil.which("b2sum") or not shutil.which("python3"),
                    reason="needs b2sum, python3")
def test_gather_script_manifest_section_and_vllm_processes(tmp_path):
    b = _fake_bin(tmp_path)
    model = tmp_path / "model"
    model.mkdir()
    (model / "w.safetensors").write_bytes(b"x" * 5000)
    (model / "config.json").write_text("{}")
    fake = tmp_path / "vllm"  # a process that looks like `vllm serve` to parse_procs
    fake.write_text("#!/usr/bin/env python3\nimport time\ntime.sleep(60)\n")
    fake.chmod(0o755)
    proc = subprocess.Popen([sys.executable, str(fake), "serve", "/models/x"])
    try:
        time.sleep(0.3)
        out = subprocess.run(["sh", "-c", scripts.gather_script("cpu"), "sh",
                              *scripts.gather_args("podman", "img:ok", str(model),
                                                   manifest=(MANIFEST_SCRIPT, str(tmp_path / "c")))],
                             capture_output=True, text=True, timeout=60,
                             env={"PATH": f"{b}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"}).stdout
    finally:
        proc.kill()
        proc.wait()
    f = parse_gather(out)
    assert f.manifest is not None
    m = parse_manifest("h0", f.manifest)
    assert m is not None and sorted(m.files) == ["config.json", "w.safetensors"]
    assert m.files["w.safetensors"][0] == 5000
    mine = [p for p in f.procs if p.pid == proc.pid]
    assert mine and mine[0].args == f"{sys.executable} {fake} serve /models/x"
    assert not any("orch-preflight" in p.args for p in f.procs)


@needs_tools
def test_gather_script_image_and_model_missing(tmp_path):
    b = _fake_bin(tmp_path)
    env = {"PATH": f"{b}:/usr/bin:/bin:/usr/sbin:/sbin"}
    out = subprocess.run(["sh", "-c", scripts.gather_script("cpu"), "sh", "podman", "img:gone",
                          str(tmp_path / "nope")], capture_output=True, text=True, env=env,
                         timeout=60).stdout
    f = parse_gather(out)
    assert f.image is not None and f.image.rc == 125
    assert f.model == "missing"
    assert f.disks and [d.mount for d in f.disks] == [f.disks[0].mount]  # only /


def test_gather_takes_inventory_values_as_data(tmp_path):
    """A hostile model path reaches the tools as one literal argument."""
    b = _fake_bin(tmp_path)
    flag = tmp_path / "pwned"
    evil = f"/x; touch {flag}; $(touch {flag})"
    subprocess.run(["sh", "-c", scripts.gather_script("cpu"), "sh", "podman", f"img:ok`touch {flag}`",
                    evil], capture_output=True, text=True, timeout=60,
                   env={"PATH": f"{b}:/usr/bin:/bin:/usr/sbin:/sbin"})
    assert not flag.exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.skipif(not (shutil.which("python3") or shutil.which("perl")), reason="no listener tool")
def test_cross_script_listens_connects_and_tears_down():
    port = _free_port()
    listen = subprocess.Popen(["sh", "-c", scripts.cross_script(), "sh",
                               *cross.cross_args(listen=[(port, 1)])],
                              stdout=subprocess.PIPE, text=True)
    conn = subprocess.run(["sh", "-c", scripts.cross_script(), "sh",
                           *cross.cross_args(ping=["127.0.0.1"], connect=[("127.0.0.1", port)])],
                          capture_output=True, text=True, timeout=30)
    out, _ = listen.communicate(timeout=30)
    lc, cc = parse_cross(out), parse_cross(conn.stdout)
    assert lc.listens[port][0].startswith("bound") and "accepted 127.0.0.1" in lc.listens[port]
    assert cc.connects[("127.0.0.1", port)] == "connected"
    assert cc.pings["127.0.0.1"].ok
    with socket.socket() as s:  # the listener is gone
        assert s.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.skipif(not shutil.which("python3"), reason="needs python3")
def test_cross_script_listener_says_ready_first_and_a_connect_waits_for_it():
    port = _free_port()
    conn = subprocess.Popen(["sh", "-c", scripts.cross_script(), "sh",
                             *cross.cross_args(connect=[("127.0.0.1", port)])],
                            stdout=subprocess.PIPE, text=True)
    time.sleep(1.5)  # refused meanwhile: retried
    listen = subprocess.Popen(["sh", "-c", scripts.cross_script(), "sh",
                               *cross.cross_args(listen=[(port, 1)])],
                              stdout=subprocess.PIPE, text=True)
    assert listen.stdout is not None
    assert listen.stdout.readline() == f"==== ready {port} ====\n"  # before the rest
    cout, _ = conn.communicate(timeout=30)
    lout, _ = listen.communicate(timeout=30)
    assert parse_cross(cout).connects[("127.0.0.1", port)] == "connected"
    assert "accepted 127.0.0.1" in parse_cross(lout).listens[port]


@needs_tools
@pytest.mark.skipif(not shutil.which("ss") or not shutil.which("python3"), reason="needs ss, python3")
def test_check_script_gathers_and_runs_the_cross_ops_in_one_exec(tmp_path):
    b = _fake_bin(tmp_path)
    port = _free_port()
    env = {"PATH": f"{b}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"}
    argv = ["sh", "-c", scripts.check_script("cpu"), "sh",
            *scripts.gather_args("podman", "img:ok", str(tmp_path), [port]),
            *cross.cross_args(ping=["127.0.0.1"], connect=[("127.0.0.1", port)],
                                listen=[(port, 1)])]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env) as p:
        assert p.stdout is not None
        first = p.stdout.readline()
        out = p.stdout.read()
        assert p.wait(timeout=60) == 0
    assert first == f"==== ready {port} ====\n"  # before any section
    f, c = parse_gather(out), parse_cross(out)
    assert f.complete and f.listeners is not None
    assert port not in [x.port for x in f.listeners]  # ss ran before orch's own listener
    assert c.listens[port][0] == "bound python3" and "accepted 127.0.0.1" in c.listens[port]
    assert c.connects[("127.0.0.1", port)] == "connected" and c.pings["127.0.0.1"].ok


@pytest.mark.skipif(not shutil.which("perl"), reason="needs perl")
def test_cross_script_perl_listener_when_no_python(tmp_path):
    """Hosts without python3 still get a listener (perl-base is on every Debian/Ubuntu)."""
    b = tmp_path / "bin"
    b.mkdir()
    for t in ("perl", "sh", "sleep", "date", "cat", "rm", "mktemp", "printf", "timeout", "bash"):
        if shutil.which(t):
            (b / t).symlink_to(shutil.which(t))  # type: ignore[arg-type]
    port = _free_port()
    p = subprocess.Popen([str(b / "sh"), "-c", scripts.cross_script(), "sh",
                          *cross.cross_args(listen=[(port, 1)])],
                         stdout=subprocess.PIPE, text=True, env={"PATH": str(b)})
    c = subprocess.run(["sh", "-c", scripts.cross_script(), "sh",
                        *cross.cross_args(connect=[("127.0.0.1", port)])],
                       capture_output=True, text=True, timeout=30)
    out, _ = p.communicate(timeout=30)
    assert out.startswith(f"==== ready {port} ====\n")
    assert parse_cross(out).listens[port][0] == "bound perl"
    assert parse_cross(c.stdout).connects[("127.0.0.1", port)] == "connected"


@pytest.mark.parametrize("tool", ["python3", "perl"])
def test_a_listener_does_not_count_a_client_that_sends_data(tmp_path, tool):
    """A router health-checking a replica being redeployed hits orch's test listener on the
    replica's port from the node orch connects from: counted, it ended the listener, and
    orch's own connect was then refused (a fleet redeploy's preflight failed)."""
    if not (shutil.which(tool) and shutil.which("bash") and shutil.which("timeout")):
        pytest.skip(f"needs {tool}, bash, timeout")
    env = None
    if tool == "perl":  # no python3 on the PATH: the perl listener
        b = tmp_path / "bin"
        b.mkdir()
        for t in ("perl", "sh", "sleep", "date", "cat", "rm", "mktemp", "printf", "timeout", "bash"):
            if shutil.which(t):
                (b / t).symlink_to(shutil.which(t))  # type: ignore[arg-type]
        env = {"PATH": str(b)}
    port = _free_port()
    p = subprocess.Popen(["sh", "-c", scripts.cross_script(), "sh",
                          *cross.cross_args(listen=[(port, 1)])],
                         stdout=subprocess.PIPE, text=True, env=env)
    assert p.stdout is not None
    assert p.stdout.readline() == f"==== ready {port} ====\n"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as probe:
        probe.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        probe.settimeout(5)
        with contextlib.suppress(ConnectionResetError):  # closed unread: a reset
            assert probe.recv(64) == b""
    c = subprocess.run(["sh", "-c", scripts.cross_script(), "sh",
                        *cross.cross_args(connect=[("127.0.0.1", port)])],
                       capture_output=True, text=True, timeout=30)
    out, _ = p.communicate(timeout=30)
    assert p.returncode == 0
    lines = parse_cross(out).listens[port]
    assert lines[0] == f"bound {tool}"
    assert lines[1:] == ["ignored 127.0.0.1 (it sent data: not a preflight connect)",
                         "accepted 127.0.0.1"], lines
    assert parse_cross(c.stdout).connects[("127.0.0.1", port)] == "connected"


@pytest.mark.skipif(not (shutil.which("bash") and shutil.which("timeout")), reason="needs bash")
def test_cross_script_reaches_a_peer_over_tcp_where_ping_is_missing(tmp_path):
    b = tmp_path / "bin"
    b.mkdir()
    for t in ("sh", "bash", "timeout", "cat", "rm", "mktemp", "sleep"):
        (b / t).symlink_to(shutil.which(t))  # type: ignore[arg-type]
    out = subprocess.run([str(b / "sh"), "-c", scripts.cross_script(), "sh",
                          *cross.cross_args(ping=["127.0.0.1"])],
                         capture_output=True, text=True, timeout=30, env={"PATH": str(b)}).stdout
    r = parse_cross(out).pings["127.0.0.1"]
    assert r.how == "tcp" and r.ok, out  # port 22 connected or refused: the host answered


def test_cross_script_reports_a_busy_port():
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen(1)
        port = s.getsockname()[1]
        out = subprocess.run(["sh", "-c", scripts.cross_script(), "sh",
                              *cross.cross_args(listen=[(port, 1)])],
                             capture_output=True, text=True, timeout=30).stdout
    assert parse_cross(out).listens[port][0].startswith("busy")


def test_clean_script_removes_only_old_unheld_segments(tmp_path):
    """Run against a private /dev/shm stand-in: the script's paths are fixed, so check the
    logic by rewriting the directory (the real one is covered by the lab test)."""
    shm = tmp_path / "shm"
    shm.mkdir()
    old, young, held = shm / "psm_old", shm / "vllm-young", shm / "psm_held"
    for p in (old, young, held):
        p.write_bytes(b"x")
    subprocess.run(["touch", "-d", "2 hours ago", str(old), str(held)], check=True)
    script = scripts.clean_script().replace("/dev/shm/", f"{shm}/")
    with held.open("rb"):
        out = subprocess.run(["sh", "-c", script], capture_output=True, text=True,
                             timeout=60).stdout
    assert f"removed {old}" in out
    assert not old.exists() and young.exists() and held.exists()
    assert f"kept {held} (in use)" in out and f"kept {young} (younger than 60s)" in out


def test_a_section_runs_in_the_scripts_shell_and_ends_on_a_line_of_its_own():
    """`run` does not capture the command in a subshell (a fork per section): output without
    a final newline still has its end mark on a line of its own, and the exit code is kept."""
    from orchestrator.hw import split_probe_output

    script = scripts._COMMON + "run a printf 'no newline'\nrun b sh -c 'echo x; exit 3'\nrun c true\n"
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30).stdout
    secs = split_probe_output(out)
    assert (secs[("a",)].text.strip(), secs[("a",)].rc) == ("no newline", 0)
    assert (secs[("b",)].text.strip(), secs[("b",)].rc) == ("x", 3)
    assert (secs[("c",)].text.strip(), secs[("c",)].rc) == ("", 0)


# ------------------------------------------- programs a node runs (the lab's 2 cores, N nodes)

def _recording_bin(tmp: Path, tools: tuple[str, ...]) -> tuple[Path, Path]:
    """A PATH directory where each of `tools` notes its name in a log, then runs the real one."""
    b = _fake_bin(tmp)
    log = tmp / "ran"
    log.write_text("")
    for t in tools:
        real = shutil.which(t)
        if real:
            (b / t).write_text(f'#!/bin/sh\necho {t} >> {log}\nexec {real} "$@"\n')
            (b / t).chmod(0o755)
    return b, log


REMOVED = ("mktemp", "rm", "cat", "timeout", "du", "b2sum")  # what a dialing node used to run


@needs_tools
@pytest.mark.skipif(not all(shutil.which(t) for t in ("bash", "b2sum", "ping", "python3")),
                    reason="needs bash, b2sum, ping, python3")
def test_a_node_that_only_dials_runs_its_check_without_temporary_files(tmp_path):
    """The one-exec check of a node that opens no test listener: gather, then connects and
    pings in the foreground, straight to the output (no temporary directory, no `timeout`, no
    du beside the manifest, no b2sum for the cache key of a model path that is real)."""
    b, log = _recording_bin(tmp_path, REMOVED)
    model = tmp_path / "model"
    model.mkdir()
    (model / "w.safetensors").write_bytes(b"x" * 5000)
    cache = tmp_path / "cache"
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        port = srv.getsockname()[1]
        env = {"PATH": f"{b}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "TMPDIR": str(tmp_path)}

        def check() -> str:
            return subprocess.run(
                ["sh", "-c", scripts.check_script("cpu", runtime_cli=False), "sh",
                 *scripts.gather_args("podman", "img:ok", str(model),
                                      manifest=(MANIFEST_SCRIPT, str(cache))),
                 *cross.cross_args(ping=["127.0.0.1"], connect=[("127.0.0.1", port)])],
                capture_output=True, text=True, timeout=60, env=env).stdout

        check()  # the first look writes the manifest's cache
        log.write_text("")
        out = check()
    f, c = parse_gather(out), parse_cross(out)
    assert f.complete and f.model == "ok" and f.model_bytes is None  # sized by the manifest
    m = parse_manifest("h0", f.manifest or "")
    assert m is not None and m.bytes == 5000
    assert c.connects[("127.0.0.1", port)] == "connected" and c.pings["127.0.0.1"].ok
    assert log.read_text().split() == []  # none of REMOVED ran
    from orchestrator.stage.manifest import cache_key
    assert [p.name for p in cache.iterdir()] == [f"{cache_key(str(model))}.tsv"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin", "cache", "inspect.json", "model", "ran"]


@pytest.mark.skipif(not shutil.which("b2sum"), reason="needs b2sum")
def test_the_manifest_cache_key_is_the_real_paths_whoever_computes_it(tmp_path):
    """orch passes the key of the model path (MKEY); the node takes it only where that path is
    the directory's real path, and hashes the real path itself otherwise (a symlink) or when
    the key is not one (32 hex digits)."""
    from orchestrator.stage.manifest import cache_key
    real = tmp_path / "real"
    real.mkdir()
    (real / "a").write_text("a")
    link = tmp_path / "link"
    link.symlink_to(real)
    for path, mkey in ((real, cache_key(str(real))), (link, cache_key(str(link))),
                       (real, "../../etc/x"), (real, "")):
        cache = tmp_path / f"cache-{len(list(tmp_path.iterdir()))}"
        script = f'MKEY="$1"; shift; set -- "$@"; {MANIFEST_SCRIPT}'
        r = subprocess.run(["sh", "-c", script, "sh", mkey, str(path), str(cache)],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stdout + r.stderr
        assert [p.name for p in cache.iterdir()] == [f"{cache_key(str(real))}.tsv"], (path, mkey)


@pytest.mark.skipif(not shutil.which("bash"), reason="needs bash")
def test_connects_retry_a_refused_port_until_its_deadline_and_leave_nothing_behind(tmp_path):
    """One bash for all of a node's connects: a listener that starts late is reached, a port
    nobody opens is `refused` at the deadline (4 s here), in the order the ops came."""
    late, never = _free_port(), _free_port()
    starter = subprocess.Popen([sys.executable, "-c", (
        "import socket, time; time.sleep(1); s = socket.socket(); "
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
        f"s.bind(('127.0.0.1', {late})); s.listen(4); time.sleep(6)")])
    try:
        t0 = time.monotonic()
        r = subprocess.run(["sh", "-c", scripts.cross_script(), "sh",
                            "T", "127.0.0.1", str(never), "4", "T", "127.0.0.1", str(late), "4"],
                           capture_output=True, text=True, timeout=30)
        took = time.monotonic() - t0
    finally:
        starter.kill()
        starter.wait()
    c = parse_cross(r.stdout)
    assert c.connects == {("127.0.0.1", never): "refused", ("127.0.0.1", late): "connected"}, r.stdout
    assert r.stdout.index(f"tcp 127.0.0.1 {never}") < r.stdout.index(f"tcp 127.0.0.1 {late}")
    assert took < 10
    left = subprocess.run(["pgrep", "-f", f"/dev/tcp/\\$1/\\$2|127.0.0.1 {never}"],
                          capture_output=True, text=True)
    assert left.stdout == ""
