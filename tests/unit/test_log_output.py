"""Progress output: JSON lines when stderr is a pipe or a file (cron, systemd, CI), readable
lines on a terminal - checked both ways with a real pty, through the real CLI."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# progress as every command logs it (log.setup is what the CLI calls; it alone picks the format)
CODE = ("from orchestrator.log import setup, log; setup(); "
        "log.info('launching', node='h0', container='orch-x-h0-1234')")


def test_piped_output_is_json_lines() -> None:
    r = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, cwd=ROOT,
                       check=True)
    rec = json.loads(r.stderr.strip().splitlines()[-1])
    assert rec["event"] == "launching" and rec["node"] == "h0" and rec["level"] == "info"
    assert "timestamp" in rec


def test_terminal_output_is_human() -> None:
    master, slave = pty.openpty()
    p = subprocess.Popen([sys.executable, "-c", CODE], stdin=slave, stdout=slave, stderr=slave,
                         cwd=ROOT, close_fds=True)
    os.close(slave)
    out = b""
    while True:
        ready, _, _ = select.select([master], [], [], 10)
        if not ready:
            break
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the child closed the pty
            break
        if not chunk:
            break
        out += chunk
    p.wait(10)
    os.close(master)
    text = out.decode(errors="replace")
    assert "launching" in text and "node" in text and "h0" in text
    assert not text.lstrip().startswith("{"), text  # not JSON
    assert "\x1b[" in text  # coloured, as a terminal gets it


def test_cli_errors_are_one_plain_line_either_way(tmp_path: Path) -> None:
    bad = tmp_path / "inv.yaml"
    bad.write_text("deployment: x\n")
    r = subprocess.run([sys.executable, "-m", "orchestrator", "plan", str(bad)], capture_output=True,
                       text=True, cwd=ROOT)
    assert r.returncode == 2 and r.stderr.startswith(f"orch: error: {bad}: invalid inventory")
