"""orch's PD proxy (orchestrator/pdproxy.py) on a real socket, with the prefill and decode
instances played by httpx's MockTransport: what each side receives, what the client gets."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from orchestrator import pdproxy
from orchestrator.pdproxy import Backend, Proxy

KV = {"remote_engine_id": "0", "remote_block_ids": [1, 2]}


def make_proxy(calls: list[tuple[str, dict]], *, prefill_status: int = 200, stream: bool = False) -> Proxy:
    def handler(req: httpx.Request) -> httpx.Response:
        if req.method == "GET":
            calls.append((f"GET {req.url}", {}))
            return httpx.Response(200, json={"object": "list", "data": [{"id": "tiny"}]})
        body = json.loads(req.content)
        calls.append((f"{req.url.host} {req.url.path} {req.headers.get('x-request-id')}", body))
        if req.url.host.startswith("p"):
            if prefill_status != 200:
                return httpx.Response(prefill_status, json={"error": "prompt too long"})
            return httpx.Response(200, json={"choices": [{"text": "x"}], "kv_transfer_params": KV})
        if body.get("stream"):
            return httpx.Response(200, headers={"content-type": "text/event-stream"},
                                  content=b"data: {\"t\": 1}\n\ndata: [DONE]\n\n")
        return httpx.Response(200, json={"choices": [{"text": "decoded"}]})

    p = Proxy([Backend("p1", 8000), Backend("p2", 8000)], [Backend("d1", 8000)])
    p.client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return p


async def serve_and(proxy: Proxy, fn):  # type: ignore[no-untyped-def]
    server = await asyncio.start_server(proxy.serve_conn, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", trust_env=False) as c:
            out = await fn(c)
        await asyncio.sleep(0.05)  # the proxy sees the client's connection close
        return out
    finally:
        server.close()
        await server.wait_closed()
        await proxy.client.aclose()


def test_healthcheck_and_unknown_paths() -> None:
    async def go(c: httpx.AsyncClient):  # type: ignore[no-untyped-def]
        return (await c.get("/healthcheck")).json(), (await c.get("/nope")).status_code

    body, code = asyncio.run(serve_and(make_proxy([]), go))
    assert body == {"status": "ok", "prefill_instances": 2, "decode_instances": 1}
    assert code == 404


def test_completion_goes_to_prefill_with_one_token_then_to_decode_with_its_kv_params() -> None:
    calls: list[tuple[str, dict]] = []
    req = {"model": "tiny", "prompt": "hello", "max_tokens": 16, "stream": False, "min_tokens": 2}

    async def go(c: httpx.AsyncClient):  # type: ignore[no-untyped-def]
        # three requests on one keep-alive connection
        return [(await c.post("/v1/completions", json=req, headers={"X-Request-Id": f"r{i}"})).json()
                for i in range(3)]

    answers = asyncio.run(serve_and(make_proxy(calls), go))
    assert answers == [{"choices": [{"text": "decoded"}]}] * 3
    assert [c[0] for c in calls] == ["p1 /v1/completions r0", "d1 /v1/completions r0",
                                     "p2 /v1/completions r1", "d1 /v1/completions r1",
                                     "p1 /v1/completions r2", "d1 /v1/completions r2"]
    pre, dec = calls[0][1], calls[1][1]
    assert pre["max_tokens"] == 1 and pre["stream"] is False and "min_tokens" not in pre
    assert pre["kv_transfer_params"]["do_remote_decode"] is True
    assert dec == {**req, "kv_transfer_params": KV}


def test_chat_stream_is_relayed() -> None:
    calls: list[tuple[str, dict]] = []
    req = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream": True,
           "stream_options": {"include_usage": True}, "max_completion_tokens": 9}

    async def go(c: httpx.AsyncClient):  # type: ignore[no-untyped-def]
        async with c.stream("POST", "/v1/chat/completions", json=req) as r:
            return r.status_code, r.headers["content-type"], b"".join([b async for b in r.aiter_bytes()])

    code, ctype, body = asyncio.run(serve_and(make_proxy(calls), go))
    assert (code, ctype) == (200, "text/event-stream")
    assert body == b"data: {\"t\": 1}\n\ndata: [DONE]\n\n"
    pre = calls[0][1]
    assert pre["stream"] is False and "stream_options" not in pre and pre["max_completion_tokens"] == 1
    assert calls[1][1]["stream"] is True and calls[1][0].split()[2] == calls[0][0].split()[2]


def test_prefill_errors_are_returned_as_they_are() -> None:
    calls: list[tuple[str, dict]] = []

    async def go(c: httpx.AsyncClient):  # type: ignore[no-untyped-def]
        return await c.post("/v1/completions", json={"model": "tiny", "prompt": "x" * 10})

    r = asyncio.run(serve_and(make_proxy(calls, prefill_status=400), go))
    assert r.status_code == 400 and r.json() == {"error": "prompt too long"}
    assert len(calls) == 1  # no decode request


def test_models_pass_through_and_bad_bodies() -> None:
    calls: list[tuple[str, dict]] = []

    async def go(c: httpx.AsyncClient):  # type: ignore[no-untyped-def]
        return (await c.get("/v1/models")).json(), (await c.post("/v1/completions", content=b"[1]")).status_code

    models, bad = asyncio.run(serve_and(make_proxy(calls), go))
    assert models["data"][0]["id"] == "tiny" and calls[0][0] == "GET http://d1:8000/v1/models"
    assert bad == 400


def test_cli_flags_match_the_seed_proxy() -> None:
    a = pdproxy.parse_args(["--port", "12347", "--prefiller-hosts", "10.0.0.1", "--prefiller-port", "8000",
                            "--decoder-hosts", "10.0.0.2", "10.0.0.3", "--decoder-ports", "8000"])
    assert a.port == 12347 and a.prefiller_ports == [8000]
    ds = pdproxy.backends("decoder", a.decoder_hosts, a.decoder_ports)
    assert [d.url for d in ds] == ["http://10.0.0.2:8000", "http://10.0.0.3:8000"]
    with pytest.raises(SystemExit, match="2 host"):
        pdproxy.backends("decoder", ["a", "b"], [1, 2, 3])
