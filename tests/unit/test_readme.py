"""The README's two commands work as written on a fresh Debian root machine: no sudo (a fresh
root has none), scripts that exist, and .ci/run runs exactly the README's test command.
The lab test tests/lab/test_readme_lab.py runs the demo command itself."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def readme_command(heading: str) -> str:
    """The first command line (4-space indented) under a '## heading' of the README."""
    text = (ROOT / "README.md").read_text()
    part = text.split(f"\n## {heading}", 1)[1].split("\n## ", 1)[0]
    m = re.search(r"^    (\S.*)$", part, re.M)
    assert m, f"no command under ## {heading}"
    return m.group(1)


def test_the_two_commands_need_no_sudo_and_exist() -> None:
    demo, tests = readme_command("Try it"), readme_command("Run the tests")
    assert (demo, tests) == ("scripts/demo.sh", "scripts/test.sh")
    for cmd in (demo, tests):
        assert "sudo" not in cmd
        script = ROOT / cmd.split()[0]
        assert script.is_file() and os.access(script, os.X_OK), script
        assert "sudo " not in script.read_text()


def test_ci_runs_exactly_the_readme_test_command() -> None:
    r = subprocess.run([str(ROOT / ".ci" / "run"), "--print"], capture_output=True, text=True,
                       check=True, cwd=ROOT)
    assert r.stdout.strip() == readme_command("Run the tests")
