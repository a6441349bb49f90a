"""The README's demo command, run verbatim on the lab as a new user would: `scripts/demo.sh`
on a PATH where `sudo` does not exist (a fresh Debian root has none). It must end with a
real answer from the lab's trained tiny model, its token ids and the DP rank that served it.

Runs on the podman lab (the demo's default runtime) and reuses the session's lab, which the
demo's own `orch lab up` finds healthy; afterwards only the demo's deployment is removed."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.lab.conftest import LAUNCH_TIMEOUT, ROOT
from tests.unit.test_readme import readme_command

INV = "/var/lib/orch-lab/inventory.yaml"


def test_the_demo_command_runs_as_written_and_shows_a_real_answer(lab, orch, tmp_path: Path):
    if lab.runtime != "podman":
        pytest.skip("the demo's runtime is podman (ORCH_DEMO_RUNTIME=docker is the option)")
    cmd = readme_command("Try it")
    nosudo = tmp_path / "nosudo"
    nosudo.mkdir()
    (nosudo / "sudo").write_text('#!/bin/sh\necho "sudo: command not found" >&2\nexit 127\n')
    (nosudo / "sudo").chmod(0o755)
    env = orch.env()
    env["PATH"] = f"{nosudo}:{env['PATH']}"
    try:
        r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, cwd=ROOT, env=env,
                           timeout=LAUNCH_TIMEOUT + 300)
        out = r.stdout + r.stderr
        assert r.returncode == 0, out[-4000:]
        print(out[-1500:])
        shown = r.stdout[-2500:]
        answer = re.search(r"^answer:\s+(['\"])(.*)\1$", r.stdout, re.M)  # a Python repr
        assert answer and answer.group(2).strip(), shown
        assert re.search(r"[A-Za-z]{3,}", answer.group(2)), f"not readable words: {answer.group(2)!r}"
        assert re.search(r"^token ids: \[[0-9]+(, [0-9]+)*\]$", r.stdout, re.M), shown
        assert re.search(r"^served by: DP rank [01]", r.stdout, re.M), shown
        assert "sudo: command not found" not in out
    finally:
        subprocess.run([str(ROOT / ".venv/bin/orch"), "down", INV], capture_output=True, text=True,
                       cwd=ROOT, env=orch.env(), timeout=300)
