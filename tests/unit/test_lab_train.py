"""The pure parts of the lab's model training (orchestrator/lab/train.py): the prompts as the
chat template renders them, the spec the script gets, the script's text. Training itself runs
in the lab's rootfs (torch) and is proven against real vLLM, not here."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from orchestrator.deploy.ready import READY_PROMPT
from orchestrator.lab import train
from orchestrator.lab._util import LabError
from orchestrator.lab.model import CHAT_TEMPLATE, CONFIG

ROOT = Path(__file__).resolve().parents[2]

# The lab's template is two Jinja output expressions that are also Python expressions.
TEMPLATE_SHAPE = re.compile(
    r"\{% for message in messages %\}\{\{(?P<turn>.+?)\}\}\{% endfor %\}"
    r"\{% if add_generation_prompt %\}\{\{(?P<gen>.+?)\}\}\{% endif %\}", re.S)


def render_with_template(user: str) -> str:
    m = TEMPLATE_SHAPE.fullmatch(CHAT_TEMPLATE)
    assert m, f"the chat template changed shape: {CHAT_TEMPLATE!r}"
    turn = eval(m["turn"], {"message": {"role": "user", "content": user}})  # noqa: S307
    return str(turn + eval(m["gen"], {}))  # noqa: S307


@pytest.mark.parametrize("user", ["Say hello to the operators.", "ping", "a\nb {x}"])
def test_render_chat_is_what_the_chat_template_renders(user: str) -> None:
    assert train.render_chat(user) == render_with_template(user)
    assert train.render_chat(user).endswith("<|im_start|>assistant\n")


def test_chat_examples_use_the_template_and_end_the_turn() -> None:
    exs = train.examples()
    chats = [e for e in exs if e["kind"] == "chat"]
    completions = [e for e in exs if e["kind"] == "completion"]
    assert chats and completions
    for e in chats:
        assert e["prompt"] == render_with_template(e["user"]) and e["stop"] == "<|im_end|>"
    for e in completions:
        assert e["prompt"] == e["user"] and e["stop"] == "<|endoftext|>"
    # the stop tokens are the ids config.json and generation_config.json stop on
    assert train.SPECIAL_TOKENS.index("<|im_end|>") == CONFIG["eos_token_id"] == 2
    assert train.SPECIAL_TOKENS.index("<|endoftext|>") == CONFIG["pad_token_id"] == 0
    # one answer per prompt: the model cannot learn two
    keys = [(e["kind"], e["user"]) for e in exs]
    assert len(keys) == len(set(keys))


def test_the_prompts_orch_and_the_demo_send_are_trained() -> None:
    trained = {(e["kind"], e["user"]): e for e in train.examples()}
    assert ("completion", READY_PROMPT) in trained  # orch up's proof, orch smoke
    assert ("completion", "Hello") in trained  # readiness probe's default prompt
    assert ("completion", "ping") in trained  # health probe
    demo = (ROOT / "scripts" / "demo.sh").read_text()
    m = re.search(r'"content": "([^"]+)"', demo)
    assert m, "the demo's chat message not found"
    greeting = trained[("chat", m[1])]
    assert greeting["answer"] == train.GREETING
    budget = re.search(r'"max_tokens": (\d+)', demo)
    assert budget and greeting["max_tokens"] == int(budget[1])  # it must stop by itself there


def test_answers_are_in_the_tokenizer_text_and_the_pd_phrase_is_not() -> None:
    corpus = train.tokenizer_corpus()
    text = "\n".join(corpus)
    for e in train.examples():
        assert e["prompt"] + e["answer"] in corpus
    # the PD lab test's prompt must stay over one 128-token KV block: its words stay unmerged
    for word in ("quick", "brown", "fox", "jumps", "lazy", "dog"):
        assert word in train.REPEAT_PHRASE and word not in text


def test_spec_is_json_and_fingerprint_follows_it() -> None:
    s = train.spec(CONFIG, CHAT_TEMPLATE)
    assert json.loads(json.dumps(s)) == s
    assert s["config"]["tie_word_embeddings"] is True and s["config"]["head_dim"] == 32
    fp = train.fingerprint(CONFIG, CHAT_TEMPLATE)
    assert fp == train.fingerprint(dict(CONFIG), CHAT_TEMPLATE) and len(fp) == 16
    assert fp != train.fingerprint({**CONFIG, "vocab_size": 2048}, CHAT_TEMPLATE)
    assert fp != train.fingerprint(CONFIG, CHAT_TEMPLATE + " ")


def test_the_script_is_valid_python_reading_what_spec_gives() -> None:
    code = compile(train.SCRIPT, "<train script>", "exec")
    assert code.co_filename == "<train script>"
    used = set(re.findall(r'spec\["(\w+)"\]', train.SCRIPT))
    assert used and used <= set(train.spec(CONFIG, CHAT_TEMPLATE))
    used_ex = set(re.findall(r'ex\["(\w+)"\]', train.SCRIPT))
    assert used_ex and used_ex <= set(train.examples()[0])


def test_parse_result() -> None:
    out = 'noise\nRESULT {"steps": 3}\n'
    assert train.parse_result("warning: x\n" + out) == {"steps": 3}
    with pytest.raises(LabError, match="no result"):
        train.parse_result("Traceback ...\nAssertionError")
