"""The keeper: a background process that holds a deployment's SSH connections open for
`ssh.persist` seconds after `orch status`, so that the next `orch status` (a person running
it again, cron, a monitoring check) reuses them instead of paying one SSH handshake per node
again: OpenSSH's ControlPersist, for orch.

It only ever takes snapshots (snapshot.py): the fixed facts script in a long-lived shell per
node and the container list through the runtime's API.  It runs no other command, so its
socket grants nothing but that read-only look.  The socket lives in orch's state directory
(0700), is 0600, and answers only the user it runs as (SO_PEERCRED).  The keeper exits after
`ssh.persist` seconds without a request, when every connection is gone (nodes rebooted, the
lab torn down), or on SIGTERM (`orch down` sends it).

    STATE/keepers/KEY.sock   its socket; KEY hashes everything it connected with
    STATE/keepers/KEY.pid    {"pid": ..., "deployment": ...}; removed when it exits
    STATE/keepers/KEY.lock   held while it lives (one keeper per KEY)
    STATE/keepers/KEY.log    its log (JSON lines)

Run as `python -m orchestrator.keeper INVENTORY --idle SECONDS` (orch starts it; detached).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

from . import __version__
from .cluster import Deployment, Session, open_session
from .log import log, setup
from .remote import connect_all
from .snapshot import Snapshot
from .state import private_dir, state_dir

PROTOCOL = 2  # 2: snapshots carry the model digest
MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes
REPLY_TIMEOUT_S = 90  # a keeper reconnecting to a dead node takes up to the retry deadline
CHECK_S = 5.0


def key_of(dep: Deployment) -> str:
    """Everything a keeper's connections and looks depend on: another inventory gets another
    keeper."""
    inv = dep.inv
    what = {"protocol": PROTOCOL, "orch": __version__, "deployment": inv.deployment,
            "runtime": inv.runtime, "runtime_socket": inv.runtime_socket,
            "targets": [asdict(t) for t in dep.targets()]}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def keepers_dir() -> Path:
    d = state_dir() / "keepers"
    private_dir(d)
    return d


def socket_of(dep: Deployment) -> Path:
    return keepers_dir() / f"{key_of(dep)}.sock"


def usable(dep: Deployment) -> bool:
    """Whether this deployment's status may use (and leave) a keeper."""
    return dep.inv.ssh.persist > 0 and len(str(socket_of(dep))) <= MAX_SOCKET_PATH


# --- the client side: orch status ---------------------------------------------------------

async def snapshot(dep: Deployment, timeout: float = REPLY_TIMEOUT_S) -> Snapshot | None:
    """A snapshot from this deployment's keeper, or None when there is none (or it failed:
    the caller then connects itself)."""
    path = socket_of(dep)
    if not path.exists():
        return None
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), 2)
    except (TimeoutError, OSError):
        return None  # a keeper that died without cleaning up: the next one replaces it
    try:
        writer.write(json.dumps({"protocol": PROTOCOL, "op": "snapshot"}).encode() + b"\n")
        line = await asyncio.wait_for(reader.readline(), timeout)
        reply = json.loads(line)
        if reply.get("protocol") != PROTOCOL or "snapshot" not in reply:
            log.warning("keeper answered something else; connecting directly", reply=str(reply)[:200])
            return None
        return Snapshot.from_json(reply["snapshot"])
    except (TimeoutError, OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("keeper did not answer; connecting directly", error=str(exc) or type(exc).__name__)
        return None
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def _lock_free(lock_path: Path) -> bool:
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(fd)  # closing releases the lock taken for the test
    return True


def spawn(dep: Deployment) -> int | None:
    """Start this deployment's keeper unless one lives; its PID, or None."""
    key = key_of(dep)
    d = keepers_dir()
    if not _lock_free(d / f"{key}.lock"):
        return None
    logf = os.open(d / f"{key}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        p = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.keeper", str(dep.inventory_path.resolve()),
             "--idle", str(dep.inv.ssh.persist)],
            stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, start_new_session=True,
            close_fds=True)
    finally:
        os.close(logf)
    _spawned.append(p)  # never waited for: it outlives this command on purpose
    return p.pid


_spawned: list[subprocess.Popen[bytes]] = []


def _records(base: Path | None = None) -> Iterator[tuple[Path, dict[str, object]]]:
    d = (base or state_dir()) / "keepers"
    if not d.is_dir():
        return
    for p in sorted(d.glob("*.pid")):
        try:
            yield p, json.loads(p.read_text())
        except (OSError, ValueError):
            continue


def _is_keeper(pid: int) -> bool:
    """Whether PID runs a keeper now (an exited one, even a zombie, has no command line)."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"orchestrator.keeper" in cmd


def running(deployment: str | None = None, base: Path | None = None) -> list[int]:
    """PIDs of the live keepers (of one deployment) of this state directory (or `base`)."""
    return [int(r["pid"]) for _, r in _records(base)  # type: ignore[call-overload]
            if (deployment is None or r.get("deployment") == deployment)
            and _is_keeper(int(r["pid"]))]  # type: ignore[call-overload]


def stop(deployment: str | None = None, timeout: float = 10, base: Path | None = None) -> list[int]:
    """SIGTERM this deployment's keepers (every keeper of this state directory, or of `base`,
    when None), by the PID each recorded, after checking that PID still is a keeper; wait."""
    pids = running(deployment, base)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    end = time.monotonic() + timeout
    while time.monotonic() < end and any(_is_keeper(p) for p in pids):
        time.sleep(0.05)
    return pids


# --- the keeper process ---------------------------------------------------------------------

class Keeper:
    def __init__(self, dep: Deployment, s: Session, idle_s: float) -> None:
        self.dep, self.s, self.idle_s = dep, s, idle_s
        self.last = time.monotonic()
        self.served = 0
        self._lock = asyncio.Lock()
        self.via = f"kept connections (keeper pid {os.getpid()})"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            sock = writer.get_extra_info("socket")
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            _, uid, _ = struct.unpack("3i", creds)
            if uid != os.getuid():
                log.warning("refused a client of another user", uid=uid)
                return
            req = json.loads(await asyncio.wait_for(reader.readline(), 10))
            if req.get("protocol") != PROTOCOL or req.get("op") != "snapshot":
                writer.write(json.dumps({"protocol": PROTOCOL, "error": "unknown request"}).encode() + b"\n")
                return
            async with self._lock:
                self.last = time.monotonic()
                snap = await self.look()
                self.last = time.monotonic()
            self.served += 1
            writer.write(json.dumps({"protocol": PROTOCOL, "snapshot": snap.to_json()}).encode() + b"\n")
            await writer.drain()
        except (TimeoutError, OSError, ValueError) as exc:
            log.warning("request failed", error=str(exc) or type(exc).__name__)
        finally:
            writer.close()

    async def look(self) -> Snapshot:
        """Reconnect the nodes that were unreachable (as a fresh `orch status` would try),
        then look at every node."""
        missing = [t for t in self.dep.targets() if t.node in self.s.unreachable]
        if missing:
            hosts, errors = await connect_all(missing)
            self.s.hosts.update(hosts)
            self.s.unreachable = errors  # every unreachable node was just tried
        snap = await self.s.snapshot(kept=True)
        snap.via = self.via
        return snap

    def connections_gone(self) -> bool:
        return all(h.closed for h in self.s.hosts.values())

    async def wait_done(self) -> str:
        while True:
            await asyncio.sleep(CHECK_S)
            if self._lock.locked():
                continue
            if time.monotonic() - self.last >= self.idle_s:
                return f"idle for {self.idle_s:.0f}s"
            if self.connections_gone():
                return "every connection closed"


async def serve(inventory: Path, idle_s: float) -> int:
    dep = Deployment.load(inventory, with_secrets=False)
    key = key_of(dep)
    d = keepers_dir()
    sock_path, pid_path = d / f"{key}.sock", d / f"{key}.pid"
    lock_fd = os.open(d / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        log.info("another keeper holds this deployment's connections", key=key)
        return 0
    s = await open_session(dep, require_all=False)
    if not s.hosts:
        log.warning("no node reachable; nothing to keep",
                    unreachable={k: str(v) for k, v in s.unreachable.items()})
        return 1
    k = Keeper(dep, s, idle_s)
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if task is not None:
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
    sock_path.unlink(missing_ok=True)  # left by a keeper that was killed
    os.umask(0o077)  # the socket is private from its first moment
    server = await asyncio.start_unix_server(k.handle, path=str(sock_path))
    sock_path.chmod(0o600)
    pid_path.write_text(json.dumps({"pid": os.getpid(), "deployment": dep.inv.deployment,
                                    "inventory": str(inventory), "nodes": sorted(s.hosts)}))
    log.info("keeping connections", deployment=dep.inv.deployment, nodes=len(s.hosts),
             unreachable=sorted(s.unreachable), idle_s=idle_s, socket=str(sock_path))
    why = "stopped"
    try:
        why = await k.wait_done()
    except asyncio.CancelledError:
        why = "SIGTERM"
    finally:
        server.close()
        sock_path.unlink(missing_ok=True)
        pid_path.unlink(missing_ok=True)
        s.close()
        log.info("keeper exits", reason=why, served=k.served)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m orchestrator.keeper", description=__doc__.split("\n\n")[0])
    ap.add_argument("inventory", type=Path)
    ap.add_argument("--idle", type=float, required=True, help="exit after this many idle seconds")
    a = ap.parse_args(argv)
    setup(json_lines=True)
    return asyncio.run(serve(a.inventory, a.idle))


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["snapshot", "spawn", "stop", "running", "usable", "key_of"]
