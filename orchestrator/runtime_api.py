"""The container runtime's HTTP API (docker's Engine API, podman's docker-compatible API) on a
node, reached through that node's SSH connection: sshd connects a channel to the runtime's
UNIX socket, so listing this deployment's containers starts no process on the node (the
`docker`/`podman` CLI costs 30-40 ms of CPU per call).  The HTTP connection is kept and
reused while the SSH connection lives.

Read-only: list and inspect.  Launching and removing stay with the CLI (remote.py argv).
When the socket cannot be reached (sshd forwarding disabled, no socket, not permitted)
`ApiUnavailable` says so and the caller uses the CLI instead.
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import asyncssh
import h11

from .errors import ChannelRefused, ConnectError, RuntimeApiError
from .errors import RuntimeApiUnavailable as ApiUnavailable
from .plan import LABEL_DEPLOYMENT, LABEL_NODE
from .remote import Host
from .runtime import Look

DEFAULT_SOCKETS = {"docker": "/var/run/docker.sock", "podman": "/run/podman/podman.sock"}


def socket_path(runtime: str, configured: str | None) -> str | None:
    """The socket to use: the inventory's `runtime_socket`, else the runtime's default;
    None when the inventory says `off`."""
    if configured == "off":
        return None
    return configured or DEFAULT_SOCKETS[runtime]


class _Conn:
    """One HTTP/1.1 connection to the runtime's socket over an SSH channel, kept for the next
    request while both sides allow it; h11 writes the requests and parses the answers.  (It
    replaced httpcore's connection pool here, whose locks, cancel scopes and event-loop
    lookups made a look at 64 lab nodes cost 0.075 s of orch's CPU instead of 0.049 s.)"""

    def __init__(self, node: str, reader: Any, writer: Any) -> None:
        self.node, self._r, self._w = node, reader, writer
        self._h = h11.Connection(h11.CLIENT)

    @property
    def reusable(self) -> bool:
        """Idle, and the runtime has not hung up (a kept connection it closed meanwhile)."""
        return self._h.our_state is h11.IDLE and not self._r.at_eof()

    async def get(self, path: str) -> tuple[int, dict[str, str], bytes]:
        h = self._h
        try:
            self._w.write(h.send(h11.Request(method="GET", target=path, headers=[
                ("Host", "localhost"), ("Accept", "application/json")])) + h.send(h11.EndOfMessage()))
            status, headers, body = 0, {}, bytearray()
            while True:
                ev = h.next_event()
                if ev is h11.NEED_DATA:
                    h.receive_data(await self._r.read(1 << 16))  # b"": the runtime hung up
                elif isinstance(ev, h11.Response):
                    status = ev.status_code
                    headers = {k.decode().lower(): v.decode(errors="replace") for k, v in ev.headers}
                elif isinstance(ev, h11.Data):
                    body += ev.data
                elif isinstance(ev, h11.EndOfMessage):
                    break
                elif isinstance(ev, h11.ConnectionClosed):
                    raise _Broken(self.node, "the runtime closed the connection before answering")
        except (h11.ProtocolError, OSError, asyncssh.Error) as exc:  # asyncssh: channel closed
            raise _Broken(self.node, f"{type(exc).__name__} {exc}".strip()) from exc
        if h.our_state is h11.DONE and h.their_state is h11.DONE:
            h.start_next_cycle()  # keep-alive
        else:
            self.close()  # `Connection: close`, or a body read to the end of the stream
        return status, headers, bytes(body)

    def close(self) -> None:
        try:
            self._w.close()
        except Exception:  # closing a broken channel must not hide why it broke
            pass


class _Broken(RuntimeApiError):
    """The HTTP connection broke (or the runtime closed it): `RuntimeApi._get` tries once
    more on a fresh one, then raises a RuntimeApiError of its own."""


def _filters(deployment: str | None, node: str | None) -> str:
    labels = [LABEL_DEPLOYMENT if deployment is None else f"{LABEL_DEPLOYMENT}={deployment}"]
    if node is not None:
        labels.append(f"{LABEL_NODE}={node}")
    return urllib.parse.quote(json.dumps({"label": labels}))


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes


def ping_version(headers: Mapping[str, str], *, engines_only: bool = False) -> str:
    """The engine version in a `/_ping` answer's headers ("" when it names none).  With
    `engines_only`, for the answers to other requests: only a `Server` that names docker or
    podman counts (any HTTP server sends one, e.g. `BaseHTTP/0.6`)."""
    product = r"(?:docker|libpod)" if engines_only else r"[\w.-]+"
    m = re.match(rf"\s*{product}/(\S+)", headers.get("server", ""), re.IGNORECASE)
    if m:
        return m[1]
    return headers.get("libpod-api-version", "").strip()


def _qualified(ref: str) -> bool:
    """A reference that names one image exactly: registry/path:tag (a registry host or
    `localhost` first, a tag last, no digest).  The image list filtered to it costs podman
    half an inspect (1.6 against 3.1 ms of its CPU on the lab); other references (short
    names, no tag, digests) are inspected, which resolves them as `run` does."""
    if "@" in ref or "/" not in ref:
        return False
    first, _, rest = ref.partition("/")
    if not ("." in first or ":" in first or first == "localhost"):
        return False
    return ":" in rest.rsplit("/", 1)[-1]


class RuntimeApi:
    """One node's runtime API over its SSH connection (one kept HTTP connection)."""

    def __init__(self, host: Host, socket: str, timeout: float = 30) -> None:
        self.host, self.socket, self.timeout = host, socket, timeout
        self._conn: _Conn | None = None

    async def _get(self, path: str, ok: tuple[int, ...] = (200,)) -> Response:
        # A kept connection can break between two looks (the runtime restarted, the channel
        # was closed): one more try on a fresh connection before calling it an error.
        for fresh in (self._conn is None, True):
            try:
                return await self._request(path, ok)
            except _Broken as exc:
                await self.aclose()
                if self.host.closed:  # the SSH connection itself is gone: reconnect, not fail
                    raise ConnectError.lost(self.host.name, f"connection lost reading "
                                            f"{self.socket}: {exc}") from exc
                if fresh:
                    raise RuntimeApiError(self.host.name, f"{self.socket}: GET {path}: "
                                          f"{exc.message}") from exc
        raise AssertionError("unreachable")

    async def _json(self, path: str, seen: list[Response] | None = None) -> Any:
        r = await self._get(path)
        if seen is not None:
            seen.append(r)
        try:
            return json.loads(r.body)
        except ValueError as exc:
            raise RuntimeApiError(self.host.name, f"{self.socket}: GET {path} -> not JSON") from exc

    async def _request(self, path: str, ok: tuple[int, ...]) -> Response:
        try:
            async with asyncio.timeout(self.timeout):
                if self._conn is not None and not self._conn.reusable:
                    await self.aclose()
                if self._conn is None:
                    reader, writer = await self.host.open_unix(self.socket, self.timeout)
                    self._conn = _Conn(self.host.name, reader, writer)
                status, headers, body = await self._conn.get(path)
        except ChannelRefused as exc:
            await self.aclose()
            raise ApiUnavailable(self.host.name, exc.message) from exc
        except TimeoutError as exc:
            await self.aclose()
            raise RuntimeApiError(self.host.name, f"{self.socket}: no answer within "
                                  f"{self.timeout:.0f}s to GET {path}") from exc
        if status == 404 and path.startswith(("/containers/json", "/_ping")):
            await self.aclose()
            raise ApiUnavailable(self.host.name, f"{self.socket} answers 404 to GET "
                                 f"{path.split('?')[0]}: not a docker-compatible API")
        if status not in ok:
            text = body.decode(errors="replace")[:300]
            raise RuntimeApiError(self.host.name, f"{self.socket}: GET {path} -> HTTP {status} {text}")
        return Response(status, headers, body)

    async def version(self) -> str:
        """The engine's version, from the headers of `/_ping` (docker: `Server: Docker/27.3.1
        (linux)`, podman: `Server: Libpod/4.3.1 (linux)`, `Libpod-Api-Version: 4.3.1`): the
        same value `docker info` / `podman info` print, without the cost of `/info`, which
        makes podman look up its helpers' package versions (about 130 ms of CPU a call)."""
        return ping_version((await self._get("/_ping")).headers)

    async def image_id(self, ref: str) -> str | None:
        """The local image's ID (`sha256:...`), None when the node does not have it."""
        return (await self._image(ref))[0]

    async def _image(self, ref: str) -> tuple[str | None, Response]:
        if _qualified(ref):  # the list, filtered to the name, where an entry has it exactly
            try:
                r = await self._get("/images/json?filters="
                                    + urllib.parse.quote(json.dumps({"reference": [ref]})))
                listed = json.loads(r.body)
            except (RuntimeApiError, ValueError):
                listed = None
            for img in listed if isinstance(listed, list) else ():
                if (isinstance(img, dict) and ref in (img.get("RepoTags") or [])
                        and isinstance(img.get("Id"), str) and img["Id"]):
                    return img["Id"], r
        # inspect resolves the name as `run` does (short names, default tag, digests)
        r = await self._get(f"/images/{urllib.parse.quote(ref, safe='/:@')}/json", ok=(200, 404))
        if r.status == 404:
            return None, r
        try:
            iid = json.loads(r.body).get("Id")
        except (ValueError, AttributeError) as exc:
            raise RuntimeApiError(self.host.name, f"{self.socket}: image {ref}: not JSON") from exc
        if not isinstance(iid, str) or not iid:
            raise RuntimeApiError(self.host.name, f"{self.socket}: image {ref}: no Id in the answer")
        return iid, r

    async def inspect_all(self, deployment: str | None, node: str | None,
                          seen: list[Response] | None = None) -> list[dict[str, Any]]:
        """`inspect` of every container labelled with this deployment (any deployment when
        None) and node: the same objects `docker inspect` / `podman inspect` print.  The list's
        answer is appended to `seen` (its headers name the engine's version)."""
        listed = await self._json(f"/containers/json?all=1&filters={_filters(deployment, node)}",
                                  seen)
        out = []
        for c in listed:
            try:
                out.append(await self._json(f"/containers/{c['Id']}/json"))
            except RuntimeApiError as exc:  # removed between list and inspect: not there any more
                if "HTTP 404" not in exc.message:
                    raise
        return out

    async def look(self, image: str) -> Look:
        """What the preflight asks the runtime: its version, the image's ID, every orch
        container (any deployment).  Raises ApiUnavailable when the socket cannot be reached
        (then nothing was learnt: use the CLI); an error of one question is kept in its field.
        Two requests: docker and podman name their version in every answer's `Server`
        header, so `/_ping` is asked only when neither answer named one (a foreign API that
        answers 404 is told apart there, or by the containers list)."""
        seen: list[Response] = []
        iid: str | None | RuntimeApiError
        cs: list[dict[str, Any]] | RuntimeApiError
        try:
            iid, r = await self._image(image)
            seen.append(r)
        except RuntimeApiError as exc:
            iid = exc
        try:
            cs = await self.inspect_all(None, None, seen)
        except RuntimeApiError as exc:
            cs = exc
        version: str | RuntimeApiError = next(
            (v for v in (ping_version(r.headers, engines_only=True) for r in seen) if v), "")
        if not version:
            try:
                version = await self.version()
            except RuntimeApiError as exc:
                return Look(exc, exc, exc)
        return Look(version, iid, cs)

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
