"""Golden tests: every `vllm serve` and `docker run` line of the seeds, rendered from a playbook
+ an inventory (tests/data/inventories/), compared flag for flag and env var for env var.

Order does not matter (vLLM and docker take options in any order).  Normalised on both sides,
because the tools themselves treat these forms alike: `--flag=value` = `--flag value`;
`_` = `-` in vLLM flag names; JSON values compared as JSON; docker's `--network` = `--net`,
bare `--privileged` = `--privileged=true`, `--cap-add CAP_X` = `--cap-add X`.  Left out on both
sides on purpose: the seed's `--rm -it ... bash` and `--name` (orch runs the server detached as
the container's command, under its own deterministic name and labels) and orch's `-d`,
`--label`, `-e` (the env is compared as env).

Every other difference must be declared in the table with its reason - and every declared
difference must really be there, so the table stays true.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from orchestrator import config
from orchestrator.flags import canonical
from orchestrator.plan import Plan, build_plan
from tests.seeds import command_env, exports, flag_pairs, section, seed_text, split_eq

ROOT = Path(__file__).resolve().parents[2]
INV = ROOT / "tests" / "data" / "inventories"
IPS = {"node0": "192.0.2.10", "node1": "192.0.2.11"}
NIC = "enp189s0f0"


@dataclass(frozen=True)
class Block:
    seed: str
    start: str
    end: str
    nth: int = 0

    def text(self) -> str:
        return section(seed_text(self.seed), self.start, self.end, self.nth)


@dataclass(frozen=True)
class Case:
    id: str
    kind: str  # "serve" or "docker"
    block: Block
    inventory: str
    node: str = "node0"
    playbook: str | None = None  # overrides the inventory's playbook
    env_blocks: tuple[Block, ...] = ()  # further blocks whose exports apply (serve only)
    extra: dict[str, str] = field(default_factory=dict)  # ours only: flag / env / "flag value"
    missing: dict[str, str] = field(default_factory=dict)  # the seed's only
    changed: dict[str, str] = field(default_factory=dict)  # both, other value


NIC_ENV = {k: "orch sets the node's own NIC/IP on every node (profile nic_env), single-node too"
           for k in ("HCCL_IF_IP", "GLOO_SOCKET_IFNAME", "TP_SOCKET_IFNAME", "HCCL_SOCKET_IFNAME")}
NV_NIC_ENV = {k: "orch sets the node's own NIC/IP (profile nic_env)"
              for k in ("NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME")}
HOST_IP = {"VLLM_HOST_IP": "deliberate: vLLM's own IP guess picks the wrong NIC on multi-NIC hosts"}
HOST_PORT = {"--host": "explicit (vLLM's default binds all addresses too)",
             "--port": "explicit, so orch knows where to probe (vLLM's default is 8000 too)"}
SERVED = {"--served-model-name": "explicit; equal to the model path, vLLM's default"}
SIZES_1 = {"--data-parallel-size": "explicit 1 (vLLM's default)"}
TP_1 = {"--tensor-parallel-size": "explicit 1 (vLLM's default)"}
HCCN = {"-v /usr/local/Ascend/driver/tools/hccn_tool:/usr/local/Ascend/driver/tools/hccn_tool":
        "the Ascend profiles mount hccn_tool on every node (link checks)"}
CACHE_NOTE = "the seed starts an interactive shell; orch publishes nothing else"
A3_DEVICES = {f"--device /dev/davinci{i}": "all 16 A3 dies (the seed's comment: A3 -> /dev/davinci[0-15])"
              for i in range(8, 16)}

S000 = "000"
S001 = "001"
S002 = "002"
S003 = "003"
S004 = "004"
D000 = Block(S000, "```{code-block} bash", "::::")
D001 = Block(S001, "export NAME=vllm-ascend\n", "You can build all from source.")
SETUP002 = Block(S002, "Setup environment variables:", "Note")

CASES = [
    # --- seed 000: Qwen3-VL-235B-A22B, 2 x A2 DP2 x TP8 + EP, and the same on 1 x A3 ---
    Case("000-a2-node0-serve", "serve", Block(S000, "Node 0\n", "Node1\n"), "seed000-a2-dp.yaml",
         extra=HOST_IP),
    Case("000-a2-node1-serve", "serve", Block(S000, "Node1\n", "The parameters are explained"),
         "seed000-a2-dp.yaml", node="node1", extra=HOST_IP),
    Case("000-a2-node0-docker", "docker", D000, "seed000-a2-dp.yaml"),
    Case("000-a2-node1-docker", "docker", D000, "seed000-a2-dp.yaml", node="node1"),
    Case("000-a3-serve", "serve", Block(S000, "Node 0\n", "Node1\n"), "seed000-a3.yaml", extra=HOST_IP,
         changed={"--data-parallel-size-local": "2: both DP ranks on the one A3 node (the seed's "
                  "script is node 0 of two)"}),
    Case("000-a3-docker", "docker", D000, "seed000-a3.yaml", extra=A3_DEVICES),
    # --- seed 001: Qwen3-235B-A22B ---
    Case("001-w8a8-a2-tp8-serve", "serve", Block(S001, "execute online 128k inference.", "Notice:"),
         "seed001-w8a8-a2-tp8.yaml", extra={**NIC_ENV, **HOST_IP}),
    Case("001-w8a8-a3-tp8-serve", "serve", Block(S001, "execute online 128k inference.", "Notice:"),
         "seed001-w8a8-a3-tp8.yaml", extra={**NIC_ENV, **HOST_IP}),
    Case("001-w8a8-a2-tp8-docker", "docker", D001, "seed001-w8a8-a2-tp8.yaml"),
    Case("001-w8a8-a3-tp8-docker", "docker", D001, "seed001-w8a8-a3-tp8.yaml"),
    Case("001-dp-node0-serve", "serve", Block(S001, "Node 0\n", "Node1\n"), "seed001-a2-dp.yaml",
         extra=HOST_IP),
    Case("001-dp-node1-serve", "serve", Block(S001, "Node1\n", "If the service starts"),
         "seed001-a2-dp.yaml", node="node1", extra=HOST_IP),
    Case("001-dp-node0-docker", "docker", D001, "seed001-a2-dp.yaml"),
    Case("001-dp-node1-docker", "docker", D001, "seed001-a2-dp.yaml", node="node1"),
    Case("001-a3-tp4-dp4-serve", "serve", Block(S001, "Single Node A3 (64G*16)#", "Benchmark scripts:"),
         "seed001-w8a8-a3-tp4-dp4.yaml", extra={**NIC_ENV, **HOST_IP}),
    Case("001-a3-tp4-dp4-docker", "docker", D001, "seed001-w8a8-a3-tp4-dp4.yaml", extra=A3_DEVICES),
    # --- seed 002: Qwen-VL dense ---
    Case("002-8b-1npu-serve", "serve", Block(S002, "vLLM server on single-NPU:", "Note"),
         "seed002-qwen3-vl-8b.yaml", env_blocks=(SETUP002,),
         extra={**HOST_PORT, **SERVED, **SIZES_1, **TP_1, **NIC_ENV, **HOST_IP}),
    Case("002-8b-1npu-docker", "docker", Block(S002, "Run docker container:", "Run docker container:"),
         "seed002-qwen3-vl-8b.yaml", extra=HCCN),
    Case("002-32b-tp2-serve", "serve", Block(S002, "server on multi-NPU:", "Note"),
         "seed002-qwen2.5-vl-32b.yaml", env_blocks=(SETUP002,),
         extra={**SERVED, **SIZES_1, **NIC_ENV, **HOST_IP},
         changed={"LD_PRELOAD": "the seed picks Ubuntu's or openEuler's path in a shell `if` and "
                  "appends :$LD_PRELOAD; docker -e does not expand, so orch sets Ubuntu's path"}),
    Case("002-32b-tp2-docker", "docker", Block(S002, "Run docker container:", "Setup environment", nth=1),
         "seed002-qwen2.5-vl-32b.yaml", extra=HCCN),
    # --- seed 003: Qwen2.5-VL-32B-w8a8 TP2 ---
    Case("003-w8a8-tp2-serve", "serve", Block(S003, "### Single-node Deployment", "### Prefill"),
         "seed003-w8a8-tp2.yaml", extra={**SIZES_1, **NIC_ENV, **HOST_IP},
         changed={"LD_PRELOAD": "the seed appends :$LD_PRELOAD, which docker -e would not expand",
                  "--max-num-batched-tokens": "the seed passes it twice (2048, 50000); vLLM keeps "
                  "the last, orch renders 50000 once"}),
    Case("003-w8a8-tp2-docker", "docker", Block(S003, "### Run docker container", "### Single-node"),
         "seed003-w8a8-tp2.yaml",
         extra={**HCCN, "-v /data/Qwen2.5-VL-32B-Instruct-w8a8:/data/Qwen2.5-VL-32B-Instruct-w8a8:ro":
                "orch mounts an absolute model path read-only by itself"}),
    # --- seed 004: Qwen3-VL on NVIDIA and AMD ---
    Case("004-h100-fp8-tp8-serve", "serve", Block(S004, "FP8)</summary>", "</details>"),
         "seed004-fp8.yaml", extra={**HOST_PORT, **SERVED, **SIZES_1, **NV_NIC_ENV, **HOST_IP}),
    Case("004-h100-fp8-tp4-serve", "serve", Block(S004, "FP8, TP4)</summary>", "</details>"),
         "seed004-fp8.yaml", playbook="qwen3-vl-235b-a22b-fp8-h100-tp4",
         extra={**HOST_PORT, **SERVED, **SIZES_1, **NV_NIC_ENV, **HOST_IP}),
    Case("004-h100-bf16-image-serve", "serve", Block(S004, "(Image Inference, BF16)</summary>", "</details>"),
         "seed004-bf16.yaml", extra={**HOST_PORT, **SERVED, **SIZES_1, **NV_NIC_ENV, **HOST_IP}),
    Case("004-h100-bf16-128k-serve", "serve", Block(S004, "(Image + Video Inference, BF16)</summary>",
         "</details>"), "seed004-bf16.yaml", playbook="qwen3-vl-235b-a22b-h100-tp8-128k",
         extra={**HOST_PORT, **SERVED, **SIZES_1, **NV_NIC_ENV, **HOST_IP}),
    Case("004-h200-serve", "serve", Block(S004, "H200 & B200</summary>", "</details>"),
         "seed004-bf16.yaml", playbook="qwen3-vl-235b-a22b-h200-tp8",
         extra={**HOST_PORT, **SERVED, **SIZES_1, **NV_NIC_ENV, **HOST_IP}),
    Case("004-mi300x-serve", "serve", Block(S004, "Sample Command", "### Step 4"), "seed004-mi300x.yaml",
         env_blocks=(Block(S004, "Launch the ROCm vLLM docker:", "### Step 2"),),
         extra={**HOST_PORT, **SERVED, **SIZES_1, **NV_NIC_ENV, **HOST_IP,
                "--tensor-parallel-size": "orch writes the full name"},
         missing={"--tensor-parallel": "the seed abbreviates --tensor-parallel-size (argparse "
                  "prefix match); orch writes the full name"}),
    Case("004-mi300x-docker", "docker", Block(S004, "Launch the ROCm vLLM docker:", "### Step 2"),
         "seed004-mi300x.yaml",
         missing={"-v $(pwd):/work": "the operator's working directory; not part of the recipe"}),
]


def plan_for(case: Case) -> Plan:
    path = INV / case.inventory
    inv = config.load_inventory(path)
    pb_path = config.find_playbook(case.playbook or inv.playbook, path)
    pb = config.load_playbook(pb_path)
    return build_plan(inv, pb, config.load_profile(pb.profile, pb_path))


def values(node: str) -> dict[str, str]:
    return {"local_ip": IPS[node], "nic_name": NIC, "node0_ip": IPS["node0"]}


def _norm_value(v: str | None) -> str | None:
    if v is not None and v[:1] in "{[":
        try:
            return json.dumps(json.loads(v), sort_keys=True)
        except ValueError:
            return v
    return v


def serve_pairs(tokens: list[str]) -> Counter[tuple[str, str | None]]:
    return Counter((canonical(f), _norm_value(v)) for f, v in flag_pairs(split_eq(tokens)))


DOCKER_ALIASES = {"--network": "--net"}
DOCKER_SKIPPED = {"--rm", "-it", "-d", "--name", "--label", "-e", "--env-file"}


def docker_pairs(tokens: list[str]) -> Counter[tuple[str, str | None]]:
    out: Counter[tuple[str, str | None]] = Counter()
    for f, v in flag_pairs(split_eq(tokens)):
        f = DOCKER_ALIASES.get(f, f)
        if not f.startswith("-") or f in DOCKER_SKIPPED:
            continue
        if f == "--privileged" and v is None:
            v = "true"
        if f == "--cap-add" and v:
            v = v.removeprefix("CAP_")
        out[(f, v)] += 1
    return out


def seed_docker_env(tokens: list[str]) -> dict[str, str]:
    toks = split_eq(tokens)
    return dict(toks[i + 1].split("=", 1) for i, t in enumerate(toks) if t == "-e")


def diff_by_name(ours: Counter, seed: Counter) -> tuple[set[str], set[str], set[str]]:
    """(names only ours have, names only the seed has, names both have with other values)."""
    names_o = {f for f, _ in ours}
    names_s = {f for f, _ in seed}
    changed = {f for f in names_o & names_s
               if sorted((p for p in ours.elements() if p[0] == f), key=str)
               != sorted((p for p in seed.elements() if p[0] == f), key=str)}
    return names_o - names_s, names_s - names_o, changed


def diff_by_pair(ours: Counter, seed: Counter) -> tuple[set[str], set[str]]:
    show = lambda c: {f"{f} {v}" if v is not None else f for f, v in c.elements()}  # noqa: E731
    return show(ours - seed), show(seed - ours)


@pytest.mark.parametrize("case", [c for c in CASES if c.kind == "serve"], ids=lambda c: c.id)
def test_serve_line_and_env_match_the_seed(case: Case) -> None:
    plan = plan_for(case)
    spec = plan.node(case.node)
    block = case.block.text()
    inline_env, seed_cmd = command_env(block, ["vllm", "serve"], values(case.node))
    ours = spec.serve_argv
    assert ours[:3] == seed_cmd[:3], "vllm serve <model>"

    extra, missing, changed = diff_by_name(serve_pairs(ours[3:]), serve_pairs(seed_cmd[3:]))

    seed_env: dict[str, str] = {}
    for b in case.env_blocks:
        seed_env.update(exports(b.text(), values(case.node)))
        if "docker run" in b.text():
            seed_env.update(seed_docker_env(command_env(b.text(), ["docker", "run"], {})[1]))
    seed_env.update(exports(block, values(case.node)))
    seed_env.update(inline_env)
    env = spec.env
    extra |= set(env) - set(seed_env)
    missing |= set(seed_env) - set(env)
    changed |= {k for k in set(env) & set(seed_env) if env[k] != seed_env[k]}

    assert extra == set(case.extra), "flags/env only orch renders (declare them with a reason)"
    assert missing == set(case.missing), "flags/env of the seed orch does not render"
    assert changed == set(case.changed), "flags/env with another value than the seed's"


@pytest.mark.parametrize("case", [c for c in CASES if c.kind == "docker"], ids=lambda c: c.id)
def test_docker_run_matches_the_seed(case: Case) -> None:
    plan = plan_for(case)
    argv = plan.node(case.node).argv
    ours = argv[2 : argv.index(plan.image)]
    _, seed_cmd = command_env(case.block.text(), ["docker", "run"], {})
    extra, missing = diff_by_pair(docker_pairs(ours), docker_pairs(seed_cmd[2:]))
    assert extra == set(case.extra), "run options only orch renders"
    assert missing == set(case.missing), "run options of the seed orch does not render"
    env = plan.node(case.node).env
    for k, v in seed_docker_env(seed_cmd).items():
        assert env.get(k) == v, f"the seed's docker -e {k}={v}"


def test_every_seed_command_line_has_a_case() -> None:
    """Each seed's `vllm serve` / `docker run` lines (deployment recipes, not benchmarks) are
    covered: count them in the text and in the table."""
    covered = Counter((c.block.seed, c.kind, (c.block.start, c.block.nth)) for c in CASES)
    for seed, kind, word in [(s, k, w) for s in (S000, S001, S002, S003, S004)
                             for k, w in (("serve", "vllm serve "), ("docker", "docker run"))]:
        text = seed_text(seed)
        n = text.count(word) - text.count("vllm serve --model")
        n -= PD_LINES.get((seed, kind), 0)
        starts = {st for (s, k, st) in covered if s == seed and k == kind}
        assert len(starts) == n, f"seed {seed}: {n} {kind} lines, {len(starts)} covered"


# Seed 001's prefill/decode lines (three `vllm serve`) are covered by test_playbooks_pd.py.
PD_LINES = {(S001, "serve"): 3}
