"""Topology pd on the lab: a prefill instance on h0, a decode instance on h1, vllm-router (PD
mode) as the proxy on h2; KV cache handed over through vLLM's ExampleConnector and a
directory both nodes mount.  Checks readiness, a completion and a streamed chat through the
router, that the decode instance loaded the prefill's KV cache instead of computing it,
status, no-op up, down."""

from __future__ import annotations

import json
import shutil
import time
import uuid
from pathlib import Path

import httpx

from tests.lab.conftest import LAUNCH_TIMEOUT, ROOT, containers

PROXY = "http://10.77.0.13:8100"
KV_DIR = Path("/tmp/orch-lab-pd-kv")
PLAYBOOK = ROOT / "playbooks" / "pd" / "cpu-lab-pd.yaml"


def proxy_cmd(lab) -> list[str]:
    c = containers(lab)["h2"][0]
    r = lab.run_on("h2", [lab.runtime, "inspect", "--format", "{{json .Config.Cmd}}", c["id"]], check=True)
    return json.loads(r.stdout)


def logs(lab, host: str) -> str:
    c = containers(lab)[host][0]
    r = lab.run_on(host, [lab.runtime, "logs", c["id"]], check=True)
    return r.stdout + r.stderr


def test_prefill_decode_through_the_proxy(lab, orch, tmp_path: Path) -> None:
    from orchestrator.lab import write_inventory

    inv = write_inventory(tmp_path / "pd.yaml", lab.hosts, lab.runtime, nodes=3, deployment="pd",
                          playbook=str(PLAYBOOK))
    shutil.rmtree(KV_DIR, ignore_errors=True)
    try:
        t0 = time.monotonic()
        r = orch("up", str(inv), "--timeout", str(LAUNCH_TIMEOUT - 20), "--json")
        took = time.monotonic() - t0
        assert r.returncode == 0, r.stderr[-4000:]
        assert json.loads(r.stdout)["changed"] is True
        print(f"orch up (pd: prefill + decode + proxy) took {took:.1f}s")
        cs = containers(lab)
        assert [len(cs[h]) for h in ("h0", "h1", "h2")] == [1, 1, 1]

        models = httpx.get(f"{PROXY}/v1/models", trust_env=False).json()
        assert [m["id"] for m in models["data"]] == ["tiny"]
        assert "vllm-router" in " ".join(proxy_cmd(lab))
        for ip in ("10.77.0.11", "10.77.0.12"):
            assert httpx.get(f"http://{ip}:8000/health", trust_env=False).status_code == 200

        # A prompt of more than one 128-token KV block, never seen before (the connector keys
        # its files by the prompt's tokens), through the proxy.
        nonce = uuid.uuid4().hex
        injected_before = logs(lab, "h1").count("Inject KV cache of")
        dirs_before = {d.name for d in KV_DIR.iterdir()}
        prompt = f"{nonce} " + "the quick brown fox jumps over the lazy dog " * 5
        a = httpx.post(f"{PROXY}/v1/completions", trust_env=False, timeout=120,
                       json={"model": "tiny", "prompt": prompt, "max_tokens": 6, "temperature": 0})
        assert a.status_code == 200, a.text
        assert a.json()["usage"]["completion_tokens"] == 6 and a.json()["usage"]["prompt_tokens"] > 130
        # the prefill instance wrote the prompt's KV to the shared dir, the decode instance
        # found it and injected it instead of computing the prompt
        new = [d for d in KV_DIR.iterdir() if d.name not in dirs_before]
        assert len(new) == 1 and list(new[0].glob("*.safetensors")), "no new KV files"
        dec = logs(lab, "h1")
        assert dec.count("Inject KV cache of") == injected_before + 1, dec[-3000:]
        # vllm-router names the request after the instances it used: prefill h0, decode h1
        assert "prefill_addr_10.77.0.11:8000" in a.json()["id"] and "decode_addr_10.77.0.12:8000" in a.json()["id"]
        # the decoder's first token, computed on top of the injected KV, is the prefiller's
        p1 = httpx.post("http://10.77.0.11:8000/v1/completions", trust_env=False, timeout=60,
                        json={"model": "tiny", "prompt": prompt, "max_tokens": 1, "temperature": 0})
        assert a.json()["choices"][0]["text"].startswith(p1.json()["choices"][0]["text"])

        # a streamed chat through the proxy
        with httpx.stream("POST", f"{PROXY}/v1/chat/completions", trust_env=False, timeout=120,
                          json={"model": "tiny", "stream": True, "max_tokens": 4,
                                "messages": [{"role": "user", "content": "Say hello"}]}) as s:
            assert s.status_code == 200
            events = [ln for ln in s.iter_lines() if ln.startswith("data: ")]
        assert events[-1] == "data: [DONE]" and len(events) >= 2

        st = orch.status(inv)
        assert st["api_ready"] and not st["drift"], st
        assert [(n["name"], n["role"], n["state"]) for n in st["nodes"]] == [
            ("h0", "prefill", "running"), ("h1", "decode", "running"), ("h2", "proxy", "running")]
        r = orch("up", str(inv), "--json", timeout=180)
        assert r.returncode == 0 and json.loads(r.stdout)["changed"] is False, r.stderr[-2000:]
    finally:
        r = orch("down", str(inv), timeout=120)
        shutil.rmtree(KV_DIR, ignore_errors=True)
    assert r.returncode == 0, r.stderr
    assert all(not c for c in containers(lab).values())
