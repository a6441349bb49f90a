"""`orch bench`: `vllm bench serve` run inside the head's container (no local vLLM needed),
with the seeds' presets; the result JSON is kept in the state directory and compared with the
seeds' reference figures for the recipe when there are some."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from . import state
from .cluster import Session
from .config import REPO_PLAYBOOKS
from .errors import DeployError, InputError
from .plan import Fleet

PRESETS: dict[str, dict[str, object]] = {
    # seed 000/001: vllm bench serve --dataset-name random --random-input 200 --num-prompts 200 --request-rate 1
    "seed-random-200": {"--dataset-name": "random", "--random-input-len": 200, "--num-prompts": 200,
                        "--request-rate": 1},
    # seed 001 (A3 performance): 3584 in / 1536 out, 800 prompts, concurrency 160, rate 24
    "seed-perf-3584": {"--dataset-name": "random", "--random-input-len": 3584, "--random-output-len": 1536,
                       "--num-prompts": 800, "--max-concurrency": 160, "--request-rate": 24,
                       "--ignore-eos": None},
    # the lab: a few short requests (tiny CPU model)
    "lab-tiny": {"--dataset-name": "random", "--random-input-len": 16, "--random-output-len": 8,
                 "--num-prompts": 8, "--max-concurrency": 2, "--ignore-eos": None},
}
FIGURES = ("completed", "failed", "duration", "request_throughput", "output_throughput",
           "mean_ttft_ms", "median_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "median_tpot_ms",
           "mean_itl_ms", "mean_e2el_ms")
RESULT_IN_CONTAINER = "/tmp/orch-bench"


@dataclass
class BenchResult:
    preset: str
    path: Path
    figures: dict[str, float]
    reference: dict[str, float] | None


def base_url(fleet: Fleet) -> str:
    """Where the benchmark sends its requests from inside the entry container: its own API on
    loopback (host network), or a fleet's router."""
    g = fleet.groups[0]
    return fleet.api_url if fleet.router is not None else f"http://127.0.0.1:{g.api_port}"


def bench_argv(fleet: Fleet, preset: str, num_prompts: int | None) -> list[str]:
    if preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    flags = dict(PRESETS[preset])
    if num_prompts:
        flags["--num-prompts"] = num_prompts
    argv = ["vllm", "bench", "serve", "--backend", "vllm", "--base-url", base_url(fleet),
            "--model", fleet.served_name, "--tokenizer", fleet.groups[0].model, "--save-result",
            "--result-dir", RESULT_IN_CONTAINER, "--result-filename", "result.json"]
    for k, v in flags.items():
        argv.append(k)
        if v is not None:
            argv.append(str(v))
    return argv


def references(playbook: str, preset: str) -> dict[str, float] | None:
    """Reference figures of the seeds (playbooks/_references.yaml), if any for this pair."""
    path = REPO_PLAYBOOKS / "_references.yaml"
    if not path.is_file():
        return None
    data = yaml.safe_load(path.read_text()) or {}
    return (data.get(playbook) or {}).get(preset)


def figures(result: dict[str, object]) -> dict[str, float]:
    return {k: float(v) for k in FIGURES if isinstance(v := result.get(k), (int, float))}


def save(deployment: str, preset: str, text: str) -> Path:
    p = state.deployment_dir(deployment) / "bench" / f"{time.strftime('%Y%m%dT%H%M%S')}-{preset}.json"
    state.write_private(p, text)
    return p


def parse_result(text: str) -> dict[str, object]:
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise DeployError(f"vllm bench serve wrote no readable result: {text[:200]}") from exc
    if not isinstance(doc, dict):
        raise DeployError("vllm bench serve result is not a JSON object")
    return doc


async def run_in_head(s: Session, fleet: Fleet, preset: str, num_prompts: int | None,
                      timeout: float) -> tuple[dict[str, object], Path]:
    """Run the benchmark in the (first) group's entry container (the head, or the PD proxy);
    return the result and where it is kept."""
    argv = bench_argv(fleet, preset, num_prompts)
    entry = fleet.groups[0].entry
    h = s.hosts[entry.name]
    cs = [c for c in await s.containers(h) if c.running and c.spec_hash == entry.spec_hash]
    if not cs:
        raise DeployError(f"no running container of {fleet.deployment} (as planned) on "
                          f"{entry.name}; run orch up first")
    rt = s.runtime
    if s.dep.api_key:
        # the container already holds the key as VLLM_API_KEY; never put it in an argv
        argv = ["sh", "-c", 'OPENAI_API_KEY="$VLLM_API_KEY" exec "$@"', "sh", *argv]
    await h.run([rt, "exec", cs[0].id, *argv], timeout=timeout)
    r = await h.run([rt, "exec", cs[0].id, "cat", f"{RESULT_IN_CONTAINER}/result.json"], timeout=60)
    result = parse_result(r.stdout)
    return result, save(fleet.deployment, preset, r.stdout)
