"""Copying the model directory to the nodes that lack it or differ, node-to-node.

    1. manifests everywhere (cached per node); the source: --from NODE, else the first node,
       in inventory order, that has the directory
    2. per target: the files to fetch (missing or different), their bytes; the free space of
       the target's file system checked for all targets before anything is copied
    3. on the source a temporary rsync daemon (read only, a random password, only the
       targets' cluster IPs allowed); every target pulls at once over the cluster network
       into a staging copy beside the final path (the files it already has right are hard
       links), resumable after an interruption (rsync --partial-dir)
    4. per target: the staging copy's manifest must equal the source's (extra files are
       pruned); then it is swapped in (two renames: the final path is never a partial copy)

Why rsync: on every Linux node, resumable (--partial-dir), transfers only the files asked
for, streams at line rate without its delta algorithm for new files, and its daemon mode
needs no SSH between the nodes (orch is the only one that logs in anywhere).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..cluster import Session
from ..errors import OrchError, StageError
from ..log import log
from ..remote import Host, Process
from . import scripts as S
from .manifest import Manifest

Progress = Callable[[str, int, int], None]  # (node, bytes done, bytes total)


@dataclass
class NodeCopy:
    node: str
    fetch: list[str]  # files to transfer
    keep: list[str]  # files the final directory already has right (hard-linked)
    extra: list[str]  # files the final directory has that the source does not
    bytes: int
    seconds: float = 0.0
    transferred: int = 0


@dataclass
class WeightsResult:
    source: str
    reference: Manifest
    copies: list[NodeCopy] = field(default_factory=list)
    identical: list[str] = field(default_factory=list)  # nodes that needed nothing
    seconds: float = 0.0


def choose_source(order: list[str], manifests: dict[str, Manifest | None], wanted: str | None) -> str:
    if wanted is not None:
        if wanted not in manifests:
            raise StageError(f"--from {wanted}: not a node of this deployment ({', '.join(order)})")
        if manifests[wanted] is None:
            raise StageError(f"--from {wanted}: the model directory does not exist there")
        return wanted
    for n in order:
        if manifests.get(n) is not None:
            return n
    raise StageError("no node has the model directory: copy it to one node first "
                     "(e.g. `rsync -a DIR/ NODE:DIR/`), then `orch stage` copies it to the others")


def plan_copy(node: str, have: Manifest | None, ref: Manifest) -> NodeCopy:
    if have is None:
        fetch, keep, extra = sorted(ref.files), [], []
    else:
        fetch = have.to_fetch(ref)
        keep = sorted(p for p in ref.files if p in have.files and p not in fetch)
        extra = sorted(p for p in have.files if p not in ref.files)
    return NodeCopy(node, fetch, keep, extra, sum(ref.files[p][0] for p in fetch))


async def _run_checked(h: Host, argv: list[str], what: str, timeout: float = 120) -> str:
    r = await h.run(argv, check=False, timeout=timeout, merge=True)
    if not r.ok:
        raise StageError(f"{h.name}: {what} failed (exit {r.rc}): {r.stdout.strip()[-300:]}")
    return r.stdout


async def check_space(s: Session, final: str, copies: list[NodeCopy]) -> None:
    async def one(h: Host) -> int | None:
        return S.parse_space(await _run_checked(h, S.sh(S.SPACE, final), "df"))

    need = {c.node: c.bytes for c in copies}
    got = await s.each(one, list(need))
    short = []
    for node, free in got.items():
        if isinstance(free, BaseException):
            raise StageError(f"{node}: cannot tell the free space for {final}: {free}")
        margin = max(need[node] // 20, 1 << 30)  # 5 %, at least 1 GiB, for the file system's own use
        if free is not None and free < need[node] + margin:
            short.append(f"{node} has {free / 1e9:.1f} GB free, the copy needs {need[node] / 1e9:.1f} GB "
                         f"(+{margin / 1e9:.1f} GB margin)")
    if short:
        raise StageError("not enough disk space, nothing copied: " + "; ".join(short))


async def pull(s: Session, c: NodeCopy, src_ip: str, port: int, password: str, final: str,
               bwlimit_kb: int, progress: Progress) -> None:
    """One target's pull into its staging copy, with progress."""
    h = s.hosts[c.node]
    t0 = time.monotonic()
    proc: Process = await h.start(S.pull_argv(src_ip, port, final, bwlimit_kb))
    try:
        await proc.write(S.pull_input(password, c.keep, c.fetch))
        proc.close_input()
        tail = ""
        progress(c.node, 0, c.bytes)
        while chunk := await proc.read():
            text = chunk.decode(errors="replace")
            tail = (tail + text)[-2000:]
            done = S.parse_progress(text)
            if done is not None:
                c.transferred = done
                progress(c.node, min(done, c.bytes), c.bytes)
        rc = await proc.wait(timeout=60)
    finally:
        proc.close()
    c.seconds = time.monotonic() - t0
    if rc != 0:
        lines = [ln for ln in tail.replace("\r", "\n").splitlines() if ln.strip()]
        raise StageError(f"{c.node}: the copy failed (exit {rc}); the final path is untouched, "
                         f"`orch stage` again resumes it: {' | '.join(lines[-4:])}")
    progress(c.node, c.bytes, c.bytes)


async def verify_and_swap(s: Session, c: NodeCopy, ref: Manifest, final: str) -> None:
    h = s.hosts[c.node]
    stage = S.staging_path(final)
    got = (await s.manifests([c.node], stage))[c.node]
    if isinstance(got, BaseException):
        raise got
    if got is None:
        raise StageError(f"{c.node}: the staging copy {stage} is gone")
    extra = [p for p in got.files if p not in ref.files]
    if extra:
        r = await h.run(S.sh(S.PRUNE, stage), input="\n".join(extra) + "\n", check=False, timeout=300)
        if not r.ok:
            raise StageError(f"{c.node}: cannot remove {len(extra)} extra file(s) from {stage}")
        got = Manifest({p: v for p, v in got.files.items() if p in ref.files})
    bad = got.differs(ref)
    if bad:
        raise StageError(f"{c.node}: after the copy {len(bad)} file(s) still differ from the "
                         f"source ({', '.join(bad[:5])}); the final path is untouched")
    await _run_checked(h, S.sh(S.SWAP, final, stage), "moving the verified copy into place")
    log.info("model in place", node=c.node, files=len(ref.files), copied=len(c.fetch),
             gb=round(c.bytes / 1e9, 2), seconds=round(c.seconds, 1))


async def stage_weights(s: Session, *, source: str | None, port: int = S.RSYNC_PORT,
                        bwlimit_kb: int = 0, progress: Progress = lambda *_: None) -> WeightsResult:
    t0 = time.monotonic()
    final = s.dep.inv.model.path
    if not final.startswith("/"):
        raise StageError(f"model.path {final!r} is a hub id, not a directory: nothing to stage")
    order = [n.name for n in s.dep.inv.nodes if n.name in s.hosts]
    found = await s.manifests(order)
    manifests: dict[str, Manifest | None] = {}
    for node, m in found.items():
        if isinstance(m, BaseException):
            raise StageError(f"{node}: cannot read the model directory's manifest: {m}")
        manifests[node] = m
    src = choose_source(order, manifests, source)
    ref = manifests[src]
    assert ref is not None
    res = WeightsResult(src, ref)
    copies = []
    for node in order:
        if node == src:
            continue
        c = plan_copy(node, manifests[node], ref)
        if not c.fetch and not c.extra:
            res.identical.append(node)
        else:
            copies.append(c)
    log.info("staging the model", source=src, files=len(ref.files), gb=round(ref.bytes / 1e9, 2),
             identical=res.identical, to_copy={c.node: len(c.fetch) for c in copies})
    if not copies:
        res.seconds = time.monotonic() - t0
        return res
    await check_space(s, final, copies)
    nets = await s.nets()
    password = secrets.token_hex(16)
    daemon = await s.hosts[src].start(S.rsyncd_argv(final, port, nets[src].ip, [nets[c.node].ip for c in copies]))
    try:
        await daemon.write((password + "\n").encode())
        first = (await asyncio.wait_for(daemon.read(4096), 30)).decode(errors="replace")
        if "listening" not in first:
            raise StageError(f"{src}: the rsync daemon did not start: {first.strip()[-300:]}")
        results = await asyncio.gather(*(pull(s, c, nets[src].ip, port, password, final, bwlimit_kb,
                                              progress) for c in copies), return_exceptions=True)
    finally:
        daemon.close_input()  # its input ends: it stops and removes its config and password
        with contextlib.suppress(OrchError):
            await daemon.wait(timeout=30)
        daemon.close()
    failed = [r for r in results if isinstance(r, BaseException)]
    for r in failed:
        if not isinstance(r, Exception):
            raise r
    done = [c for c, r in zip(copies, results) if not isinstance(r, BaseException)]
    swapped = await asyncio.gather(*(verify_and_swap(s, c, ref, final) for c in done),
                                   return_exceptions=True)
    failed += [r for r in swapped if isinstance(r, BaseException)]
    res.copies = copies
    res.seconds = time.monotonic() - t0
    if failed:
        raise StageError("\n".join(str(e) for e in failed))
    return res
