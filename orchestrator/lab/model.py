"""A tiny dense Qwen3 model made on the spot (no hub): config + a tokenizer trained in-process.

Served with `--load-format dummy` (random weights), so no weights file is needed. The
generator runs with the image venv's python (it has `tokenizers` and `transformers`),
inside the cached rootfs, and checks the result with transformers before it is moved to
`<lab dir>/models/tiny-qwen3`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ._util import LabError, Progress, lab_dir
from .image import build_rootfs, chroot_output, rootfs_dir

MODEL_NAME = "tiny-qwen3"
RECIPE = 1  # bump when the generator changes

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

GENERATOR = r'''
import json, sys
from pathlib import Path
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
config, chat_template = json.loads(sys.argv[2]), sys.argv[3]
special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
words = ("the a an of to and in is it that for on with as was by at be this from or have "
         "model server node cluster data parallel head rank token prompt answer request "
         "network namespace container image host port test lab tiny hello world").split()
corpus = [" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(12)) for i in range(400)]
corpus += ["Hello, how are you today? I am fine, thank you.", "0123456789 +-*/=()[]{}<>,.;:!?"]
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
trainer = trainers.BpeTrainer(vocab_size=config["vocab_size"], special_tokens=special,
                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
tok.train_from_iterator(corpus, trainer)
assert tok.get_vocab_size() <= config["vocab_size"], tok.get_vocab_size()
ids = {s: tok.token_to_id(s) for s in special}
assert ids == {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2}, ids
tok.save(str(out / "tokenizer.json"))
(out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
added = {str(i): {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                  "single_word": False, "special": True} for s, i in ids.items()}
(out / "tokenizer_config.json").write_text(json.dumps({
    "tokenizer_class": "PreTrainedTokenizerFast", "added_tokens_decoder": added,
    "bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
    "unk_token": None, "model_max_length": config["max_position_embeddings"],
    "clean_up_tokenization_spaces": False, "chat_template": chat_template}, indent=2) + "\n")
(out / "generation_config.json").write_text(json.dumps({
    "bos_token_id": 0, "eos_token_id": [2, 0], "pad_token_id": 0}, indent=2) + "\n")
from transformers import AutoConfig, AutoTokenizer
t = AutoTokenizer.from_pretrained(str(out))
AutoConfig.from_pretrained(str(out))
text = t.apply_chat_template([{"role": "user", "content": "hello"}], tokenize=False,
                             add_generation_prompt=True)
assert t.decode(t.encode("hello world")) == "hello world"
print("ok", tok.get_vocab_size(), repr(text))
'''


def model_dir() -> Path:
    return lab_dir() / "models" / MODEL_NAME


def ensure_model(progress: Progress) -> Path:
    """Make the model folder unless it exists from this recipe. Returns its path."""
    import json

    dest = model_dir()
    stamp = dest / ".orch-lab-recipe"
    if stamp.exists() and stamp.read_text().strip() == str(RECIPE):
        return dest
    with progress.phase("tiny model"):
        build_rootfs(progress)
        work = rootfs_dir() / "tmp" / f"{MODEL_NAME}-build"
        shutil.rmtree(work, ignore_errors=True)
        out = chroot_output(["/opt/vllm/bin/python", "-c", GENERATOR,
                             f"/tmp/{MODEL_NAME}-build", json.dumps(CONFIG), CHAT_TEMPLATE])
        if "ok" not in out:
            raise LabError(f"tiny model generator said: {out[-500:]}")
        progress.say(f"  tokenizer: {out.strip()[-100:]}")
        (work / ".orch-lab-recipe").write_text(f"{RECIPE}\n")
        shutil.rmtree(dest, ignore_errors=True)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(work), dest)
        for p in [dest, *dest.iterdir()]:
            p.chmod(0o755 if p.is_dir() else 0o644)
    return dest
