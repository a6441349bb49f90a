"""Fixtures for tests on the lab: real network namespaces, real sshd, real podman/docker,
real vLLM (CPU build).  These tests need root.  They are never skipped silently: without
root they fail, unless ORCH_SKIP_LAB=1 says on purpose that this run has no lab."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAUNCH_TIMEOUT = int(os.environ.get("ORCH_TEST_LAUNCH_TIMEOUT", "420"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/lab/" in str(item.fspath):
            item.add_marker(pytest.mark.lab)


def require_lab() -> None:
    if os.environ.get("ORCH_SKIP_LAB") == "1":
        pytest.skip("ORCH_SKIP_LAB=1: this run has no lab")
    if os.geteuid() != 0:
        pytest.fail("lab tests need root (network namespaces); run scripts/test.sh as root "
                    "or set ORCH_SKIP_LAB=1 to run the unit tests only")


@pytest.fixture(scope="session", params=["podman", "docker"])
def lab(request: pytest.FixtureRequest) -> Iterator[object]:
    """A 3-host lab on one runtime; torn down after that runtime's tests."""
    require_lab()
    from orchestrator.lab import Lab

    lab = Lab().up(hosts=3, runtime=request.param, replace=True)
    yield lab
    lab.down(quiet=True)


@dataclass
class Orch:
    """Runs the real `orch` CLI as a subprocess, with its own state directory."""

    state_dir: Path

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {**os.environ, "ORCH_STATE_DIR": str(self.state_dir), "ORCH_FAST_RETRY": "1",
                **(extra or {})}

    def __call__(self, *args: str, timeout: float = LAUNCH_TIMEOUT, env: dict[str, str] | None = None,
                 ) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "orchestrator", *args], capture_output=True,
                              text=True, timeout=timeout, env=self.env(env), cwd=ROOT)

    def popen(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "orchestrator", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=self.env(env), cwd=ROOT)

    def status(self, inventory: Path) -> dict:
        r = self("status", str(inventory), "--json", timeout=60)
        assert r.returncode in (0, 1), r.stderr
        return json.loads(r.stdout)


@pytest.fixture
def orch(tmp_path: Path) -> Iterator[Orch]:
    o = Orch(tmp_path / "state")
    yield o
    from orchestrator import keeper

    keeper.stop(base=o.state_dir)  # the keepers its `orch status` calls left (by recorded PID)
    assert keeper.running(base=o.state_dir) == []


def containers(lab: object, label: str = "orch.deployment") -> dict[str, list[dict]]:
    """Every orch container on every lab host, seen from inside the host (not through orch)."""
    out = {}
    for h in lab.hosts:  # type: ignore[attr-defined]
        rt = lab.runtime  # type: ignore[attr-defined]
        for _ in range(5):  # a container removed between `ps` and `inspect`: look again
            r = lab.run_on(h, [rt, "ps", "-a", "-q", "--no-trunc", "--filter", f"label={label}",
                               "--filter", f"label=orch.node={h.name}"], check=True)
            ids = r.stdout.split()
            if not ids:
                out[h.name] = []
                break
            r = lab.run_on(h, [rt, "inspect", *ids])
            if r.returncode == 0:
                out[h.name] = [{"id": c["Id"], "status": c["State"]["Status"],
                                "started": c["State"]["StartedAt"], "name": c["Name"].lstrip("/")}
                               for c in json.loads(r.stdout)]
                break
        else:
            raise AssertionError(f"{rt} inspect on {h.name} kept failing: {r.stderr}")
    return out


def wait_for(pred, timeout: float, interval: float = 0.5, what: str = "condition"):  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
