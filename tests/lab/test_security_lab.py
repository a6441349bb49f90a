"""Security on the lab: host keys, secrets, quoting, API keys (issue 7)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import httpx
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.inventory import Inventory
from orchestrator.remote import Target, connect
from tests.lab.conftest import LAUNCH_TIMEOUT, containers

SECRET = "hf_LabSecret_7fd3c0a9e1"
API_KEY = "sk-lab-key-5b8e22d1c4"


def only_podman(lab) -> None:
    if lab.runtime != "podman":
        pytest.skip("runs once, on the podman lab (runtime-independent)")


def lab_target(lab, host: str = "h0", known_hosts: str | None = None) -> Target:
    inv = Inventory.model_validate(yaml.safe_load(Path(lab.inventory_path).read_text()))
    node = next(n for n in inv.nodes if n.name == host)
    t = Target.of(inv, node)
    if known_hosts:
        t = Target(**{**t.__dict__, "known_hosts": known_hosts})
    return t


@pytest.fixture(scope="module")
def loop():
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


@pytest.fixture
def h0(lab, loop):
    only_podman(lab)
    host = loop.run_until_complete(connect(lab_target(lab)))
    yield host
    loop.run_until_complete(host.aclose())


# Any text an inventory can hold (no NUL: argv cannot carry it) arrives as exactly one argument.
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=80)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=TEXT)
def test_any_string_reaches_the_remote_process_as_one_literal_argument(h0, loop, value):
    r = loop.run_until_complete(h0.run(["printf", "%s\\0", value, "--"], timeout=20))
    assert r.stdout.split("\0")[:2] == [value, "--"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=TEXT)
def test_any_string_reaches_the_remote_process_as_one_env_value(h0, loop, value):
    r = loop.run_until_complete(h0.run(["env", f"ORCH_V={value}", "sh", "-c", 'printf "%s" "$ORCH_V"'], timeout=20))
    assert r.stdout == value


def test_a_changed_host_key_is_refused(lab, orch, tmp_path):
    only_podman(lab)
    real = Path(lab.known_hosts).read_text().splitlines()
    other = Path("/etc/ssh/ssh_host_ed25519_key.pub")
    fake_key = other.read_text().split()[:2] if other.exists() else None
    if fake_key is None:
        import subprocess
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True)
        fake_key = (tmp_path / "k.pub").read_text().split()[:2]
    kh = tmp_path / "known_hosts"
    kh.write_text("".join(f"{ln.split()[0]} {' '.join(fake_key)}\n" for ln in real if ln.strip()))
    doc = yaml.safe_load(Path(lab.inventory_path).read_text())
    doc["ssh"]["known_hosts"] = str(kh)
    inv = tmp_path / "inv.yaml"
    inv.write_text(yaml.safe_dump(doc))
    for args in (["down", str(inv)], ["down", str(inv), "--accept-new-host-keys"]):
        r = orch(*args, timeout=60)
        assert r.returncode == 1
        assert "HOST KEY OF 10.77.0.11 CHANGED" in r.stderr and "SHA256:" in r.stderr
    assert not (orch.state_dir / "known_hosts").exists()


def test_unknown_host_key_needs_the_flag_and_is_then_remembered(lab, orch, tmp_path):
    only_podman(lab)
    doc = yaml.safe_load(Path(lab.inventory_path).read_text())
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    doc["ssh"]["known_hosts"] = str(empty)
    inv = tmp_path / "inv.yaml"
    inv.write_text(yaml.safe_dump(doc))
    r = orch("down", str(inv), timeout=60)
    assert r.returncode == 1 and "is unknown (SHA256:" in r.stderr and "--accept-new-host-keys" in r.stderr
    r = orch("down", str(inv), "--accept-new-host-keys", timeout=60)
    assert r.returncode == 0, r.stderr
    mine = orch.state_dir / "known_hosts"
    assert oct(mine.stat().st_mode & 0o777) == "0o600"
    assert oct(orch.state_dir.stat().st_mode & 0o777) == "0o700"
    r = orch("down", str(inv), timeout=60)
    assert r.returncode == 0, r.stderr


def test_secrets_stay_secret_and_the_api_key_is_enforced(lab, orch, tmp_path):
    only_podman(lab)
    from orchestrator.lab import write_inventory

    inv = write_inventory(tmp_path / "sec.yaml", lab.hosts, lab.runtime, deployment="sec")
    doc = yaml.safe_load(inv.read_text())
    keyfile = tmp_path / "api-key"
    keyfile.write_text(API_KEY + "\n")
    doc["secrets"] = {"HF_TOKEN": {"env": "ORCH_TEST_HF"}}
    doc["api_key"] = {"file": str(keyfile)}
    inv.write_text(yaml.safe_dump(doc))
    env = {"ORCH_TEST_HF": SECRET}
    outputs = []
    p = None
    try:
        for args in (["plan", str(inv)], ["plan", str(inv), "--json"]):
            r = orch(*args, env=env, timeout=60)
            assert r.returncode == 0, r.stderr
            outputs.append(r.stdout + r.stderr)
        r = orch("up", str(inv), "--timeout", str(LAUNCH_TIMEOUT - 20), env=env)
        assert r.returncode == 0, r.stderr[-3000:]
        outputs.append(r.stdout + r.stderr)

        # the secret really is in the container (so the test could catch a leak) ...
        cid = containers(lab)["h0"][0]["id"]
        inside = lab.run_on("h0", [lab.runtime, "exec", cid, "printenv", "HF_TOKEN"], check=True).stdout
        assert inside.strip() == SECRET
        # ... and the API wants the key: 401 without it, and orch's own probes still see it ready
        assert httpx.get("http://10.77.0.11:8000/v1/models", trust_env=False).status_code == 401
        ok = httpx.get("http://10.77.0.11:8000/v1/models", trust_env=False,
                       headers={"Authorization": f"Bearer {API_KEY}"})
        assert ok.status_code == 200
        r = orch("status", str(inv), "--json", env=env, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        assert json.loads(r.stdout)["healthy"]
        outputs.append(r.stdout + r.stderr)
        # make a rank print the secret: it must come out masked in logs and saved tails
        lab.run_on("h0", [lab.runtime, "exec", cid, "sh", "-c", 'echo "leak: $HF_TOKEN $VLLM_API_KEY" > /proc/1/fd/1'])
        r = orch("logs", "-i", str(inv), "--tail", "50", env=env, timeout=60)
        outputs.append(r.stdout + r.stderr)
        assert "leak: *** ***" in r.stdout
        # a failed up saves log tails: kill the headless rank during a forced redeploy
        old = {c["id"] for cs in containers(lab).values() for c in cs}
        p = orch.popen("up", str(inv), "--force", "--timeout", "300", env=env)
        from tests.lab.conftest import wait_for

        def new_rank_running(node: str) -> bool:
            cs = containers(lab)[node]
            return bool(cs) and cs[0]["id"] not in old and cs[0]["status"] == "running"

        wait_for(lambda: new_rank_running("h0") and new_rank_running("h1"), 60, what="the new ranks")
        lab.run_on("h0", [lab.runtime, "exec", containers(lab)["h0"][0]["id"], "sh", "-c",
                          'echo "leak: $HF_TOKEN $VLLM_API_KEY" > /proc/1/fd/1'])
        lab.run_on("h1", [lab.runtime, "kill", containers(lab)["h1"][0]["id"]])
        out, err = p.communicate(timeout=120)
        assert p.returncode == 1
        outputs.append(out + err)
    finally:
        if p is not None and p.returncode is None:  # the test failed before communicate
            p.kill()
            p.communicate(timeout=60)  # and closes its pipes
        orch("down", str(inv), env=env, timeout=120)
    saved = list(orch.state_dir.rglob("*"))
    assert any(f.name == "h0.log" for f in saved)
    for f in saved:
        if f.is_file():
            text = f.read_text(errors="replace")
            outputs.append(text)
            assert oct(f.stat().st_mode & 0o777) == "0o600", f
    blob = "\n".join(outputs)
    assert "leak: *** ***" in blob
    assert SECRET not in blob and API_KEY not in blob
    assert os.environ.get("ORCH_TEST_HF") is None
