from __future__ import annotations

import base64
import zlib
from pathlib import Path

import pytest
import yaml

from orchestrator import secrets
from orchestrator.bench import PRESETS, bench_argv, figures
from orchestrator.cluster import Deployment
from orchestrator.errors import InventoryError
from orchestrator.health import parse_metrics
from orchestrator.smoke import is_vision_language, png_data_url

ROOT = Path(__file__).resolve().parents[2]

METRICS = """# HELP vllm:num_requests_running Number of requests in model execution batches.
vllm:num_requests_running{engine="0",model_name="tiny"} 1.0
vllm:num_requests_running{engine="1",model_name="tiny"} 0.0
vllm:kv_cache_usage_perc{engine="0",model_name="tiny"} 0.25
vllm:request_success_total{engine="0",finished_reason="stop",model_name="tiny"} 2.0
vllm:request_success_total{engine="0",finished_reason="length",model_name="tiny"} 3.0
vllm:request_success_total{engine="1",finished_reason="length",model_name="tiny"} 4.0
vllm:generation_tokens_total{engine="1",model_name="tiny"} 36.0
vllm:e2e_request_latency_seconds_bucket{engine="0",le="0.3",model_name="tiny"} 1.0
process_cpu_seconds_total 12.0
"""


def test_metrics_per_engine_summed_over_reasons():
    m = parse_metrics(METRICS)
    assert m[0] == {"running": 1.0, "kv_cache": 0.25, "finished": 5.0}
    assert m[1] == {"running": 0.0, "finished": 4.0, "gen_tokens": 36.0}


def _inv(tmp_path: Path, extra: dict) -> Path:
    doc = yaml.safe_load((ROOT / "inventory.example.yaml").read_text())
    doc.update(extra)
    p = tmp_path / "inv.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


def test_secrets_never_reach_the_plan_and_rotation_changes_the_hash(tmp_path, monkeypatch):
    monkeypatch.setenv("T_HF", "hf_supersecretvalue123")
    keyfile = tmp_path / "key"
    keyfile.write_text("sk-apikey-0987654321\n")
    p = _inv(tmp_path, {"secrets": {"HF_TOKEN": {"env": "T_HF"}}, "api_key": {"file": str(keyfile)}})
    dep = Deployment.load(p)
    plan = dep.plan()
    text = str(plan.to_json())
    assert "hf_supersecretvalue123" not in text and "sk-apikey-0987654321" not in text
    node = plan.nodes[0]
    assert node.argv[node.argv.index("--env-file") + 1] == "/dev/stdin"
    assert node.to_json()["env"]["HF_TOKEN"] == "***"
    assert dep.secrets.env_file() == "HF_TOKEN=hf_supersecretvalue123\nVLLM_API_KEY=sk-apikey-0987654321\n"
    assert dep.api_key == "sk-apikey-0987654321"
    assert not plan.warnings and not plan.groups[0].warnings  # an API key: no 0.0.0.0 warning
    assert secrets.mask("token hf_supersecretvalue123 in a log") == "token *** in a log"
    monkeypatch.setenv("T_HF", "hf_rotated_value_456")
    assert Deployment.load(p).plan().nodes[0].spec_hash != node.spec_hash


@pytest.mark.parametrize(("ref", "needle"), [
    ({"env": "ORCH_TEST_UNSET_VAR"}, "$ORCH_TEST_UNSET_VAR, which is not set"),
    ({"file": "/nonexistent/key"}, "comes from /nonexistent/key"),
])
def test_missing_secret_is_an_input_error_without_value(tmp_path, ref, needle):
    with pytest.raises(InventoryError) as e:
        Deployment.load(_inv(tmp_path, {"secrets": {"HF_TOKEN": ref}}))
    assert needle in str(e.value) and "secrets.HF_TOKEN" in str(e.value)


def test_secret_ref_needs_exactly_one_source(tmp_path):
    with pytest.raises(InventoryError, match="exactly one of env"):
        Deployment.load(_inv(tmp_path, {"api_key": {"env": "A", "file": "/x"}}))


def test_png_is_a_valid_png():
    url = png_data_url(8, 4)
    raw = base64.b64decode(url.split(",", 1)[1])
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    idat = raw[raw.index(b"IDAT") + 4:raw.index(b"IEND") - 8]
    assert len(zlib.decompress(idat)) == 4 * (1 + 8 * 3)
    assert is_vision_language("Qwen/Qwen3-VL-235B-A22B-Instruct", "qwen3")
    assert not is_vision_language("/models/tiny", "tiny")


def test_bench_argv_uses_the_seed_preset():
    plan = Deployment.load(ROOT / "inventory.example.yaml", with_secrets=False).plan()
    argv = bench_argv(plan, "seed-random-200", None)
    assert argv[:3] == ["vllm", "bench", "serve"]
    for k, v in PRESETS["seed-random-200"].items():
        assert argv[argv.index(k) + 1] == str(v)
    assert argv[argv.index("--model") + 1] == "qwen3"
    assert bench_argv(plan, "lab-tiny", 3)[bench_argv(plan, "lab-tiny", 3).index("--num-prompts") + 1] == "3"
    assert figures({"mean_ttft_ms": 10, "completed": 8, "x": "y"}) == {"completed": 8.0, "mean_ttft_ms": 10.0}


def test_plan_shows_the_container_names_up_creates(tmp_path, monkeypatch):
    monkeypatch.setenv("T_HF", "hf_value_for_names")
    p = _inv(tmp_path, {"secrets": {"HF_TOKEN": {"env": "T_HF"}}})
    up_names = [n.container for n in Deployment.load(p).plan().nodes]
    shown = Deployment.load(p, secrets_optional=True).plan()  # what `orch plan` renders
    assert [n.container for n in shown.nodes] == up_names and not shown.warnings
    monkeypatch.delenv("T_HF")  # where the secret cannot be read, the plan says so
    shown = Deployment.load(p, secrets_optional=True).plan()
    assert any("differ from the ones `orch up` creates" in w for w in shown.warnings)
