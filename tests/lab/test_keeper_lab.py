"""How `orch status` reaches the nodes, on the lab (real sshd, real podman/docker; no vLLM
needed): container state read through the runtime's API socket over SSH, through the CLI
when the socket cannot be reached, and through a keeper of kept connections; all three must
say the same.  The keeper's socket is private, it stops on `orch down` and when idle."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import yaml

from orchestrator import keeper
from orchestrator.cluster import Deployment, open_session
from orchestrator.errors import CommandError
from orchestrator.remote import Shell
from tests.lab.conftest import containers, wait_for

DEP = "keep"


def inventory(lab, tmp_path: Path, name: str, **fields: object) -> Path:  # type: ignore[no-untyped-def]
    from orchestrator.lab import write_inventory

    p = write_inventory(tmp_path / f"{name}.yaml", lab.hosts, lab.runtime, nodes=3, deployment=DEP)
    d = yaml.safe_load(p.read_text())
    for k, v in fields.items():
        if k == "persist":
            d["ssh"]["persist"] = v
        else:
            d[k] = v
    d["overrides"] = {"data_parallel": 3}
    p.write_text(yaml.safe_dump(d))
    return p


def start(lab, node: str, spec: str, *, exit_code: int | None = None) -> str:  # type: ignore[no-untyped-def]
    """A real container with orch's labels (not vLLM: a sleep, or one that exits)."""
    from orchestrator.lab import IMAGE_TAG

    cmd = ["-c", "sleep 600"] if exit_code is None else ["-c", f"exit {exit_code}"]
    r = lab.run_on(node, [lab.runtime, "run", "-d", "--name", f"orch-{DEP}-{node}-test",
                          "--label", f"orch.deployment={DEP}", "--label", f"orch.node={node}",
                          "--label", f"orch.spec={spec}", "--entrypoint", "/bin/sh", IMAGE_TAG, *cmd],
                   check=True)
    return r.stdout.strip().splitlines()[-1]


def view(st: dict) -> list[tuple]:
    return [(n["name"], n["reachable"], n["state"], n["spec_hash"], n["drift"], n["container"])
            for n in st["nodes"]]


def test_api_cli_and_keeper_see_the_same(lab, orch, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    inv = inventory(lab, tmp_path, "api")
    inv_off = inventory(lab, tmp_path, "off", runtime_socket="off")
    inv_missing = inventory(lab, tmp_path, "missing", runtime_socket="/run/orch-test-no-such.sock")
    plan = json.loads(orch("plan", str(inv), "--json").stdout)
    want = {n["name"]: n["spec_hash"] for n in plan["nodes"]}
    try:
        start(lab, "h0", want["h0"])
        start(lab, "h1", "0ld5pec", exit_code=3)  # an exited rank of an older spec: drift
        wait_for(lambda: containers(lab, f"orch.deployment={DEP}")["h1"][0]["status"] == "exited", 30,
                 what="the exiting container to exit")

        fresh = orch("status", str(inv), "--json", "--no-requests", "--fresh")
        assert fresh.returncode == 1, fresh.stderr  # nothing answers on the API: unhealthy
        api = json.loads(fresh.stdout)
        assert view(api) == [
            ("h0", True, "running", want["h0"], False, f"orch-{DEP}-h0-test"),
            ("h1", True, "exited (3)", "0ld5pec", True, f"orch-{DEP}-h1-test"),
            ("h2", True, "missing", None, False, None)]
        assert [n["containers_via"] for n in api["nodes"]] == ["api"] * 3
        assert api["via"] == "fresh SSH connections"
        assert keeper.running(base=orch.state_dir) == []  # --fresh leaves no keeper

        for other in (inv_off, inv_missing):  # the CLI, chosen or as the fallback
            st = json.loads(orch("status", str(other), "--json", "--no-requests", "--fresh").stdout)
            assert view(st) == view(api)
            assert [n["containers_via"] for n in st["nodes"]] == ["cli"] * 3

        # the first plain status connects itself and leaves a keeper; the next one uses it
        first = json.loads(orch("status", str(inv), "--json", "--no-requests").stdout)
        assert first["via"] == "fresh SSH connections" and view(first) == view(api)
        pids = wait_for(lambda: keeper.running(DEP, base=orch.state_dir), 60, what="the keeper")
        sock = wait_for(lambda: next((orch.state_dir / "keepers").glob("*.sock"), None), 60,
                        what="the keeper's socket")
        kept = json.loads(orch("status", str(inv), "--json", "--no-requests").stdout)
        assert kept["via"] == f"kept connections (keeper pid {pids[0]})"
        assert view(kept) == view(api)

        # what the keeper reports is looked at per request, not remembered
        lab.run_on("h1", [lab.runtime, "rm", "-f", f"orch-{DEP}-h1-test"], check=True)
        again = json.loads(orch("status", str(inv), "--json", "--no-requests").stdout)
        assert again["via"] == kept["via"]
        assert [n["state"] for n in again["nodes"]] == ["running", "missing", "missing"]

        # only its user can reach it: 0600 socket in a 0700 directory
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
        probe = ("import socket,sys; s=socket.socket(socket.AF_UNIX); "
                 "s.connect(sys.argv[1]); print('connected')")
        r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                            sys.executable, "-c", probe, str(sock)], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode != 0 and "connected" not in r.stdout
        assert "Permission denied" in r.stderr

        # an inventory with other connections (another runtime socket) gets its own keeper
        orch("status", str(inv_off), "--json", "--no-requests")
        wait_for(lambda: len(keeper.running(DEP, base=orch.state_dir)) == 2, 60, what="a 2nd keeper")
    finally:
        r = orch("down", str(inv))
    assert r.returncode == 0, r.stderr
    assert keeper.running(base=orch.state_dir) == []  # down stopped both
    assert all(not cs for cs in containers(lab, f"orch.deployment={DEP}").values())
    assert not list((orch.state_dir / "keepers").glob("*.sock"))
    assert not list((orch.state_dir / "keepers").glob("*.pid"))


def test_keeper_leaves_when_idle(lab, orch, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    inv = inventory(lab, tmp_path, "idle", persist=2)
    orch("status", str(inv), "--json", "--no-requests")
    pid = wait_for(lambda: keeper.running(DEP, base=orch.state_dir), 60, what="the keeper")[0]
    t0 = time.monotonic()
    wait_for(lambda: not keeper.running(DEP, base=orch.state_dir), 2 + keeper.CHECK_S + 30,
             what="the idle keeper to exit")
    assert time.monotonic() - t0 >= 1  # it served its time first
    log = next((orch.state_dir / "keepers").glob("*.log")).read_text()
    assert '"reason": "idle for 2s"' in log, log

    def gone() -> bool:  # exited (a zombie until init reaps it has an empty command line)
        try:
            return b"orchestrator.keeper" not in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return True
    wait_for(gone, 30, what=f"keeper {pid} to end")


def test_kept_shell_runs_scripts_in_turn_and_survives_a_timeout(lab, tmp_path: Path) -> None:
    inv = inventory(lab, tmp_path, "shell")
    os.environ.setdefault("ORCH_FAST_RETRY", "1")

    async def go() -> None:
        s = await open_session(Deployment.load(inv), require_all=True)
        try:
            h = s.hosts["h1"]
            sh = Shell(h)
            first = await sh.run("echo $$; echo 'a  b'; printf tail")
            pid = first.stdout.splitlines()[0]
            assert first.ok and first.stdout.splitlines()[1:] == ["a  b", "tail"]
            for i in range(20):  # the same shell (same PID) every time; output as an exec's
                r = await sh.run(f"echo $$ {i}")
                assert r.stdout == f"{pid} {i}\n"
            r = await sh.run("echo out; echo err >&2; false")
            assert (r.rc, r.stdout) == (1, "out\nerr\n")
            r = await sh.run("read x; echo got=$x")  # a script cannot read the shell's own input
            assert r.stdout == "got=\n"
            try:
                await sh.run("sleep 30", timeout=1)
                raise AssertionError("no timeout")
            except CommandError as e:
                assert "timed out" in str(e)
            r = await sh.run("echo $$")  # a new shell after the timeout
            assert r.ok and r.stdout.strip() != pid
            sh.close()
            kept = await s.snapshot(kept=True)
            fresh = await s.snapshot()
            assert kept.looks == fresh.looks  # the same facts and containers either way
        finally:
            s.close()

    asyncio.run(go())
