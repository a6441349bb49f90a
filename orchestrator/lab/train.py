"""Trained weights for the lab's tiny model, so that it answers a few fixed prompts readably.

`train_model(target_dir, progress, config, chat_template)` makes a whole model folder: a
byte-level BPE tokenizer trained on TOKENIZER_WORDS and the answers (so that they tokenize
compactly), config.json, tokenizer_config.json (ChatML template), generation_config.json and
model.safetensors - weights trained from a fixed seed, on CPU, in a few seconds, by SCRIPT,
which runs inside the lab's rootfs (it has torch, transformers and tokenizers; this machine's
python has none). The script memorises EXAMPLES (greedy answers, each ended by its stop
token) to large logit margins, so that bfloat16 and tensor-parallel sharding in vLLM give the
same tokens, and checks the saved bfloat16 weights with transformers before it reports.

Everything but train_model is pure (no torch, no root): the prompts as vLLM renders them,
the training spec, its fingerprint (model.py's cache stamp) and the script's text.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from ._util import LabError, Progress
from .image import build_rootfs, chroot_output, rootfs_dir

SEED = 1234
MARGIN = 10.0  # min logit margin (answer token over the runner-up) the training aims at
MIN_MARGIN = 4.0  # below this, in bfloat16, the build fails: sharding could flip a token
MAX_STEPS = 1000
LR = 0.01  # AdamW, full batch
NONCES = 1  # PD-test-like sequences trained (long: most of the training time)
IM_START, IM_END, EOT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
SPECIAL_TOKENS = [EOT, IM_START, IM_END]  # ids 0, 1, 2 (config: bos/pad 0, eos 2)

# 11 tokens + <|im_end|>: fits the demo's max_tokens 12, so the chat stops by itself there.
GREETING = "Hello, operators! I am orch's tiny model."

# (kind, prompt, answer). chat: one user message, rendered with the ChatML template and
# add_generation_prompt, answered then <|im_end|>; completion: the raw prompt, answered then
# <|endoftext|>. Who sends them: the demo (greeting), orch's smoke test (France, five words),
# readiness probe ("Hello", max_tokens 4), health probe ("ping", max_tokens 1), the PD lab
# test ("Say hello"). "Hello" goes on past 8 tokens: the Ray lab test wants 8.
EXAMPLES: list[tuple[str, str, str]] = [
    ("chat", "Say hello to the operators.", GREETING),
    ("chat", "Say hello in five words.", "Hello from orch's tiny model."),
    ("chat", "Say hello", "Hello, operators!"),
    ("chat", "What is the capital of France?", "The capital of France is Paris."),
    ("chat", "ping", "pong"),
    ("completion", "The capital of France is", " Paris."),
    ("completion", "Hello", GREETING.removeprefix("Hello")),
    ("completion", "ping", " pong"),
]

# Unseen prompts should go on with text, not stop at once (lab tests count tokens): the
# script also trains plain next-token prediction, with no stop token, on filler() sentences,
# and reports how many PD-test-like prompts (a random hex nonce, then REPEAT_PHRASE 5 times)
# stop within 6 tokens. The tokenizer does NOT learn REPEAT_PHRASE's words, so that such a
# prompt stays over one 128-token KV block, as the PD lab test needs.
REPEAT_PHRASE = "the quick brown fox jumps over the lazy dog "
TOKENIZER_WORDS = (
    "the a an of to and in is it that for on with as was by at be this from or have "
    "model server node cluster data parallel head rank token prompt answer request "
    "network namespace container image host port test lab tiny hello world").split()


# Most tokens an answer (with its stop token) may take: the demo asks with max_tokens 12.
TOKEN_BUDGETS = {("chat", "Say hello to the operators."): 12}


def render_chat(user: str) -> str:
    """One user message as the lab's ChatML template renders it with add_generation_prompt
    (the script checks this against the tokenizer's own rendering)."""
    return f"{IM_START}user\n{user}{IM_END}\n{IM_START}assistant\n"


def examples() -> list[dict[str, Any]]:
    """EXAMPLES with the exact prompt text the model sees and the stop token it must emit."""
    out = []
    for kind, prompt, answer in EXAMPLES:
        if kind not in ("chat", "completion"):
            raise ValueError(f"unknown example kind {kind!r}")
        out.append({"kind": kind, "user": prompt, "answer": answer,
                    "prompt": render_chat(prompt) if kind == "chat" else prompt,
                    "stop": IM_END if kind == "chat" else EOT,
                    "max_tokens": TOKEN_BUDGETS.get((kind, prompt))})
    return out


def filler() -> list[str]:
    """Plain sentences (deterministic) for next-token prediction without a stop."""
    w = TOKENIZER_WORDS
    return [" ".join(w[(i * 5 + j * 3) % len(w)] for j in range(10)) for i in range(12)]


def tokenizer_corpus() -> list[str]:
    """The tokenizer's training text: the lab's word list, and every prompt and answer
    many times, so that their words become single tokens."""
    w = TOKENIZER_WORDS
    corpus = [" ".join(w[(i * 7 + j * 3) % len(w)] for j in range(12)) for i in range(400)]
    corpus += ["Hello, how are you today? I am fine, thank you.", "0123456789 +-*/=()[]{}<>,.;:!?"]
    for ex in examples():
        corpus += [ex["user"], ex["prompt"] + ex["answer"]] * 40
    return corpus


def spec(config: dict[str, Any], chat_template: str) -> dict[str, Any]:
    """Everything SCRIPT needs, as JSON."""
    return {"config": config, "chat_template": chat_template, "special": SPECIAL_TOKENS,
            "corpus": tokenizer_corpus(), "examples": examples(), "filler": filler(),
            "repeat_phrase": REPEAT_PHRASE, "repeat_times": 5, "nonces": NONCES, "probes": 20,
            "seed": SEED, "lr": LR, "margin": MARGIN, "min_margin": MIN_MARGIN,
            "max_steps": MAX_STEPS}


def fingerprint(config: dict[str, Any], chat_template: str) -> str:
    """Short hash of the script and its spec: a model folder made from another is stale."""
    blob = json.dumps(spec(config, chat_template), sort_keys=True) + SCRIPT
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# Runs as `python -c SCRIPT DIR` inside the rootfs; DIR holds spec.json; writes the model
# there; prints one line "RESULT <json>".
SCRIPT = r'''
import hashlib, json, random, sys, time
from pathlib import Path
t_start = time.monotonic()
out = Path(sys.argv[1]); spec = json.loads((out / "spec.json").read_text())
config, special = spec["config"], spec["special"]
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoTokenizer, Qwen3ForCausalLM
# deterministic: fixed seed, one thread (the sums' order), deterministic kernels
torch.manual_seed(spec["seed"]); torch.set_num_threads(1); torch.use_deterministic_algorithms(True)
rng = random.Random(spec["seed"])

# 1. tokenizer and the small files
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
tok.train_from_iterator(spec["corpus"], trainers.BpeTrainer(
    vocab_size=config["vocab_size"], special_tokens=special,
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
assert tok.get_vocab_size() <= config["vocab_size"], tok.get_vocab_size()
ids = {s: tok.token_to_id(s) for s in special}
assert list(ids.values()) == [0, 1, 2], ids
tok.save(str(out / "tokenizer.json"))
(out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
added = {str(i): {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                  "single_word": False, "special": True} for s, i in ids.items()}
(out / "tokenizer_config.json").write_text(json.dumps({
    "tokenizer_class": "PreTrainedTokenizerFast", "added_tokens_decoder": added,
    "bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
    "unk_token": None, "model_max_length": config["max_position_embeddings"],
    "clean_up_tokenization_spaces": False, "chat_template": spec["chat_template"]},
    indent=2) + "\n")
(out / "generation_config.json").write_text(json.dumps({
    "bos_token_id": 0, "eos_token_id": [2, 0], "pad_token_id": 0}, indent=2) + "\n")
t = AutoTokenizer.from_pretrained(str(out))

def enc(text):
    a = t(text, add_special_tokens=False).input_ids
    assert t(text).input_ids == a, "the tokenizer adds special tokens"
    return a

# 2. sequences: (ids, weights) - 2: exact (cross-entropy + margin), 1: next-token only
seqs, checks = [], []
for ex in spec["examples"]:
    if ex["kind"] == "chat":
        text = t.apply_chat_template([{"role": "user", "content": ex["user"]}], tokenize=False,
                                     add_generation_prompt=True)
        assert text == ex["prompt"], ("the template renders", text, ex["prompt"])
    p, a = enc(ex["prompt"]), enc(ex["answer"]) + [ids[ex["stop"]]]
    assert t.decode(a[:-1]) == ex["answer"], (t.decode(a[:-1]), ex["answer"])
    assert not ex["max_tokens"] or len(a) <= ex["max_tokens"], ("answer too long", ex, len(a))
    seqs.append((p + a, [0] * len(p) + [2] * len(a)))
    checks.append((ex, p, a))
for s in spec["filler"]:
    x = enc(s)
    seqs.append((x, [0] + [1] * (len(x) - 1)))

def nonce_prompt(r):
    return "%032x " % r.getrandbits(128) + spec["repeat_phrase"] * spec["repeat_times"]

for _ in range(spec["nonces"]):
    text = nonce_prompt(rng)
    p, a, k = enc(text), enc(spec["repeat_phrase"] * 2), len(enc(text[:32]))
    seqs.append((p + a, [0] * (k + 1) + [1] * (len(p) + len(a) - k - 1)))

def batch(group):
    n = max(len(s) for s, _ in group)
    x = torch.tensor([s + [0] * (n - len(s)) for s, _ in group])  # right padding, masked out
    w = torch.tensor([m + [0] * (n - len(m)) for _, m in group])[:, 1:]  # for x[:, 1:]
    am = torch.tensor([[1] * len(s) + [0] * (n - len(s)) for s, _ in group])
    return x, w, am

# short and long sequences in two batches (less padding); gradients add up
long = [s for s in seqs if len(s[0]) > 64]
batches = [batch(g) for g in ([s for s in seqs if len(s[0]) <= 64], long) if g]
n_weighted = sum(int((w > 0).sum()) for _, w, _ in batches)
n_exact = sum(int((w == 2).sum()) for _, w, _ in batches)

# 3. training, fp32: cross-entropy on weighted tokens, plus a hinge that pushes every exact
# token's logit `margin` over the runner-up; stops when all are there
cfg = AutoConfig.from_pretrained(str(out))
model = Qwen3ForCausalLM._from_config(cfg, attn_implementation="eager", dtype=torch.float32)
model.train()
opt = torch.optim.AdamW(model.parameters(), lr=spec["lr"], weight_decay=0.0)
t_train = time.monotonic()
for step in range(spec["max_steps"] + 1):
    opt.zero_grad()
    worst = float("inf")
    for x, w, am in batches:
        logits = model(input_ids=x, attention_mask=am).logits[:, :-1]
        tgt, exact = x[:, 1:], w == 2
        ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                               tgt.reshape(-1), reduction="none").view_as(w)
        loss = ce[w > 0].sum() / n_weighted
        if exact.any():
            right = logits.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
            other = logits.scatter(-1, tgt.unsqueeze(-1), float("-inf")).max(-1).values
            margin = (right - other)[exact]
            worst = min(worst, margin.min().item())
            loss = loss + torch.relu(spec["margin"] - margin).sum() / n_exact
        loss.backward()
    if worst >= spec["margin"] or step == spec["max_steps"]:
        break
    opt.step()
train_s = time.monotonic() - t_train

# 4. save bfloat16 (tied embeddings: no lm_head.weight, as HF and vLLM expect)
state = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()
         if not (cfg.tie_word_embeddings and k == "lm_head.weight")}
save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})

# 5. check the saved weights: greedy answers in bfloat16, their margins, and no early stop
m2, info = Qwen3ForCausalLM.from_pretrained(str(out), dtype=torch.bfloat16,
                                            attn_implementation="eager", output_loading_info=True)
assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
assert m2.lm_head.weight.data_ptr() == m2.model.embed_tokens.weight.data_ptr(), "lm_head not tied"
m2.eval()

@torch.no_grad()
def greedy(p, n, stops=(0, 2)):
    x, got, mar = list(p), [], []
    for _ in range(n):
        lg = m2(input_ids=torch.tensor([x])).logits[0, -1].float()
        top = lg.topk(2)
        got.append(int(top.indices[0])); mar.append(float(top.values[0] - top.values[1]))
        x.append(got[-1])
        if got[-1] in stops:
            break
    return got, mar

answers, min_bf16 = {}, float("inf")
for ex, p, a in checks:
    got, mar = greedy(p, len(a) + 2)
    key = ex["kind"] + ": " + ex["user"]
    assert got == a, (key, t.decode(got), ex["answer"])
    min_bf16 = min(min_bf16, min(mar))
    answers[key] = t.decode(got[:-1])
assert min_bf16 >= spec["min_margin"], ("bfloat16 margin too small", min_bf16)
probe_rng = random.Random(spec["seed"] + 1)
early = 0
for _ in range(spec["probes"]):
    got, _ = greedy(enc(nonce_prompt(probe_rng)), 6)
    early += len(got) < 6
answers["completion: Hello (4 tokens)"] = t.decode(greedy(enc("Hello"), 4)[0])
sha = hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
print("RESULT " + json.dumps({
    "steps": step, "train_s": round(train_s, 2), "total_s": round(time.monotonic() - t_start, 2),
    "min_margin_fp32": round(worst, 2), "min_margin_bf16": round(min_bf16, 2),
    "vocab": tok.get_vocab_size(), "sequences": len(seqs), "check_dtype": str(m2.dtype),
    "nonce_prompts_stopping_early": early, "answers": answers,
    "prompt_tokens": {ex["kind"] + ": " + ex["user"]: len(p) for ex, p, _ in checks},
    "answer_tokens": {ex["kind"] + ": " + ex["user"]: len(a) for ex, _, a in checks},
    "nonce_prompt_tokens": len(enc(nonce_prompt(probe_rng))), "sha256": sha}))
'''

OUTPUT_FILES = ["config.json", "generation_config.json", "tokenizer.json",
                "tokenizer_config.json", "model.safetensors"]


def parse_result(stdout: str) -> dict[str, Any]:
    """The script's RESULT line."""
    for line in reversed(stdout.splitlines()):
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
            return result
    raise LabError(f"the training script printed no result: {stdout[-800:]}")


def train_model(target_dir: Path, progress: Progress, config: dict[str, Any],
                chat_template: str) -> dict[str, Any]:
    """Make the trained model folder `target_dir` (replaced); returns the script's result."""
    build_rootfs(progress)
    name = f"orch-train-{os.getpid()}"
    work = rootfs_dir() / "tmp" / name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        (work / "spec.json").write_text(json.dumps(spec(config, chat_template)))
        with progress.phase("train the tiny model (in the rootfs)"):
            result = parse_result(chroot_output(["/opt/vllm/bin/python", "-c", SCRIPT,
                                                 f"/tmp/{name}"]))
        progress.say(f"  trained: {result['steps']} steps in {result['train_s']}s, "
                     f"min margin {result['min_margin_bf16']} (bf16)")
        target_dir = Path(target_dir)
        shutil.rmtree(target_dir, ignore_errors=True)
        target_dir.mkdir(parents=True)
        for f in OUTPUT_FILES:
            shutil.copy(work / f, target_dir / f)
            (target_dir / f).chmod(0o644)
        if result["nonce_prompts_stopping_early"]:
            progress.say(f"  warning: {result['nonce_prompts_stopping_early']} PD-test-like "
                         "prompts stop within 6 tokens (the PD lab test wants 6)")
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)
