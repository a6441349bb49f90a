"""Topology pd (orchestrator/plan/pd.py, deploy/launchers.py PdLauncher): PD playbooks load as
playbooks of topology pd, plan into per-node container specs (prefill, decode, proxy) and the
readiness steps."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from orchestrator import config, probe
from orchestrator.deploy.launchers import PdLauncher
from orchestrator.errors import TopologyError
from orchestrator.inventory import Inventory
from orchestrator.plan import build_plan
from orchestrator.playbook import PDPlaybook

ROOT = Path(__file__).resolve().parents[2]
LAB = ROOT / "playbooks" / "pd" / "cpu-lab-pd.yaml"
SEED = ROOT / "playbooks" / "pd" / "qwen3-235b-a22b-w8a8-a3-pd.yaml"


def inventory(path: Path, n: int, **kw: object) -> Inventory:
    return Inventory.model_validate({
        "deployment": "pd", "playbook": str(path), "image": "img", "runtime": "podman",
        "model": {"path": "/models/tiny", "served_name": "tiny"},
        "nodes": [{"name": f"h{i}", "host": f"10.77.0.{11 + i}", "nic": f"enp{i}s0", "ip": f"10.77.0.{11 + i}",
                   "env": {"VLLM_CPU_OMP_THREADS_BIND": str(i % 2)}} for i in range(n)], **kw})


def plan(path: Path, n: int, **kw: object):  # type: ignore[no-untyped-def]
    pb = config.load_playbook(path)
    return build_plan(inventory(path, n, **kw), pb, config.load_profile(pb.profile, path))


def is_head(spec) -> bool:  # type: ignore[no-untyped-def]
    """A prefill/decode container that serves an API (not --headless), as planned."""
    return spec.role in ("prefill", "decode") and spec.api_port is not None


def after_image(argv: list[str]) -> list[str]:
    return argv[argv.index("img") + 1:]


def test_pd_files_load_as_playbooks_of_topology_pd() -> None:
    for path in (LAB, SEED):
        pb = config.load_playbook(path)
        assert pb.topology == "pd" and pb.pd is not None and pb.name == path.stem
        assert pb.pd == PDPlaybook.model_validate(__import__("yaml").safe_load(path.read_text()))
        assert pb.min_nodes == pb.pd.nodes_needed and pb.max_nodes == pb.pd.nodes_needed + 1


def test_lab_plan_prefill_decode_then_proxy_on_the_third_node() -> None:
    p = plan(LAB, 3)
    assert [(n.name, n.role) for n in p.nodes] == [("h0", "prefill"), ("h1", "decode"), ("h2", "proxy")]
    assert p.api_url == "http://10.77.0.13:8100" and p.dp_size == 1
    pre, dec, proxy = p.nodes
    for spec, role in ((pre, "kv_producer"), (dec, "kv_consumer")):
        s = spec.serve_argv
        kv = json.loads(s[s.index("--kv-transfer-config") + 1])
        assert kv["kv_connector"] == "ExampleConnector" and kv["kv_role"] == role
        assert kv["kv_connector_extra_config"]["shared_storage_path"] == "/tmp/orch-lab-pd-kv"
        assert "/tmp/orch-lab-pd-kv:/tmp/orch-lab-pd-kv" in spec.argv  # the shared KV dir
        assert after_image(spec.argv) == s and is_head(spec)
        assert not any(f.startswith("--data-parallel") for f in s)  # DP 1: vLLM refuses them
        assert spec.env["VLLM_HOST_IP"] == spec.ip
    assert pre.env["VLLM_CPU_OMP_THREADS_BIND"] == "0" and dec.env["VLLM_CPU_OMP_THREADS_BIND"] == "1"
    cmd = after_image(proxy.argv)
    assert not is_head(proxy) and p.proxy == "vllm-router"
    assert cmd == ["vllm-router", "--vllm-pd-disaggregation", "--host", "0.0.0.0", "--port", "8100",
                   "--policy", "round_robin", "--prometheus-port", "9100",
                   "--prefill", "http://10.77.0.11:8000", "--decode", "http://10.77.0.12:8000"]
    assert len({n.container for n in p.nodes}) == 3


def test_with_an_api_key_vllm_router_gets_it_from_the_container_env(monkeypatch) -> None:
    monkeypatch.setenv("PD_KEY", "k-123456")
    p = plan(LAB, 3, api_key={"env": "PD_KEY"})
    proxy = p.nodes[-1]
    cmd = after_image(proxy.argv)
    assert cmd[:3] == ["sh", "-c", 'OPENAI_API_KEY="$VLLM_API_KEY" exec "$@"'] and cmd[4] == "vllm-router"
    assert "k-123456" not in " ".join(proxy.argv) and "VLLM_API_KEY" in proxy.secret_env
    assert any("asks clients for no key" in w for w in p.warnings)


def test_two_nodes_put_the_proxy_beside_the_prefill_instance() -> None:
    p = plan(LAB, 2)
    assert [(n.name, n.role) for n in p.nodes] == [("h0", "prefill"), ("h1", "decode"), ("h0", "proxy")]
    assert p.api_url == "http://10.77.0.11:8100"
    ports = [pt.number for n in p.nodes if n.name == "h0" for pt in n.listens]
    assert len(ports) == len(set(ports))  # the proxy and the prefill instance do not collide


def test_node_count_and_overrides_are_checked() -> None:
    with pytest.raises(TopologyError, match="needs 2 nodes"):
        plan(LAB, 1)
    with pytest.raises(TopologyError, match="needs 2 nodes"):
        plan(LAB, 4)
    with pytest.raises(TopologyError, match="overrides"):
        plan(LAB, 3, overrides={"args": {"--max-num-seqs": 4}})


def test_seed_plan_headless_decode_node_and_mooncake_path() -> None:
    p = plan(SEED, 4)
    assert [(n.name, n.role, is_head(n)) for n in p.nodes] == [
        ("h0", "prefill", True), ("h1", "decode", True), ("h2", "decode", False), ("h3", "proxy", False)]
    assert (p.nodes[1].ranks, p.nodes[2].ranks) == ((0, 1, 2, 3), (4, 5, 6, 7)) and p.dp_size == 8
    assert "--headless" not in p.nodes[1].serve_argv and "--headless" in p.nodes[2].serve_argv
    # the seed's own proxy (vllm-ascend images ship it), with the seed's flags and a --host
    assert p.proxy == "command"
    assert after_image(p.nodes[3].argv) == [
        "python", "/vllm-workspace/vllm-ascend/examples/disaggregated_prefill_v1/"
        "load_balance_proxy_server_example.py", "--host", "0.0.0.0", "--port", "12347",
        "--prefiller-hosts", "10.77.0.11", "--prefiller-ports", "8000",
        "--decoder-hosts", "10.77.0.12", "--decoder-ports", "8000"]
    # the seed's `export LD_LIBRARY_PATH=<mooncake>:$LD_LIBRARY_PATH` happens in the container
    cmd = after_image(p.nodes[0].argv)
    assert cmd[:2] == ["sh", "-c"] and "mooncake" in cmd[2] and cmd[4:] == p.nodes[0].serve_argv


def test_readiness_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """The seed's proxy: /healthcheck counts the instances; then every instance head."""
    p = plan(SEED, 3)
    seen: list[str] = []
    state = {"proxy": {"status": "ok", "prefill_instances": 1, "decode_instances": 1}, "decode": 200}

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(str(req.url))
        if req.url.path == "/healthcheck":
            return httpx.Response(200, json=state["proxy"])
        if req.url.host == "10.77.0.12":
            return httpx.Response(state["decode"])  # type: ignore[arg-type]
        return httpx.Response(200)

    monkeypatch.setattr(probe, "TRANSPORT", httpx.MockTransport(handler))

    async def check() -> tuple[bool, str]:
        return await PdLauncher().ready(p, None)

    assert asyncio.run(check()) == (True, "ok")
    assert seen == ["http://10.77.0.11:12347/healthcheck", "http://10.77.0.11:8000/health",
                    "http://10.77.0.12:8000/health"]
    state["decode"] = 503
    ok, why = asyncio.run(check())
    assert not ok and "decode instance on h1" in why and "503" in why
    state["proxy"] = {"status": "ok", "prefill_instances": 1, "decode_instances": 0}
    ok, why = asyncio.run(check())
    assert not ok and "healthcheck" in why


def test_readiness_through_vllm_router(monkeypatch: pytest.MonkeyPatch) -> None:
    """vllm-router answers no GET but /v1/models (from a prefill instance)."""
    p = plan(LAB, 3)
    seen: list[str] = []
    models = {"data": [{"id": "tiny"}]}

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(f"{req.url.host}:{req.url.port}{req.url.path}")
        if req.url.port == 8100 and req.url.path != "/v1/models":
            return httpx.Response(405)
        return httpx.Response(200, json=models if req.url.path == "/v1/models" else {})

    monkeypatch.setattr(probe, "TRANSPORT", httpx.MockTransport(handler))
    assert asyncio.run(PdLauncher().ready(p, None)) == (True, "ok")
    assert seen[0] == "10.77.0.13:8100/v1/models" and "/healthcheck" not in " ".join(seen)
    assert seen[-2:] == ["10.77.0.11:8000/health", "10.77.0.12:8000/health"]
    models = {"data": []}
    ok, why = asyncio.run(PdLauncher().ready(p, None))
    assert not ok and "10.77.0.13:8100" in why
