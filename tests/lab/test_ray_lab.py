"""Topology ray on the lab: `ray start --head` on h0, a worker on h1, both joined, then one
`vllm serve --distributed-executor-backend ray` with tensor parallel 2 (one rank per node)
serving a completion; status, a no-op second up, down."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx

from orchestrator.deploy.launchers import count_ray_nodes as count_nodes
from tests.lab.conftest import LAUNCH_TIMEOUT, containers

API = "http://10.77.0.11:8000"


def test_ray_tp2_over_two_nodes_serves(lab, orch, tmp_path: Path) -> None:
    from orchestrator.lab import write_inventory

    inv = write_inventory(tmp_path / "ray.yaml", lab.hosts, lab.runtime, nodes=2, deployment="ray",
                          playbook="cpu-lab-ray")
    try:
        t0 = time.monotonic()
        r = orch("up", str(inv), "--timeout", str(LAUNCH_TIMEOUT - 20), "--json")
        took = time.monotonic() - t0
        assert r.returncode == 0, r.stderr[-4000:]
        assert json.loads(r.stdout)["changed"] is True
        # orch waited for both Ray nodes before it started vllm serve
        log = r.stderr
        assert log.index("ray cluster complete") < log.index("vllm serve started")
        print(f"orch up (ray, 2 nodes, TP2) took {took:.1f}s")

        cs = containers(lab)
        assert [len(cs["h0"]), len(cs["h1"])] == [1, 1]
        out = lab.run_on("h0", [lab.runtime, "exec", cs["h0"][0]["id"], "ray", "status"], check=True).stdout
        assert count_nodes(out) == 2, out

        a = httpx.post(f"{API}/v1/completions", trust_env=False, timeout=120,
                       json={"model": "tiny", "prompt": "Hello", "max_tokens": 8, "temperature": 0})
        assert a.status_code == 200, a.text
        assert a.json()["usage"]["completion_tokens"] == 8
        # tensor parallel rank 1 is a Ray actor on h1: its lines reach the head's log
        head_log = lab.run_on("h0", [lab.runtime, "logs", cs["h0"][0]["id"]], check=True)
        text = head_log.stdout + head_log.stderr
        assert "ip=10.77.0.12" in text, text[-3000:]

        st = orch.status(inv)
        assert st["healthy"], st
        assert [(n["name"], n["role"]) for n in st["nodes"]] == [("h0", "ray-head"), ("h1", "ray-worker")]
        r = orch("up", str(inv), "--json", timeout=180)
        assert r.returncode == 0 and json.loads(r.stdout)["changed"] is False, r.stderr[-2000:]
    finally:
        r = orch("down", str(inv), timeout=120)
    assert r.returncode == 0, r.stderr
    assert all(not c for c in containers(lab).values())
