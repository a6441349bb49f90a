"""Staging's node scripts, run for real with sh, coreutils and rsync on this machine's
loopback (the lab tests run them across lab hosts), and its pure decisions."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from orchestrator.cluster import Deployment
from orchestrator.errors import StageError
from orchestrator.stage import scripts as S
from orchestrator.stage.manifest import Manifest, manifest_argv, parse_manifest
from orchestrator.stage.weights import choose_source, plan_copy

ROOT = Path(__file__).resolve().parents[2]
needs_rsync = pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is installed by "
                                 "scripts/install-lab-deps.sh (the full suite has it)")


def manifest(path: Path, cache: Path, *others: Path) -> Manifest | None:
    r = subprocess.run(manifest_argv(str(path), [str(o) for o in others], str(cache)),
                       capture_output=True, text=True, timeout=60)
    return parse_manifest("n", r.stdout)


def model(d: Path) -> Path:
    d.mkdir(parents=True)
    (d / "model.safetensors").write_bytes(os.urandom(2_000_000))
    (d / "config.json").write_text('{"a": 1}')
    (d / "sub dir").mkdir()
    (d / "sub dir" / "tokenizer.json").write_text("{}")
    return d


def test_manifest_hashes_once_and_sees_a_changed_byte(tmp_path: Path) -> None:
    d, c = model(tmp_path / "m"), tmp_path / "cache"
    first = manifest(d, c)
    assert first is not None and first.hashed == 3 and sorted(first.files) == [
        "config.json", "model.safetensors", "sub dir/tokenizer.json"]
    again = manifest(d, c)
    assert again is not None and again.hashed == 0 and again.digest == first.digest  # cached
    # the cache knows every file: printed from it, without the temporary files of the long way
    r = subprocess.run(manifest_argv(str(d), [], str(c)), capture_output=True, text=True,
                       timeout=60, env={**os.environ, "TMPDIR": str(tmp_path / "nonexistent")})
    fast = parse_manifest("n", r.stdout)
    assert fast is not None and fast.files == first.files and fast.hashed == 0
    with open(d / "model.safetensors", "r+b") as f:
        f.seek(1000)
        f.write(b"\x00" if f.read(1) != b"\x00" else b"\x01")
    changed = manifest(d, c)
    assert changed is not None and changed.hashed == 1 and changed.differs(first) == ["model.safetensors"]
    assert manifest(tmp_path / "nope", c) is None
    (d / "bad\tname").write_text("x")
    with pytest.raises(StageError, match="holds a tab"):
        manifest(d, c)


def test_a_hard_linked_copy_reuses_the_hashes(tmp_path: Path) -> None:
    d, c = model(tmp_path / "m"), tmp_path / "cache"
    ref = manifest(d, c)
    subprocess.run(["cp", "-al", str(d), str(tmp_path / "copy")], check=True)
    copy = manifest(tmp_path / "copy", c, d)
    assert copy is not None and ref is not None and copy.hashed == 0 and copy.digest == ref.digest


def test_plan_copy_and_source() -> None:
    ref = Manifest({"a": (1, "x"), "b": (2, "y"), "c": (3, "z")})
    have = Manifest({"a": (1, "x"), "b": (2, "other"), "old": (9, "q")})
    c = plan_copy("h1", have, ref)
    assert (c.fetch, c.keep, c.extra, c.bytes) == (["b", "c"], ["a"], ["old"], 5)
    assert plan_copy("h2", None, ref).fetch == ["a", "b", "c"]
    order = ["h0", "h1", "h2"]
    assert choose_source(order, {"h0": None, "h1": ref, "h2": ref}, None) == "h1"
    with pytest.raises(StageError, match="no node has the model"):
        choose_source(order, dict.fromkeys(order), None)
    with pytest.raises(StageError, match="does not exist there"):
        choose_source(order, {"h0": None, "h1": ref, "h2": None}, "h0")


def test_progress_and_space_parsers() -> None:
    out = "      32,768   1%   12.00MB/s    0:00:10\r   5,000,001  99%   1.16GB/s    0:00:00 (xfr#2)\r"
    assert S.parse_progress(out) == 5_000_001 and S.parse_progress("orch-pull: linked 3\n") is None
    assert S.parse_space("orch-space: 74213339136 /\n") == 74213339136
    assert S.staging_path("/srv/models/qwen") == "/srv/models/.qwen.orch-staging"
    with pytest.raises(ValueError):
        S.rsyncd_argv("/m", 1, "10.0.0.1", ["10.0.0.2; rm -rf /"])  # IPs only, validated


@needs_rsync
def test_daemon_pull_verify_swap_on_loopback(tmp_path: Path) -> None:
    src, c = model(tmp_path / "src" / "m"), tmp_path / "cache"
    final = tmp_path / "dst" / "m"
    final.mkdir(parents=True)
    shutil.copy2(src / "config.json", final / "config.json")  # right already: linked, not copied
    (final / "stale.bin").write_text("old")
    ref, have = manifest(src, c), manifest(final, c)
    assert ref is not None and have is not None
    todo = plan_copy("t", have, ref)
    sk = socket.socket()
    sk.bind(("127.0.0.1", 0))
    port = sk.getsockname()[1]
    sk.close()
    daemon = subprocess.Popen(S.rsyncd_argv(str(src), port, "127.0.0.1", ["127.0.0.1"]),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert daemon.stdin is not None and daemon.stdout is not None
        daemon.stdin.write(b"pw-0123\n")
        daemon.stdin.flush()
        assert b"listening" in daemon.stdout.readline()
        bad = subprocess.run(S.pull_argv("127.0.0.1", port, str(final)), timeout=60,
                             input=S.pull_input("wrong", [], todo.fetch), capture_output=True)
        assert bad.returncode != 0  # the password is checked
        r = subprocess.run(S.pull_argv("127.0.0.1", port, str(final)), timeout=60,
                           input=S.pull_input("pw-0123", todo.keep, todo.fetch), capture_output=True)
        assert r.returncode == 0, r.stdout.decode()[-500:]
        assert S.parse_progress(r.stdout.decode()) is not None
        stage = Path(S.staging_path(str(final)))
        assert (stage / "config.json").stat().st_ino == (final / "config.json").stat().st_ino
        assert not (stage / "stale.bin").exists() and (final / "stale.bin").exists()  # final untouched
        got = manifest(stage, c, final)
        assert got is not None and got.differs(ref) == []
        swap = subprocess.run(S.sh(S.SWAP, str(final), str(stage)), capture_output=True, text=True)
        assert "done" in swap.stdout and not stage.exists()
        done = manifest(final, c)
        assert done is not None and done.digest == ref.digest
    finally:
        assert daemon.stdin is not None and daemon.stdout is not None
        daemon.stdin.close()  # its input ends: it stops and removes its config
        rc = daemon.wait(20)
        rest = daemon.stdout.read()
        daemon.stdout.close()
    assert rc == 0 and b"stopped" in rest


def test_digest_in_spec_folds_the_manifest_into_the_hashes_only_when_asked(tmp_path: Path) -> None:
    inv = ROOT / "tests" / "data" / "inventories" / "seed001-a2-dp.yaml"
    text = inv.read_text().replace("path: vllm-ascend/Qwen3-235B-A22B", "path: /models/qwen3")
    plain, opted = tmp_path / "plain.yaml", tmp_path / "opted.yaml"
    plain.write_text(text)
    opted.write_text(text.replace("  served_name: qwen3", "  served_name: qwen3\n  digest_in_spec: true"))
    p = Deployment.load(plain)
    assert [n.spec_hash for n in p.plan(model_digest="aaaa").nodes] == [n.spec_hash for n in p.plan().nodes]
    o = Deployment.load(opted)
    a, b = o.plan(model_digest="aaaa").nodes, o.plan(model_digest="bbbb").nodes
    assert all(x.spec_hash != y.spec_hash for x, y in zip(a, b))
    assert [n.spec_hash for n in o.plan().nodes] == [n.spec_hash for n in p.plan().nodes]
