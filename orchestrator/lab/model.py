"""A tiny dense Qwen3 model made on the spot (no hub): its config and chat template here,
the tokenizer and weights trained in a few seconds by train.py (inside the cached rootfs,
which has torch, tokenizers and transformers), so that it answers the lab's fixed prompts
readably (see train.EXAMPLES). The result goes to `<lab dir>/models/tiny-qwen3`.

`--load-format dummy` still gives random weights (vLLM then ignores model.safetensors).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ._util import Progress, lab_dir
from .train import fingerprint, train_model

MODEL_NAME = "tiny-qwen3"
RECIPE = 2  # bump when the build changes (the stamp also holds train.py's fingerprint)

# head_dim 32: the CPU attention rejects head size 16. Dense: DP > 1 with the CPU build's
# MoE fails (missing all_gatherv), a dense model needs no patch.
CONFIG = {
    "architectures": ["Qwen3ForCausalLM"],
    "model_type": "qwen3",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "vocab_size": 1024,
    "max_position_embeddings": 512,
    "max_window_layers": 2,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "rope_scaling": None,
    "attention_bias": False,
    "attention_dropout": 0.0,
    "use_sliding_window": False,
    "sliding_window": None,
    "tie_word_embeddings": True,
    "initializer_range": 0.02,
    "use_cache": True,
    "torch_dtype": "bfloat16",
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 0,
}

CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def model_dir() -> Path:
    return lab_dir() / "models" / MODEL_NAME


def recipe_stamp() -> str:
    return f"{RECIPE} {fingerprint(CONFIG, CHAT_TEMPLATE)}"


def ensure_model(progress: Progress) -> Path:
    """Make the model folder unless it exists from this recipe. Returns its path."""
    dest = model_dir()
    stamp = dest / ".orch-lab-recipe"
    if stamp.exists() and stamp.read_text().strip() == recipe_stamp():
        return dest
    with progress.phase("tiny model"):
        work = dest.parent / f".{MODEL_NAME}-build"
        result = train_model(work, progress, CONFIG, CHAT_TEMPLATE)
        progress.say(f"  answers: {result['answers']}")
        (work / ".orch-lab-recipe").write_text(recipe_stamp() + "\n")
        shutil.rmtree(dest, ignore_errors=True)
        work.rename(dest)
        for p in [dest, *dest.iterdir()]:
            p.chmod(0o755 if p.is_dir() else 0o644)
    return dest
