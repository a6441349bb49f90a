"""The preflight on the lab: real SSH, real namespaces, real podman/docker, fake NPU tools.

Uses the lab only when it is already up (never brings it up or down, never starts vLLM).
Every fault is injected here and undone in a `finally`/fixture: a listener process this
test started (killed by its PID), an iptables rule in h0's namespace, a fake-NPU fault.
The variant inventories use their own ports (18000/18345), so a deployment other tests run
on the lab (8000/13345) does not collide; it may show as stale.* warnings.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from orchestrator.cluster import Deployment, open_session
from orchestrator.preflight import Report, clean_stale, run_checks

API, RPC = 18000, 18345
NOISE = {"stale.containers", "stale.processes", "stale.shm"}  # other tests' deployments


# `lab`: the session fixture of tests/lab/conftest.py (a 3-host lab, podman then docker).


def write(lab, tmp: Path, name: str, profile: str = "cpu", tensor: int = 1,
          edit=None) -> Path:  # type: ignore[no-untyped-def]
    from orchestrator.lab import write_inventory

    (tmp / "playbooks").mkdir(exist_ok=True)
    (tmp / "playbooks" / f"{name}.yaml").write_text(yaml.safe_dump({
        "name": name, "profile": profile, "vllm_version": "0.32.0", "topology": "dp",
        "parallel": {"tensor": tensor, "data": 3, "data_local": 1},
        "ports": {"api": API, "rpc": RPC}, "container": {"net_host": True, "shm_size": "1g"}}))
    inv = write_inventory(tmp / f"{name}.yaml", lab.hosts, lab.runtime, nodes=3,
                          deployment=name, playbook=name)
    if edit:
        doc = yaml.safe_load(inv.read_text())
        edit(doc)
        inv.write_text(yaml.safe_dump(doc))
    return inv


def check(inv: Path, skip: frozenset[str] = frozenset()) -> Report:
    async def go() -> Report:
        dep = Deployment.load(inv)
        s = await open_session(dep)
        try:
            return await run_checks(s, dep.plan(), skip)
        finally:
            s.close()

    return asyncio.run(go())


def fails(rep: Report) -> set[tuple[str, str]]:
    return {(r.node, r.check) for r in rep.results if r.status == "fail"}


def warns(rep: Report) -> set[str]:
    return {r.check for r in rep.results if r.status == "warn"}


def test_healthy_lab_passes_and_is_fast(lab, tmp_path):
    inv = write(lab, tmp_path, "pf-cpu")
    times = []
    for _ in range(5):
        rep = check(inv)
        assert fails(rep) == set(), [r for r in rep.results if r.status == "fail"]
        assert warns(rep) <= NOISE, [r for r in rep.results if r.status == "warn"]
        times.append(rep.seconds)
    med = statistics.median(times)
    print(f"\nrun_checks on the 3-host lab: median {med:.2f}s of {[round(t, 2) for t in times]}",
          file=sys.stderr)
    assert med < 10, times
    assert {r.check for r in rep.results if r.node == "h0"} >= {
        "net.ping", "ports.free", "ports.reachable", "image.same", "model.same"}


def test_nic_missing_on_h1(lab, tmp_path):
    def bad_nic(doc):  # type: ignore[no-untyped-def]
        doc["nodes"][1]["nic"] = "bogus0"

    rep = check(write(lab, tmp_path, "pf-nic", edit=bad_nic))
    assert fails(rep) == {("h1", "net.nic")}
    assert "bogus0" in rep.get("h1", "net.nic").reason  # type: ignore[union-attr]


def test_rpc_port_taken_on_head(lab, tmp_path):
    # a listener started on h0 (its PID as h0 sees it: podman hosts have their own PID
    # namespace); it ends when its stdin closes
    code = ("import os,socket,sys; s=socket.socket(); "
            "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
            f"s.bind(('0.0.0.0',{RPC})); s.listen(1); "
            "print('up', os.getpid(), flush=True); sys.stdin.read()")
    p = subprocess.Popen(lab_ns_argv(lab, "h0", [sys.executable, "-c", code]),
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None
        up, pid = p.stdout.readline().split()
        assert up == "up"
        rep = check(write(lab, tmp_path, "pf-port"))
        assert fails(rep) == {("h0", "ports.free")}
        assert str(RPC) in rep.get("h0", "ports.free").reason  # type: ignore[union-attr]
        assert f"pid {pid}" in rep.get("h0", "ports.free").reason  # type: ignore[union-attr]
    finally:
        p.communicate(input="", timeout=30)


def test_rpc_port_blocked_on_head(lab, tmp_path):
    h0 = lab.host("h0")
    rule = ["INPUT", "-p", "tcp", "--dport", str(RPC), "-j", "DROP"]
    lab.run_on(h0, ["iptables", "-I", *rule], check=True)
    try:
        rep = check(write(lab, tmp_path, "pf-fw"))
        assert fails(rep) == {("h0", "ports.reachable")}
        r = rep.get("h0", "ports.reachable")
        assert str(RPC) in r.reason and "timed out" in r.reason  # type: ignore[union-attr]
    finally:
        lab.run_on(h0, ["iptables", "-D", *rule], check=True)


def test_model_missing(lab, tmp_path):
    def gone(doc):  # type: ignore[no-untyped-def]
        doc["model"]["path"] = "/nonexistent/orch-preflight-model"

    rep = check(write(lab, tmp_path, "pf-model", edit=gone))
    assert fails(rep) == {(n, "model.present") for n in ("h0", "h1", "h2")}


def test_image_missing(lab, tmp_path):
    def gone(doc):  # type: ignore[no-untyped-def]
        doc["image"] = "localhost/orch-lab/no-such-image:0"

    rep = check(write(lab, tmp_path, "pf-image", edit=gone))
    assert fails(rep) == {(n, "image.present") for n in ("h0", "h1", "h2")}


# ------------------------------------------------------------------------ Ascend


@pytest.fixture
def npu_lab(lab) -> Iterator[object]:  # type: ignore[no-untyped-def]
    """The lab with healthy fake NPUs on h0-h2; afterwards h1 gets back what it had.
    Always a freshly loaded Lab(): set_fault saves lab.json, so a stale object must not."""
    from orchestrator.lab import Lab

    before = {h.name: h.fault for h in Lab().hosts[:3]}
    if any(before.values()):
        pytest.skip(f"someone else has NPU faults set on the lab: "
                    f"{ {k: v for k, v in before.items() if v} }")
    try:
        yield lab
    finally:
        Lab().set_fault("h1", before["h1"])


def set_fault(host: str, fault: dict[str, int]) -> None:
    from orchestrator.lab import Lab

    Lab().set_fault(host, fault)


def a2(lab, tmp: Path, name: str) -> Path:  # type: ignore[no-untyped-def]
    return write(lab, tmp, name, profile="ascend-a2", tensor=8)


def test_ascend_healthy(npu_lab, tmp_path):
    rep = check(a2(npu_lab, tmp_path, "pf-a2"))
    assert fails(rep) == set()
    assert warns(rep) <= NOISE | {"driver.same"}  # the fakes have no driver version.info
    assert all(rep.get(n, "hccn.ping").status == "pass" for n in ("h0", "h1", "h2"))  # type: ignore[union-attr]


@pytest.mark.parametrize("fault,check_name", [({"link_down": 3}, "hccn.link"),
                                              ({"tls": 1}, "hccn.tls")])
def test_ascend_fault_on_h1(npu_lab, tmp_path, fault, check_name):
    set_fault("h1", fault)
    rep = check(a2(npu_lab, tmp_path, "pf-a2f"))
    assert fails(rep) == {("h1", check_name)}, [r for r in rep.results if r.status == "fail"]


# ------------------------------------------------------------------ clean_stale


def test_clean_stale_removes_only_old_unheld_segments(lab, tmp_path):
    # h0's /dev/shm (podman hosts have their own, as a real host does), seen from the machine
    # through its sshd's root; the segment is held by a process on h0, which is what h0's
    # preflight can see (on podman hosts only h0's own processes are)
    h0 = lab.host("h0")
    shm = Path(f"/proc/{h0.sshd_pid}/root/dev/shm")
    theirs = [p for p in shm.glob("psm_*")] + [p for p in shm.glob("vllm-*")]
    if theirs:
        pytest.skip(f"h0's /dev/shm already has segments this test did not make: {theirs[:3]}")
    old, held, young = (shm / f"psm_orchtest_{os.getpid()}_{k}" for k in ("old", "held", "young"))
    for p in (old, held, young):
        p.write_bytes(b"\0" * 4096)
    past = time.time() - 3600
    os.utime(old, (past, past))
    os.utime(held, (past, past))
    inv = write(lab, tmp_path, "pf-clean")
    holder = subprocess.Popen(  # holds the segment open until its stdin closes
        lab_ns_argv(lab, "h0", ["sh", "-c", 'exec 3<"$1"; echo holding; read -r _',
                                "sh", f"/dev/shm/{held.name}"]),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        rep = check(inv)
        r = rep.get("h0", "stale.shm")
        assert r.status == "warn" and old.name in r.reason and held.name not in r.reason  # type: ignore[union-attr]

        async def go() -> dict[str, list[str]]:
            dep = Deployment.load(inv)
            s = await open_session(dep)
            try:
                return await clean_stale(s, dep.plan())
            finally:
                s.close()

        removed = asyncio.run(go())
        assert sorted(p for v in removed.values() for p in v) == [f"/dev/shm/{old.name}"]
        assert not old.exists() and held.exists() and young.exists()
    finally:
        holder.communicate(input="", timeout=30)
        for p in (old, held, young):
            p.unlink(missing_ok=True)


def lab_ns_argv(lab, host: str, argv: list[str]) -> list[str]:  # type: ignore[no-untyped-def]
    from orchestrator.lab.hosts import ns_argv

    return ns_argv(lab.host(host), argv)
