"""SSH to the nodes (asyncssh), with errors translated here and only here.

Commands are argv lists, quoted exactly once with `shlex.join` at the moment they are sent;
no inventory value is ever pasted into a shell string.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shlex
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from .errors import ChannelRefused, CommandError, ConnectError
from .inventory import Inventory, Node
from .retry import policy
from .state import state_dir


@dataclass(frozen=True)
class Result:
    rc: int | None
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.rc == 0


@dataclass(frozen=True)
class Target:
    """Everything needed to open an SSH connection to one node."""

    node: str
    host: str
    port: int | None
    user: str | None
    key: str | None
    known_hosts: str | None
    jump: str | None
    config: str | None
    accept_new: bool = False

    @classmethod
    def of(cls, inv: Inventory, node: Node, accept_new: bool = False) -> Target:
        s = inv.ssh
        return cls(
            node=node.name,
            host=node.host,
            port=node.port or s.port,
            user=node.user or s.user,
            key=node.key or s.key,
            known_hosts=s.known_hosts,
            jump=node.jump or s.jump,
            config=s.config,
            accept_new=accept_new,
        )


def _expand(p: str | None) -> str | None:
    return os.path.expanduser(p) if p else None


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, ConnectError) and exc.transient


class Host:
    """One open SSH connection to a node."""

    def __init__(self, target: Target, conn: asyncssh.SSHClientConnection) -> None:
        self.target = target
        self.name = target.node
        self._conn = conn
        self.sudo = (conn.get_extra_info("username") or "root") != "root"

    async def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float = 120,
        check: bool = True,
        merge: bool = False,
        input: str | None = None,
    ) -> Result:
        """Run argv on the node. `merge` sends stderr into stdout (for logs)."""
        full = (["sudo", "-n", "--"] if self.sudo else []) + list(argv)
        cmd = shlex.join(full)
        try:
            r = await self._conn.run(
                cmd,
                check=False,
                timeout=timeout,
                input=input,
                stderr=asyncssh.STDOUT if merge else asyncssh.PIPE,
            )
        except asyncssh.TimeoutError as exc:
            raise CommandError(self.name, full, None, f"timed out after {timeout:.0f}s") from exc
        except (asyncssh.Error, OSError) as exc:
            raise ConnectError.lost(self.name, f"connection lost while running {full[0]}: {exc}"
                                    ) from exc
        out = _text(r.stdout)
        errtext = _text(r.stderr)
        res = Result(r.exit_status, out, errtext)
        if check and not res.ok:
            raise CommandError(self.name, full, res.rc, errtext or out)
        return res

    async def stream(self, argv: Sequence[str]):  # type: ignore[no-untyped-def]
        """Yield the merged stdout/stderr lines of a long-running command (e.g. logs -f)."""
        full = (["sudo", "-n", "--"] if self.sudo else []) + list(argv)
        try:
            async with self._conn.create_process(shlex.join(full), stderr=asyncssh.STDOUT) as proc:
                async for line in proc.stdout:
                    yield line.rstrip("\n")
        except (asyncssh.Error, OSError) as exc:
            raise ConnectError(self.name, f"connection lost while streaming: {exc}") from exc

    async def start(self, argv: Sequence[str]) -> Process:
        """Start a long-running command whose stdin and stdout (bytes; stderr merged) the
        caller drives: a copy's data stream, a daemon tied to this channel."""
        full = (["sudo", "-n", "--"] if self.sudo else []) + list(argv)
        try:
            proc = await self._conn.create_process(shlex.join(full), stderr=asyncssh.STDOUT,
                                                   encoding=None)
        except (asyncssh.Error, OSError) as exc:
            raise ConnectError.lost(self.name, f"connection lost while starting {full[0]}: {exc}"
                                    ) from exc
        return Process(self.name, full, proc)

    async def sh(self, script: str, **kw: object) -> Result:
        """Run a fixed script (orch's own text, never inventory values) with sh -c."""
        return await self.run(["sh", "-c", script], **kw)  # type: ignore[arg-type]

    async def open_unix(self, path: str, timeout: float = 10) -> tuple[asyncssh.SSHReader[bytes],
                                                                         asyncssh.SSHWriter[bytes]]:
        """A byte stream to a UNIX socket on the node (sshd's direct-streamlocal channel): no
        process is started there.  ChannelRefused when sshd will not (forwarding disabled,
        no such socket, not permitted)."""
        try:
            return await asyncio.wait_for(self._conn.open_unix_connection(path), timeout)
        except asyncssh.ChannelOpenError as exc:
            if self._conn.is_closed():  # not a refusal: the connection is gone
                raise ConnectError.lost(self.name, f"connection lost while opening {path}: "
                                        f"{exc.reason}") from exc
            raise ChannelRefused(self.name, f"sshd did not open {path}: {exc.reason}") from exc
        except TimeoutError as exc:
            raise ChannelRefused(self.name, f"sshd did not open {path} within {timeout:.0f}s") from exc
        except (asyncssh.Error, OSError) as exc:
            raise ConnectError.lost(self.name, f"connection lost while opening {path}: {exc}") from exc

    @property
    def closed(self) -> bool:
        return self._conn.is_closed()

    def close(self) -> None:
        self._conn.close()

    async def aclose(self) -> None:
        self._conn.close()
        await self._conn.wait_closed()


class Process:
    """A command running on a node (Host.start): write its stdin, read its output, wait."""

    def __init__(self, node: str, argv: list[str], proc: asyncssh.SSHClientProcess[bytes]) -> None:
        self.node, self.argv, self._proc = node, argv, proc

    async def write(self, data: bytes) -> None:
        try:
            self._proc.stdin.write(data)
            await self._proc.stdin.drain()
        except (asyncssh.Error, OSError) as exc:
            raise ConnectError.lost(self.node, f"{self.argv[0]}: its input broke: {exc}") from exc

    def close_input(self) -> None:
        self._proc.stdin.write_eof()

    async def read(self, n: int = 1 << 16) -> bytes:
        """Up to n bytes of output; b"" once it ended."""
        try:
            return await self._proc.stdout.read(n)
        except (asyncssh.Error, OSError) as exc:
            raise ConnectError.lost(self.node, f"{self.argv[0]}: its output broke: {exc}") from exc

    async def wait(self, timeout: float | None = None) -> int | None:
        """Its exit status (None: killed by a signal, or the channel closed first)."""
        try:
            r = await asyncio.wait_for(self._proc.wait(check=False), timeout)
        except TimeoutError as exc:
            raise CommandError(self.node, self.argv, None, f"still running after {timeout:.0f}s"
                               ) from exc
        except (asyncssh.Error, OSError) as exc:
            raise ConnectError.lost(self.node, f"{self.argv[0]}: connection lost: {exc}") from exc
        return r.exit_status

    def close(self) -> None:
        """Close the channel (the remote side sees its input end and a hangup)."""
        self._proc.close()


class Shell:
    """A long-lived `sh` on a node that runs orch's fixed scripts one after another: no new SSH
    session, login shell or rc files per script (what makes a repeated look at many nodes
    cheap).  The same rule as `Host.sh`: only orch's own text is written to it, never
    inventory values.  A script that times out costs the shell; the next call starts another."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self._proc: asyncssh.SSHClientProcess[str] | None = None
        self._lock = asyncio.Lock()

    async def run(self, script: str, timeout: float = 20) -> Result:
        marker = f"__orch_done_{secrets.token_hex(8)}__"
        # stdin of the script is /dev/null: nothing in it can eat the shell's own input
        framed = f"{{\n{script}\n}} </dev/null 2>&1; __orch_rc=$?; echo; echo {marker} $__orch_rc\n"
        async with self._lock:
            try:
                return await asyncio.wait_for(self._run(framed, marker), timeout)
            except TimeoutError as exc:
                self.close()
                raise CommandError(self.host.name, ["sh", "(kept)"], None,
                                   f"timed out after {timeout:.0f}s") from exc
            except (asyncssh.Error, OSError, EOFError) as exc:
                self.close()
                raise ConnectError.lost(self.host.name, f"connection lost in the kept shell: {exc}"
                                        ) from exc

    async def _run(self, framed: str, marker: str) -> Result:
        if self._proc is None:
            self._proc = await self.host._conn.create_process("sh", stderr=asyncssh.STDOUT)
        self._proc.stdin.write(framed)
        lines = []
        while True:
            line = await self._proc.stdout.readline()
            if not line:
                raise EOFError("the shell exited")
            if line.startswith(marker):
                rc = int(line.split()[1])
                break
            lines.append(line)
        out = "".join(lines)
        return Result(rc, out[:-1] if out.endswith("\n") else out, "")

    def close(self) -> None:
        if self._proc is not None:
            self._proc.close()
            self._proc = None


def _text(v: object) -> str:
    if v is None:
        return ""
    if isinstance(v, bytes):
        return v.decode(errors="replace")
    return str(v)


def known_hosts_files(t: Target) -> list[Path]:
    """Where host keys are trusted from: the inventory's file (else ~/.ssh/known_hosts), plus
    orch's own file of keys accepted with --accept-new-host-keys."""
    primary = Path(_expand(t.known_hosts) or os.path.expanduser("~/.ssh/known_hosts"))
    return [primary, state_dir() / "known_hosts"]


_read_known_hosts: dict[tuple[tuple[str, int, int], ...], bytes] = {}


def _known_hosts_data(t: Target) -> bytes:
    """The known_hosts files' content, read again only when one changed (every node's
    connection reads the same files: one stat each instead of a read)."""
    files = known_hosts_files(t)
    seen = []
    for p in files:
        try:
            st = p.stat()
            if not stat.S_ISREG(st.st_mode):
                raise FileNotFoundError(p)
        except OSError:
            if p == files[0] and t.known_hosts:
                raise ConnectError(t.node, f"known_hosts file {t.known_hosts} does not exist") from None
            continue
        seen.append((str(p), st.st_mtime_ns, st.st_size))
    key = tuple(seen)
    data = _read_known_hosts.get(key)
    if data is None:
        data = _read_known_hosts[key] = b"".join(Path(p).read_bytes() + b"\n" for p, _, _ in seen)
    return data


_parsed_known_hosts: dict[bytes, asyncssh.SSHKnownHosts] = {}


def _known_hosts(data: bytes) -> asyncssh.SSHKnownHosts:
    """The parsed known_hosts, once per content: every node's connection shares one file, and
    parsing it per connection made connecting to N nodes cost O(N^2)."""
    kh = _parsed_known_hosts.get(data)
    if kh is None:
        kh = _parsed_known_hosts[data] = asyncssh.import_known_hosts(data.decode(errors="replace"))
    return kh


def _host_pattern(host: str, port: int | None) -> str:
    return host if not port or port == 22 else f"[{host}]:{port}"


async def _fingerprint(t: Target, opts: dict[str, object]) -> tuple[str, str] | None:
    """(fingerprint, known_hosts line) of the key the host presents now."""
    kw = {k: v for k, v in opts.items() if k in ("port", "tunnel", "config")}
    try:
        key = await asyncio.wait_for(asyncssh.get_server_host_key(t.host, **kw), 15)  # type: ignore[arg-type]
    except (TimeoutError, asyncssh.Error, OSError):
        return None
    if key is None:
        return None
    line = f"{_host_pattern(t.host, t.port)} {key.export_public_key('openssh').decode().strip()}\n"
    return key.get_fingerprint("sha256"), line


def _remember_host_key(line: str) -> None:
    p = state_dir() / "known_hosts"
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a") as f:
        f.write(line)


# AES-GCM before asyncssh's default chacha20-poly1305: both are AEAD ciphers that OpenSSH
# offers, but asyncssh builds chacha20 and poly1305 contexts in Python for every packet, which
# was a fifth of orch's CPU when checking 64 nodes (docs/benchmarks.md); AES-GCM is one call
# per packet, and AES-NI makes it cheap for sshd too.  An ssh config file that names `Ciphers`
# decides instead.
GCM_FIRST = "^aes256-gcm@openssh.com,aes128-gcm@openssh.com"
_ciphers_configured: dict[str | None, bool] = {}


def _config_names_ciphers(config: str | None) -> bool:
    """Whether the ssh config file asyncssh reads for this target (the inventory's, else
    ~/.ssh/config) sets `Ciphers` anywhere (read once per run)."""
    if config not in _ciphers_configured:
        path = Path(_expand(config) or os.path.expanduser("~/.ssh/config"))
        try:
            text = path.read_text(errors="replace")
        except OSError:
            text = ""
        _ciphers_configured[config] = any(
            ln.strip().lower().startswith("ciphers") for ln in text.splitlines())
    return _ciphers_configured[config]


_loaded_keys: dict[tuple[str, int], object] = {}


def _client_keys(path: str) -> object:
    """The key file's key pair (and certificate), loaded once per run and file version instead
    of once per node's connection; a key that cannot be loaded here (a passphrase, a missing
    file) is left to asyncssh to load and report as it does for one connection."""
    try:
        version = (path, os.stat(path).st_mtime_ns)
        if version not in _loaded_keys:
            _loaded_keys[version] = asyncssh.load_keypairs([path])
        return _loaded_keys[version]
    except (OSError, ValueError, asyncssh.Error):
        return [path]


async def _open(t: Target, timeout: float) -> asyncssh.SSHClientConnection:
    opts: dict[str, object] = {"connect_timeout": timeout}
    if not _config_names_ciphers(t.config):
        opts["encryption_algs"] = GCM_FIRST
    if t.port:
        opts["port"] = t.port
    if t.user:
        opts["username"] = t.user
    if t.key:
        opts["client_keys"] = _client_keys(_expand(t.key) or t.key)
    if t.config:
        opts["config"] = [_expand(t.config)]
    if t.jump:
        opts["tunnel"] = t.jump
    data = _known_hosts_data(t)
    try:
        return await asyncssh.connect(t.host, known_hosts=_known_hosts(data), **opts)
    except asyncssh.HostKeyNotVerifiable as exc:
        seen = await _fingerprint(t, opts)
        fp = seen[0] if seen else "unknown"
        known = asyncssh.match_known_hosts(data, t.host, t.host, t.port)[0] if data else []
        files = " or ".join(str(p) for p in known_hosts_files(t))
        if known:
            raise ConnectError(
                t.node,
                f"HOST KEY OF {t.host} CHANGED: it now presents {fp}, which does not match {files}. "
                "This can be a man-in-the-middle attack or a reinstalled host; verify it out of band, "
                "then remove the old entry (ssh-keygen -R HOST -f FILE)",
            ) from exc
        if t.accept_new and seen:
            _remember_host_key(seen[1])
            trusted = _known_hosts(_known_hosts_data(t))
            return await asyncssh.connect(t.host, known_hosts=trusted, **opts)
        raise ConnectError(
            t.node,
            f"host key of {t.host} is unknown ({fp}); verify it and add it to {files}, "
            "or trust it on first use with --accept-new-host-keys",
        ) from exc
    except asyncssh.PermissionDenied as exc:
        raise ConnectError(
            t.node, f"SSH login to {t.host} as {t.user or 'default user'} refused: {exc.reason}"
        ) from exc
    except (TimeoutError, asyncssh.Error, OSError) as exc:
        msg = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
        raise ConnectError.lost(t.node, f"cannot connect to {t.host}:{t.port or 22}: {msg}") from exc


async def connect(t: Target, *, timeout: float = 15, deadline_s: float = 45) -> Host:
    """Connect with the project's retry policy (transient errors only)."""
    async for attempt in policy(_transient, attempts=4, deadline_s=deadline_s):
        with attempt:
            conn = await _open(t, timeout)
    return Host(t, conn)


async def connect_all(targets: list[Target]) -> tuple[dict[str, Host], dict[str, BaseException]]:
    """Connect to every node at once; each node gets its own outcome."""
    results = await asyncio.gather(*(connect(t) for t in targets), return_exceptions=True)
    hosts: dict[str, Host] = {}
    errors: dict[str, BaseException] = {}
    for t, r in zip(targets, results):
        if isinstance(r, BaseException):
            if isinstance(r, asyncio.CancelledError):
                raise r
            errors[t.node] = r
        else:
            hosts[t.node] = r
    return hosts, errors


def close_all(hosts: dict[str, Host]) -> None:
    for h in hosts.values():
        h.close()
