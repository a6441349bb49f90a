"""orch smoke and orch bench against a real lab deployment (issue 8)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.lab.conftest import LAUNCH_TIMEOUT
from tests.lab.test_core_lab import inventory


def test_smoke_and_bench_through_the_deployed_api(lab, orch, tmp_path):
    if lab.runtime != "podman":
        pytest.skip("runtime-independent: runs on the podman lab only")
    inv = inventory(lab, tmp_path, "measure")
    try:
        r = orch("up", str(inv), "--timeout", str(LAUNCH_TIMEOUT - 20))
        assert r.returncode == 0, r.stderr[-3000:]

        r = orch("smoke", str(inv), "--max-tokens", "5", timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        lines = r.stdout.splitlines()
        assert any(ln.startswith("ok") and "completion" in ln for ln in lines), r.stdout
        assert any(ln.startswith("ok") and "chat " in ln for ln in lines), r.stdout
        r = orch("smoke", str(inv), "--json", "--vision", timeout=120)
        results = {x["check"]: x for x in json.loads(r.stdout)}
        assert results["completion"]["ok"] and results["chat"]["ok"]
        # the tiny model is text-only: the image chat is sent and refused, and smoke says so
        assert "chat+image" in results and r.returncode == (0 if results["chat+image"]["ok"] else 1)

        r = orch("bench", str(inv), "--preset", "lab-tiny", "--json", timeout=600)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        doc = json.loads(r.stdout)
        assert doc["figures"]["completed"] == 8 and doc["figures"]["failed"] == 0
        assert doc["figures"]["mean_ttft_ms"] > 0 and doc["figures"]["output_throughput"] > 0
        saved = json.loads(Path(doc["result_file"]).read_text())
        assert saved["completed"] == 8
        r = orch("bench", str(inv), "--preset", "lab-tiny", "--num-prompts", "4", timeout=600)
        assert r.returncode == 0 and "mean_ttft_ms" in r.stdout and "result:" in r.stdout
    finally:
        orch("down", str(inv), timeout=120)
