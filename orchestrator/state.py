"""orch's state directory: the last inventory, saved log tails, run history, locks.

`$ORCH_STATE_DIR`, else `$XDG_STATE_HOME/orch`, else `~/.local/state/orch`.  Created 0700,
files 0600: nothing secret is written here, but logs can reveal topology.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path

from .errors import LockedError
from .secrets import mask

_made: set[Path] = set()  # state directories this process made sure of (one mkdir each)


def state_dir() -> Path:
    env = os.environ.get("ORCH_STATE_DIR")
    if env:
        d = Path(env)
    else:
        base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
        d = Path(base) / "orch"
    if d not in _made or not d.is_dir():
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        _made.add(d)
    return d


def write_private(path: Path, text: str) -> None:
    private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def remember_inventory(path: Path) -> None:
    write_private(state_dir() / "last-inventory", str(path.resolve()) + "\n")


def last_inventory() -> Path | None:
    p = state_dir() / "last-inventory"
    if not p.is_file():
        return None
    return Path(p.read_text().strip())


def deployment_dir(deployment: str) -> Path:
    d = state_dir() / "deployments" / deployment
    private_dir(d)
    return d


def private_dir(d: Path) -> None:
    """mkdir -p with 0700 on every directory created (mkdir's mode does not reach parents)."""
    missing = []
    p = d
    while not p.exists():
        missing.append(p)
        p = p.parent
    for m in reversed(missing):
        m.mkdir(mode=0o700, exist_ok=True)
        os.chmod(m, 0o700)


def save_log_tails(deployment: str, tails: dict[str, str], kind: str = "failed") -> Path:
    """Save each node's log tail (masked, 0600) under deployments/NAME/KIND/TIME/NODE.log."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    d = deployment_dir(deployment) / kind / stamp
    for node, text in tails.items():
        write_private(d / f"{node}.log", mask(text))
    return d


def append_history(deployment: str, record: dict[str, object]) -> None:
    p = deployment_dir(deployment) / "history.jsonl"
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a") as f:
        f.write(mask(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **record})) + "\n")


class DeploymentLock:
    """An exclusive, non-blocking lock per deployment (flock on a file in the state dir), so two
    overlapping runs (cron!) never act at once.  Released when the process exits, even killed."""

    def __init__(self, deployment: str) -> None:
        self.deployment = deployment
        self.path = deployment_dir(deployment) / "lock"
        self._fd: int | None = None

    def __enter__(self) -> DeploymentLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise LockedError(
                f"another orch run holds the lock of deployment {self.deployment!r} ({holder}); "
                f"lock file {self.path}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} since {time.strftime('%H:%M:%S')}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
