"""orch up / status / down on the lab: a real 2-rank data-parallel vLLM deployment (CPU build,
tiny dummy model) through real SSH and a real container runtime, on podman and on docker.
vLLM launches run one at a time, each under the CLI's own deadline and the test's timeout."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import httpx
import yaml

from tests.lab.conftest import LAUNCH_TIMEOUT, containers, wait_for

# An inventory value that a shell would run: it must reach vLLM as one literal argument.
PAYLOAD_FILE = Path("/tmp/orch-injected-by-served-name")
SERVED = f"x; touch {PAYLOAD_FILE}"


def inventory(lab, tmp_path: Path, name: str, **kw) -> Path:
    from orchestrator.lab import write_inventory

    return write_inventory(tmp_path / f"{name}.yaml", lab.hosts, lab.runtime, nodes=2,
                           deployment=name, **kw)


def ids_and_starts(lab) -> dict[str, list[tuple[str, str]]]:
    return {n: [(c["id"], c["started"]) for c in cs] for n, cs in containers(lab).items()}


def complete(model: str) -> str:
    r = httpx.post("http://10.77.0.11:8000/v1/completions", timeout=60, trust_env=False,
                   json={"model": model, "prompt": "Hello", "max_tokens": 4})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["text"]


def test_up_status_noop_drift_repair_down(lab, orch, tmp_path):
    PAYLOAD_FILE.unlink(missing_ok=True)
    inv = inventory(lab, tmp_path, "core", served_name=SERVED)
    try:
        r = orch("up", str(inv), "--timeout", str(LAUNCH_TIMEOUT - 20))
        assert r.returncode == 0, r.stderr[-3000:]
        assert "launching" in r.stderr  # progress lines (JSON, as stderr is not a TTY)

        # the deployment answers a real completion through the head; nothing was injected
        complete(SERVED)
        assert not PAYLOAD_FILE.exists()
        models = httpx.get("http://10.77.0.11:8000/v1/models", trust_env=False).json()
        assert [m["id"] for m in models["data"]] == [SERVED]

        st = orch.status(inv)
        assert st["healthy"] and st["api_ready"] and not st["drift"]
        assert [(n["name"], n["role"], n["state"]) for n in st["nodes"]] == [
            ("h0", "head", "running"), ("h1", "headless", "running")]
        before = ids_and_starts(lab)
        assert all(len(v) == 1 for n, v in before.items() if n in ("h0", "h1"))

        # a second up on a healthy, unchanged deployment touches no container
        r = orch("up", str(inv), "--detailed-exitcode", "--json", timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        assert json.loads(r.stdout)["changed"] is False
        assert ids_and_starts(lab) == before

        # an edited flag is drift: status says so, up redeploys the whole group (exit 3)
        doc = yaml.safe_load(inv.read_text())
        doc["overrides"] = {"args": {"--max-num-seqs": 8}}
        inv.write_text(yaml.safe_dump(doc))
        st = orch.status(inv)
        assert st["drift"] and not st["healthy"]
        r = orch("up", str(inv), "--detailed-exitcode")
        assert r.returncode == 3, r.stderr[-3000:]
        st = orch.status(inv)
        assert st["healthy"] and not st["drift"]
        after = ids_and_starts(lab)
        assert after["h0"] != before["h0"] and after["h1"] != before["h1"]

        # a dead headless rank: the head still answers /v1/models, status still says unhealthy
        rank1 = containers(lab)["h1"][0]["id"]
        lab.run_on("h1", [lab.runtime, "kill", rank1], check=True)
        wait_for(lambda: containers(lab)["h1"][0]["status"] != "running", 30, what="rank 1 to stop")
        r = orch("status", str(inv), timeout=60)
        assert r.returncode == 1
        st = orch.status(inv)
        h1 = next(n for n in st["nodes"] if n["name"] == "h1")
        assert not st["healthy"] and h1["state"] != "running"
        r = orch("up", str(inv))
        assert r.returncode == 0, r.stderr[-3000:]
        assert orch.status(inv)["healthy"]
        complete(SERVED)
    finally:
        r = orch("down", str(inv), timeout=120)
    assert r.returncode == 0, r.stderr
    assert all(not cs for cs in containers(lab).values())
    r = orch("down", str(inv), timeout=120)
    assert r.returncode == 0 and "nothing to remove" in r.stdout


def test_a_rank_that_exits_fails_the_up_fast_naming_the_node(lab, orch, tmp_path):
    inv = inventory(lab, tmp_path, "exits")
    p = orch.popen("up", str(inv), "--timeout", "300")
    try:
        def h1_running():
            cs = containers(lab)["h1"]
            return cs and cs[0]["status"] == "running"

        wait_for(h1_running, 60, what="the headless rank's container")
        time.sleep(3)
        killed_at = time.monotonic()
        lab.run_on("h1", [lab.runtime, "kill", containers(lab)["h1"][0]["id"]], check=True)
        out, err = p.communicate(timeout=120)
        reported_after = time.monotonic() - killed_at
    finally:
        if p.returncode is None:  # failed before communicate: end it and close its pipes
            p.kill()
            p.communicate(timeout=60)
    assert p.returncode == 1, err[-2000:]
    assert reported_after < 30, f"took {reported_after:.1f}s"
    assert "rank on node h1 is" in err
    assert all(not cs for cs in containers(lab).values()), "the failed group was not removed"
    saved = list((orch.state_dir / "deployments" / "exits" / "failed").glob("*/h0.log"))
    assert saved, "log tails were not saved before cleanup"


def test_sigint_during_launch_leaves_nothing_and_a_second_run_is_locked_out(lab, orch, tmp_path):
    inv = inventory(lab, tmp_path, "sigint")
    p = orch.popen("up", str(inv), "--timeout", "300")
    try:
        wait_for(lambda: containers(lab)["h0"], 60, what="the head's container")
        second = orch("up", str(inv), timeout=60)
        assert second.returncode == 4, second.stderr
        assert "another orch run holds the lock" in second.stderr
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=120)
    finally:
        if p.returncode is None:  # failed before communicate: end it and close its pipes
            p.kill()
            p.communicate(timeout=60)
    assert p.returncode == 130, err[-2000:]
    assert all(not cs for cs in containers(lab).values()), containers(lab)


def sshd_session_pids(lab, host: str) -> list[int]:
    """The per-connection sshd processes under the lab host's sshd (started by the lab)."""
    parent = lab.host(host).sshd_pid
    kids = []
    for task in Path(f"/proc/{parent}/task").iterdir():
        kids += [int(p) for p in (task / "children").read_text().split()]
    return kids


def test_a_dropped_ssh_connection_is_retried_within_the_deadline(lab, orch, tmp_path):
    if lab.runtime != "podman":
        import pytest

        pytest.skip("runtime-independent: runs on the podman lab only")
    import os

    inv = inventory(lab, tmp_path, "drop")
    p = orch.popen("up", str(inv), "--timeout", str(LAUNCH_TIMEOUT - 20))
    try:
        wait_for(lambda: containers(lab)["h1"], 60, what="the headless rank's container")
        time.sleep(2)
        victims = sshd_session_pids(lab, "h1")
        assert victims, "orch holds an ssh connection to h1"
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        out, err = p.communicate(timeout=LAUNCH_TIMEOUT)
    finally:
        if p.returncode is None:  # failed before communicate: end it and close its pipes
            p.kill()
            p.communicate(timeout=60)
        orch("down", str(inv), timeout=120)
    assert "ssh connection lost, reconnecting" in err
    assert p.returncode == 0, err[-3000:]


def test_up_refuses_to_launch_when_a_preflight_check_fails(lab, orch, tmp_path):
    inv = inventory(lab, tmp_path, "refused", image="localhost/orch-lab/not-built:1")
    r = orch("up", str(inv), timeout=120)
    assert r.returncode == 1, r.stderr[-2000:]
    assert "preflight failed, nothing was launched" in r.stderr
    assert "h0: image.present" in r.stderr and "h1: image.present" in r.stderr
    assert all(not cs for cs in containers(lab).values())
    r = orch("up", str(inv), "--skip-checks", "no.such.check", timeout=60)
    assert r.returncode == 2 and "no such check" in r.stderr
