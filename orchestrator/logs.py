"""`orch logs`: every rank's log, prefixed by node, merged in time (or followed live)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from . import runtime
from .cluster import Session
from .remote import Host


def split_timestamp(line: str) -> tuple[str, str]:
    """'2026-11-24T16:58:12.123456789Z text' -> (sortable stamp, text)."""
    stamp, _, text = line.partition(" ")
    if len(stamp) >= 19 and stamp[4] == "-" and stamp[10] == "T":
        return stamp, text
    return "", line


async def collect(s: Session, nodes: list[str] | None, tail: int, since: str | None) -> list[tuple[str, str, str]]:
    """(stamp, node, text) for every line of every container of the deployment, time-sorted."""

    async def one(h: Host) -> list[tuple[str, str, str]]:
        out = []
        for c in await s.containers(h):
            r = await h.run(runtime.logs(s.runtime, c.id, tail, since, timestamps=True), merge=True,
                            check=False, timeout=60)
            for line in r.stdout.splitlines():
                stamp, text = split_timestamp(line)
                out.append((stamp, h.name, text))
        return out

    lines: list[tuple[str, str, str]] = []
    for name, r in (await s.each(one, nodes)).items():
        if isinstance(r, BaseException):
            lines.append(("", name, f"[orch] cannot read logs: {r}"))
        else:
            lines.extend(r)
    lines.sort(key=lambda t: t[0])
    return lines


async def follow(s: Session, nodes: list[str] | None, tail: int, emit: Callable[[str, str], None]) -> None:
    async def one(h: Host) -> None:
        cs = [c for c in await s.containers(h) if c.running] or await s.containers(h)
        if not cs:
            emit(h.name, "[orch] no container of this deployment")
            return
        argv = runtime.logs(s.runtime, cs[0].id, tail) + []
        argv.insert(2, "--follow")
        async for line in h.stream(argv):
            emit(h.name, line)

    await asyncio.gather(*(one(h) for n, h in s.hosts.items() if nodes is None or n in nodes))
