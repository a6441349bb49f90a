"""orch's prefill/decode proxy: one address in front of prefill and decode vLLM instances.

    python3 pdproxy.py --host 0.0.0.0 --port 12347 \\
        --prefiller-hosts 10.0.0.1 --prefiller-ports 8000 \\
        --decoder-hosts 10.0.0.2 10.0.0.3 --decoder-ports 8000 8000

The same flags as the proxy of vllm-ascend's examples that seed 001 runs (written anew here,
nothing copied).  Self-contained: the standard library (an asyncio HTTP/1.1 server) and
httpx, which every vLLM image has; orch runs it inside the deployment's own image.

    POST /v1/completions, /v1/chat/completions
        1. to a prefill instance (the least busy): the request with max_tokens=1, no
           streaming, and kv_transfer_params {"do_remote_decode": true, ...} - the
           connector keeps the prompt's KV cache for a decoder;
        2. to a decode instance (the least busy): the original request plus the
           kv_transfer_params the prefill answer returned (if any); its answer, streamed or
           not, goes back to the client as it comes.
        Both requests carry the same X-Request-Id.  An error of either side is returned as
        it is (its status and body); an unreachable instance is a 502.
    GET /healthcheck   {"status": "ok", "prefill_instances": N, "decode_instances": M}
    GET /v1/models, /version, /health, /metrics   passed to the first decode instance
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import signal
import sys
import time
import uuid
from dataclasses import dataclass

import httpx

REMOTE_DECODE = {"do_remote_decode": True, "do_remote_prefill": False, "remote_engine_id": None,
                 "remote_block_ids": None, "remote_host": None, "remote_port": None}
GENERATE = ("/v1/completions", "/v1/chat/completions")
PASSTHROUGH = ("/v1/models", "/version", "/health", "/metrics")
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 411: "Length Required",
           413: "Payload Too Large", 500: "Internal Server Error", 502: "Bad Gateway"}
MAX_HEADER = 64 * 1024
MAX_BODY = 64 * 1024 * 1024


@dataclass
class Backend:
    host: str
    port: int
    busy: int = 0

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


class Proxy:
    def __init__(self, prefill: list[Backend], decode: list[Backend], timeout: float = 600) -> None:
        self.prefill, self.decode = prefill, decode
        self._turns = {"prefill": itertools.count(), "decode": itertools.count()}
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=10), trust_env=False,
                                        limits=httpx.Limits(max_connections=None))

    def pick(self, role: str) -> Backend:
        """The least busy prefill/decode backend; ties go round robin."""
        pool = self.prefill if role == "prefill" else self.decode
        low = min(b.busy for b in pool)
        ties = [b for b in pool if b.busy == low]
        return ties[next(self._turns[role]) % len(ties)]

    def health(self) -> dict[str, object]:
        return {"status": "ok", "prefill_instances": len(self.prefill),
                "decode_instances": len(self.decode)}

    # --- the HTTP side -------------------------------------------------------------------

    async def serve_conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = (lines[0].split(" ") + ["", ""])[:3]
                headers = {}
                for ln in lines[1:]:
                    if ":" in ln:
                        k, v = ln.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                if "chunked" in headers.get("transfer-encoding", "").lower():
                    await reply(writer, 411, {"error": "send a Content-Length body"})
                    return
                size = int(headers.get("content-length") or 0)
                if size > MAX_BODY:
                    await reply(writer, 413, {"error": "request body too large"})
                    return
                body = await reader.readexactly(size) if size else b""
                await self.route(method, path.split("?", 1)[0], headers, body, writer)
                if headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    async def route(self, method: str, path: str, headers: dict[str, str], body: bytes,
                    writer: asyncio.StreamWriter) -> None:
        if method == "GET" and path == "/healthcheck":
            await reply(writer, 200, self.health())
        elif method == "GET" and path in PASSTHROUGH:
            await self.forward_get(path, headers, writer)
        elif method == "POST" and path in GENERATE:
            await self.generate(path, headers, body, writer)
        else:
            await reply(writer, 404, {"error": f"{method} {path}: not served by the PD proxy"})

    # --- the proxying --------------------------------------------------------------------

    async def forward_get(self, path: str, headers: dict[str, str],
                          writer: asyncio.StreamWriter) -> None:
        b = self.decode[0]
        try:
            r = await self.client.get(b.url + path, headers=pass_headers(headers))
        except httpx.HTTPError as exc:
            await reply(writer, 502, {"error": f"decode instance {b.url}: {why(exc)}"})
            return
        await reply_raw(writer, r.status_code, r.headers.get("content-type", "text/plain"),
                        r.content)

    async def generate(self, path: str, headers: dict[str, str], body: bytes,
                       writer: asyncio.StreamWriter) -> None:
        try:
            req = json.loads(body or b"{}")
            if not isinstance(req, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            await reply(writer, 400, {"error": f"the request body is not a JSON object: {exc}"})
            return
        rid = headers.get("x-request-id") or uuid.uuid4().hex
        fwd = {**pass_headers(headers), "x-request-id": rid}
        t0 = time.monotonic()
        pre = dict(req, max_tokens=1, stream=False, kv_transfer_params=REMOTE_DECODE)
        pre.pop("stream_options", None)
        pre.pop("min_tokens", None)
        if "max_completion_tokens" in pre:
            pre["max_completion_tokens"] = 1
        p = self.pick("prefill")
        p.busy += 1
        try:
            r = await self.client.post(p.url + path, json=pre, headers=fwd)
        except httpx.HTTPError as exc:
            await reply(writer, 502, {"error": f"prefill instance {p.url}: {why(exc)}"})
            return
        finally:
            p.busy -= 1
        if r.status_code != 200:
            log(f"{rid} {path} prefill {p.url} -> {r.status_code}")
            await reply_raw(writer, r.status_code,
                            r.headers.get("content-type", "application/json"), r.content)
            return
        dec = dict(req)
        try:
            params = r.json().get("kv_transfer_params")
        except (ValueError, AttributeError):
            params = None
        if params:
            dec["kv_transfer_params"] = params
        t1 = time.monotonic()
        d = self.pick("decode")
        d.busy += 1
        try:
            await self.stream_to(writer, d, path, dec, fwd)
        finally:
            d.busy -= 1
        log(f"{rid} {path} prefill {p.url} {t1 - t0:.3f}s, "
            f"decode {d.url} {time.monotonic() - t1:.3f}s")

    async def stream_to(self, writer: asyncio.StreamWriter, d: Backend, path: str,
                        body: dict[str, object], headers: dict[str, str]) -> None:
        started = False
        try:
            async with self.client.stream("POST", d.url + path, json=body, headers=headers) as r:
                ctype = r.headers.get("content-type", "application/json")
                writer.write(status_line(r.status_code) + header_lines(
                    {"content-type": ctype, "transfer-encoding": "chunked"}))
                started = True
                async for chunk in r.aiter_bytes():
                    if chunk:
                        writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        await writer.drain()
                writer.write(b"0\r\n\r\n")
                await writer.drain()
        except httpx.HTTPError as exc:
            if started:  # the client sees a cut chunked stream; this connection ends
                raise ConnectionError(f"decode instance {d.url}: {exc}") from exc
            await reply(writer, 502, {"error": f"decode instance {d.url}: {why(exc)}"})


def why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def pass_headers(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k in ("authorization", "x-request-id", "accept")}


def status_line(code: int) -> bytes:
    return f"HTTP/1.1 {code} {REASONS.get(code, 'Status')}\r\n".encode()


def header_lines(headers: dict[str, str]) -> bytes:
    return "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode() + b"\r\n"


async def reply_raw(writer: asyncio.StreamWriter, code: int, ctype: str, data: bytes) -> None:
    head = header_lines({"content-type": ctype, "content-length": str(len(data))})
    writer.write(status_line(code) + head + data)
    await writer.drain()


async def reply(writer: asyncio.StreamWriter, code: int, obj: object) -> None:
    await reply_raw(writer, code, "application/json", json.dumps(obj).encode())


def log(msg: str) -> None:
    print(f"pdproxy {time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def backends(kind: str, hosts: list[str], ports: list[int]) -> list[Backend]:
    if len(ports) == 1 and len(hosts) > 1:
        ports = ports * len(hosts)
    if not hosts or len(hosts) != len(ports):
        raise SystemExit(f"pdproxy: {kind}: {len(hosts)} host(s) but {len(ports)} port(s)")
    return [Backend(h, p) for h, p in zip(hosts, ports)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="prefill/decode proxy (orch)")
    ap.add_argument("--host", default="0.0.0.0")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--prefiller-hosts", nargs="+", default=["localhost"])
    ap.add_argument("--prefiller-ports", nargs="+", type=int, default=[8100])
    ap.add_argument("--decoder-hosts", nargs="+", default=["localhost"])
    ap.add_argument("--decoder-ports", nargs="+", type=int, default=[8200])
    ap.add_argument("--timeout", type=float, default=600, help="seconds per backend request")
    return ap.parse_args(argv)


async def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    proxy = Proxy(backends("prefiller", a.prefiller_hosts, a.prefiller_ports),
                  backends("decoder", a.decoder_hosts, a.decoder_ports), a.timeout)
    server = await asyncio.start_server(proxy.serve_conn, a.host, a.port, limit=MAX_HEADER)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log(f"listening on {a.host}:{a.port}; prefill {[b.url for b in proxy.prefill]}, "
        f"decode {[b.url for b in proxy.decode]}")
    async with server:
        await stop.wait()
    await proxy.client.aclose()


if __name__ == "__main__":
    asyncio.run(main())
