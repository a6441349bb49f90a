"""`orch stage` on the lab, whose hosts have their own /srv/orch-lab and (podman) their own
image storage: the model on h0 only becomes identical on h0..h2 and serves; one byte changed
on h1 is found by preflight (naming the file on h1) and repaired by copying only that file;
a copy killed halfway leaves the final path untouched and the next run completes; an image
missing on h1 is streamed from h0 and `orch up` serves.  podman only (dockerd resolves bind
mounts in the machine's namespace, not the hosts')."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import yaml

from tests.lab.conftest import LAUNCH_TIMEOUT, containers, wait_for

MODEL = "/srv/orch-lab/models/tiny"


@pytest.fixture
def plab(lab):  # type: ignore[no-untyped-def]
    if lab.runtime != "podman":
        pytest.skip("staging is tested on the podman lab (per-host storage and bind mounts)")
    yield lab
    for h in lab.hosts:  # each test leaves the hosts' private model dirs empty again
        lab.run_on(h, ["rm", "-rf", "/srv/orch-lab/models"])


def inventory(lab, tmp_path: Path, name: str, nodes: int, **kw) -> Path:  # type: ignore[no-untyped-def]
    from orchestrator.lab import write_inventory

    p = write_inventory(tmp_path / f"{name}.yaml", lab.hosts, lab.runtime, nodes=nodes,
                        deployment=name, model_path=MODEL, **kw)
    if nodes != 2:  # the DP playbook's size is 2: one rank per node (planned, not launched)
        doc = yaml.safe_load(p.read_text())
        doc["overrides"] = {"data_parallel": nodes}
        p.write_text(yaml.safe_dump(doc))
    return p


def put_model_on(lab, host: str, extra_mb: int = 8) -> None:  # type: ignore[no-untyped-def]
    lab.run_on(host, ["mkdir", "-p", "/srv/orch-lab/models"], check=True)
    lab.run_on(host, ["cp", "-a", str(lab.model_path), MODEL], check=True)
    lab.run_on(host, ["sh", "-c", f"head -c {extra_mb}M /dev/urandom > {MODEL}/extra.dat"], check=True)


def manifest_of(lab, host: str, path: str = MODEL) -> str | None:  # type: ignore[no-untyped-def]
    from orchestrator.stage.manifest import manifest_argv, parse_manifest

    r = lab.run_on(host, manifest_argv(path))  # exits 3 where the directory is missing
    m = parse_manifest(host, r.stdout)
    return None if m is None else m.digest


def stage(orch, inv: Path, *args: str) -> dict:  # type: ignore[no-untyped-def]
    r = orch("stage", str(inv), "--json", *args, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


def check(orch, inv: Path) -> dict:  # type: ignore[no-untyped-def]
    r = orch("check", str(inv), "--json", "--skip-checks", "stale", timeout=300)
    assert r.returncode in (0, 1) and r.stdout, r.stderr[-3000:]
    return json.loads(r.stdout)


def test_model_on_h0_only_is_staged_checked_repaired_and_served(plab, orch, tmp_path):
    lab = plab
    put_model_on(lab, "h0")
    assert manifest_of(lab, "h1") is None and manifest_of(lab, "h2") is None  # h0's own dir
    inv3 = inventory(lab, tmp_path, "stage", 3)
    rep = check(orch, inv3)
    assert rep["nodes"]["h1"]["model.present"]["status"] == "fail"

    got = stage(orch, inv3, "--no-image")
    w = got["weights"]
    assert w["source"] == "h0" and sorted(c["node"] for c in w["copies"]) == ["h1", "h2"]
    ref = manifest_of(lab, "h0")
    assert ref == w["manifest"] and manifest_of(lab, "h1") == ref and manifest_of(lab, "h2") == ref
    rep = check(orch, inv3)
    assert all(rep["nodes"][h]["model.identical"]["status"] == "pass" for h in ("h0", "h1", "h2")), rep

    # one byte changed on h1: preflight names the file on h1; stage copies only that file
    lab.run_on("h1", ["sh", "-c", f"printf Z | dd of={MODEL}/extra.dat bs=1 seek=4096 conv=notrunc "
                      "status=none"], check=True)
    rep = check(orch, inv3)
    bad = rep["nodes"]["h1"]["model.identical"]
    assert bad["status"] == "fail" and "extra.dat" in bad["reason"] and "on h1" in bad["reason"], bad
    assert rep["nodes"]["h2"]["model.identical"]["status"] == "pass"
    got = stage(orch, inv3, "--no-image")
    assert [(c["node"], c["copied"]) for c in got["weights"]["copies"]] == [("h1", ["extra.dat"])]
    assert got["weights"]["identical"] == ["h2"] and manifest_of(lab, "h1") == ref

    # and orch up serves from the staged directory (2-node DP on h0, h1)
    inv2 = inventory(lab, tmp_path, "stage", 2)
    try:
        r = orch("up", str(inv2), "--json", "--timeout", str(LAUNCH_TIMEOUT - 20))
        assert r.returncode == 0, r.stderr[-3000:]
        assert json.loads(r.stdout)["answer"].strip() == "Paris."
    finally:
        r = orch("down", str(inv2), timeout=120)
    assert r.returncode == 0 and all(not cs for cs in containers(lab).values())


def test_a_copy_killed_halfway_leaves_the_final_path_and_resumes(plab, orch, tmp_path):
    lab = plab
    put_model_on(lab, "h0", extra_mb=256)
    inv = inventory(lab, tmp_path, "halfway", 2)
    staging = "/srv/orch-lab/models/.tiny.orch-staging"

    def partial_bytes() -> int:
        r = lab.run_on("h1", ["sh", "-c", f"du -sb {staging} 2>/dev/null | cut -f1"])
        return int(r.stdout.strip() or 0)

    p = orch.popen("stage", str(inv), "--no-image", "--bwlimit", "16")
    try:
        wait_for(lambda: partial_bytes() > 32 << 20, 60, what="the copy to be under way")
        p.send_signal(signal.SIGKILL)  # orch dies: its SSH channels close under the copy
        p.communicate(timeout=60)
    finally:
        if p.returncode is None:
            p.kill()
            p.communicate(timeout=60)
    time.sleep(2)
    assert manifest_of(lab, "h1") is None  # the final path: untouched (it did not exist)
    assert 0 < partial_bytes() < 256 << 20  # a partial staging copy is left for the next run
    t0 = time.monotonic()
    got = stage(orch, inv, "--no-image")
    print(f"resumed copy: {time.monotonic() - t0:.1f}s, {got['weights']['copies']}")
    assert manifest_of(lab, "h1") == manifest_of(lab, "h0")
    assert lab.run_on("h1", ["test", "-e", staging]).returncode != 0  # swapped in, gone


def test_an_image_missing_on_h1_is_streamed_from_h0_and_serves(plab, orch, tmp_path):
    lab = plab
    put_model_on(lab, "h0")
    inv = inventory(lab, tmp_path, "img", 2)
    lab.hide_image("h1")
    try:
        assert lab.run_on("h1", [lab.runtime, "image", "inspect", lab.image]).returncode != 0
        r = orch("up", str(inv), "--timeout", "120")
        assert r.returncode == 1 and "h1: image.present" in r.stderr, r.stderr[-2000:]
        r = orch("up", str(inv), "--stage", "--json", "--timeout", str(LAUNCH_TIMEOUT - 20))
        assert r.returncode == 0, r.stderr[-3000:]
        assert lab.run_on("h1", [lab.runtime, "image", "inspect", lab.image]).returncode == 0
        assert json.loads(r.stdout)["answer"].strip() == "Paris."
        r = orch("down", str(inv), timeout=120)
        assert r.returncode == 0
    finally:
        orch("down", str(inv), timeout=120)
        lab.restore_image("h1")
    assert all(not cs for cs in containers(lab).values())
    assert yaml.safe_load(inv.read_text())["image"] == lab.image
