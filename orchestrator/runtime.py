"""Container runtime commands (docker / podman) as argv lists, and parsers of their output.

Pure: building argv and parsing JSON; the SSH side lives in remote.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .errors import RuntimeApiError
from .plan import LABEL_DEPLOYMENT, LABEL_NODE, LABEL_SPEC


@dataclass(frozen=True)
class Container:
    id: str
    name: str
    status: str  # running, exited, created, ...
    exit_code: int | None
    started_at: datetime | None
    restarts: int
    labels: dict[str, str]
    image: str

    @property
    def running(self) -> bool:
        return self.status == "running"

    @property
    def spec_hash(self) -> str | None:
        return self.labels.get(LABEL_SPEC)


@dataclass(frozen=True)
class Look:
    """What the preflight asks the runtime's API (runtime_api.RuntimeApi.look): each answer,
    or the error that came instead."""

    version: str | RuntimeApiError
    image_id: str | None | RuntimeApiError  # None: the node does not have the image
    containers: list[dict[str, Any]] | RuntimeApiError  # inspect objects


def ps_ids(runtime: str, deployment: str | None, node: str | None) -> list[str]:
    argv = [runtime, "ps", "-a", "-q", "--no-trunc"]
    if deployment is not None:
        argv += ["--filter", f"label={LABEL_DEPLOYMENT}={deployment}"]
    else:
        argv += ["--filter", f"label={LABEL_DEPLOYMENT}"]
    if node is not None:
        argv += ["--filter", f"label={LABEL_NODE}={node}"]
    return argv


def inspect(runtime: str, ids: list[str]) -> list[str]:
    return [runtime, "inspect", "--type", "container", *ids] if runtime == "docker" else [runtime, "inspect", *ids]


def logs(runtime: str, cid: str, tail: int = 40, since: str | None = None, timestamps: bool = False) -> list[str]:
    argv = [runtime, "logs"]
    if tail >= 0:
        argv += ["--tail", str(tail)]
    if since:
        argv += ["--since", since]
    if timestamps:
        argv.append("--timestamps")
    return argv + [cid]


def remove(runtime: str, ids: list[str]) -> list[str]:
    return [runtime, "rm", "-f", *ids]


def image_inspect(runtime: str, image: str) -> list[str]:
    return [runtime, "image", "inspect", "--format", "{{.Id}}", image]


def parse_time(v: object) -> datetime | None:
    """A runtime's timestamp (docker, podman, log --timestamps forms) as an aware UTC datetime."""
    if not isinstance(v, str) or not v or v.startswith("0001-"):
        return None
    s = v.strip()
    # docker: 2026-11-24T16:58:12.123456789Z ; podman: 2026-11-24T16:58:12.123456789+00:00
    # or "2026-11-24 16:58:12.123456789 +0000 UTC"
    s = s.replace(" UTC", "").replace("Z", "+00:00")
    if " " in s and "T" not in s:
        parts = s.split(" ")
        s = parts[0] + "T" + parts[1] + (parts[2][:3] + ":" + parts[2][3:] if len(parts) > 2 else "")
    date, _, rest = s.partition("T")
    clock, sign, tz = rest, "", ""
    for ch in "+-":
        if ch in rest:
            clock, tz = rest.split(ch, 1)
            sign = ch
            break
    if "." in clock:
        base, frac = clock.split(".", 1)
        clock = f"{base}.{frac[:6]}"
    try:
        return datetime.fromisoformat(f"{date}T{clock}{sign}{tz}").astimezone(UTC)
    except ValueError:
        return None


def parse_inspect(text: str) -> list[Container]:
    """`docker inspect` / `podman inspect` output."""
    return parse_objects(json.loads(text or "[]"))


def parse_objects(data: list[dict[str, Any]]) -> list[Container]:
    """Inspect objects, from the CLI or from the runtime's API (the same shape)."""
    out = []
    for c in data:
        state = c.get("State") or {}
        cfg = c.get("Config") or {}
        status = state.get("Status") or ("running" if state.get("Running") else "unknown")
        out.append(
            Container(
                id=c.get("Id", ""),
                name=(c.get("Name") or "").lstrip("/"),
                status=status.lower(),
                exit_code=state.get("ExitCode"),
                started_at=parse_time(state.get("StartedAt")),
                restarts=int(c.get("RestartCount") or 0),
                labels=dict(cfg.get("Labels") or {}),
                image=cfg.get("Image") or c.get("ImageName") or "",
            )
        )
    return out
