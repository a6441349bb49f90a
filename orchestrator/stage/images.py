"""Copying the deployment's image to the nodes that lack it: `<runtime> save` on a node that
has it, streamed through orch's SSH connections into `<runtime> load` on every node that
lacks it at once (one read of the source, written to every target), so no registry is
needed.  A load that is cut off tags nothing: the next `orch stage` starts it again."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..cluster import Session
from ..errors import StageError
from ..log import log
from ..remote import Host, Process
from ..runtime import image_inspect

Progress = Callable[[str, int, int], None]
CHUNK = 1 << 20


@dataclass
class ImageResult:
    image: str
    source: str | None = None
    copied: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    bytes: int = 0
    seconds: float = 0.0


async def image_ids(s: Session, image: str) -> dict[str, str | None]:
    """Every node's image ID for the tag (None: the node lacks it)."""

    async def one(h: Host) -> str | None:
        r = await h.run(image_inspect(s.runtime, image), check=False, timeout=60)
        return r.stdout.strip() or None if r.ok else None

    out: dict[str, str | None] = {}
    for node, r in (await s.each(one)).items():
        if isinstance(r, BaseException):
            raise StageError(f"{node}: cannot look for the image: {r}")
        out[node] = r
    return out


async def image_size(h: Host, runtime: str, image: str) -> int:
    r = await h.run([runtime, "image", "inspect", "--format", "{{.Size}}", image], check=False, timeout=60)
    try:
        return int(r.stdout.strip())
    except ValueError:
        return 0


async def stage_image(s: Session, *, source: str | None,
                      progress: Progress = lambda *_: None) -> ImageResult:
    t0 = time.monotonic()
    image = s.dep.inv.image
    ids = await image_ids(s, image)
    res = ImageResult(image, present=[n for n, i in ids.items() if i])
    missing = [n for n, i in ids.items() if not i]
    if not missing:
        return res
    order = [n.name for n in s.dep.inv.nodes]
    have = [n for n in order if ids.get(n)]
    if source is not None and not ids.get(source):
        raise StageError(f"--from {source}: the image {image} is not there")
    src = source or (have[0] if have else None)
    if src is None:
        raise StageError(f"no node has the image {image}: `{s.runtime} pull` or `{s.runtime} load` "
                         "it on one node, then `orch stage` copies it to the others")
    res.source = src
    rt = s.runtime
    total = await image_size(s.hosts[src], rt, image)
    log.info("staging the image", image=image, source=src, to=missing, gb=round(total / 1e9, 2))
    saver = await s.hosts[src].start([rt, "save", image])
    loaders: dict[str, Process] = {n: await s.hosts[n].start([rt, "load"]) for n in missing}
    sent = 0
    try:
        while chunk := await saver.read(CHUNK):
            await asyncio.gather(*(p.write(chunk) for p in loaders.values()))
            sent += len(chunk)
            for n in missing:
                progress(n, min(sent, total or sent), total or sent)
        rc = await saver.wait(timeout=60)
        if rc != 0:
            raise StageError(f"{src}: `{rt} save {image}` exited {rc}")
        for p in loaders.values():
            p.close_input()
        outs = {}
        for n, p in loaders.items():
            out = b""
            while chunk := await p.read():
                out += chunk
            outs[n] = (await p.wait(timeout=600), out.decode(errors="replace"))
    finally:
        saver.close()
        for p in loaders.values():
            p.close()
    bad = [f"{n}: `{rt} load` exited {rc}: {out.strip()[-200:]}" for n, (rc, out) in outs.items() if rc != 0]
    if bad:
        raise StageError("; ".join(bad))
    after = await image_ids(s, image)
    wrong = [n for n in missing if after.get(n) != ids[src]]
    if wrong:
        raise StageError(f"after the load the image ID on {', '.join(wrong)} is not {src}'s "
                         f"({ids[src]})")
    res.copied, res.bytes, res.seconds = missing, sent, time.monotonic() - t0
    for n in missing:
        progress(n, sent, sent)
    return res
