"""HTTP probes of a deployment's API (httpx); httpx errors are translated here only."""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from .errors import ProbeError

__all__ = ["Api", "ApiState", "ProbeError", "RouterApi"]


@dataclass(frozen=True)
class ApiState:
    ready: bool
    models: list[str]
    version: str | None
    reason: str


# The transport every Api uses when set (tests: httpx.MockTransport); None: the network.
TRANSPORT: httpx.AsyncBaseTransport | None = None


class Api:
    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 10) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url
        self._client = httpx.AsyncClient(base_url=base_url, headers=headers, timeout=timeout,
                                         trust_env=False, transport=TRANSPORT)

    async def __aenter__(self) -> Api:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.aclose()

    async def _get(self, path: str) -> httpx.Response:
        try:
            return await self._client.get(path)
        except httpx.ConnectError as exc:
            raise ProbeError(f"{self.base_url}: connection refused (not listening yet)") from exc
        except httpx.TimeoutException as exc:
            raise ProbeError(f"{self.base_url}{path}: no answer in time") from exc
        except httpx.HTTPError as exc:
            raise ProbeError(f"{self.base_url}{path}: {type(exc).__name__}: {exc}") from exc

    async def models(self) -> list[str]:
        r = await self._get("/v1/models")
        if r.status_code == 401:
            raise ProbeError("/v1/models answered 401: the API wants a key (set api_key in the inventory)")
        if r.status_code != 200:
            raise ProbeError(f"/v1/models answered {r.status_code}")
        try:
            return [m["id"] for m in r.json().get("data", [])]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ProbeError(f"/v1/models answered something that is not a model list: {r.text[:120]}") from exc

    async def version(self) -> str | None:
        try:
            r = await self._get("/version")
            return r.json().get("version") if r.status_code == 200 else None
        except (ProbeError, ValueError):
            return None

    async def health(self) -> int:
        return (await self._get("/health")).status_code

    async def get_json(self, path: str) -> tuple[int, dict[str, object]]:
        """GET path: (status, the JSON object answered, {} when it is none)."""
        r = await self._get(path)
        try:
            body = r.json()
        except ValueError:
            return r.status_code, {}
        return r.status_code, body if isinstance(body, dict) else {}

    async def metrics(self) -> str:
        r = await self._get("/metrics")
        if r.status_code != 200:
            raise ProbeError(f"/metrics answered {r.status_code}")
        return r.text

    async def complete(self, model: str, prompt: str = "Hello", max_tokens: int = 4, timeout: float = 60) -> str:
        try:
            r = await self._client.post(
                "/v1/completions",
                json={"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0},
                timeout=timeout,
            )
        except httpx.TimeoutException as exc:
            raise ProbeError(f"a completion got no answer within {timeout:.0f}s") from exc
        except httpx.HTTPError as exc:
            raise ProbeError(f"a completion failed: {type(exc).__name__}: {exc}") from exc
        if r.status_code != 200:
            raise ProbeError(f"a completion answered {r.status_code}: {r.text[:200]}")
        try:
            return str(r.json()["choices"][0]["text"])
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise ProbeError(f"a completion answered something unexpected: {r.text[:200]}") from exc

    async def chat(self, model: str, content: object, max_tokens: int = 16, timeout: float = 60) -> str:
        try:
            r = await self._client.post(
                "/v1/chat/completions",
                json={"model": model, "messages": [{"role": "user", "content": content}],
                      "max_tokens": max_tokens, "temperature": 0},
                timeout=timeout,
            )
        except httpx.HTTPError as exc:
            raise ProbeError(f"a chat completion failed: {type(exc).__name__}: {exc}") from exc
        if r.status_code != 200:
            raise ProbeError(f"a chat completion answered {r.status_code}: {r.text[:200]}")
        try:
            return str(r.json()["choices"][0]["message"]["content"])
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise ProbeError(f"a chat completion answered something unexpected: {r.text[:200]}") from exc

    async def state(self, served: str) -> ApiState:
        try:
            models = await self.models()
        except ProbeError as exc:
            return ApiState(False, [], None, exc.reason)
        version = await self.version()
        if served not in models:
            return ApiState(False, models, version, f"serves {models}, not {served!r}")
        return ApiState(True, models, version, "ok")


class RouterApi:
    """vllm-router's worker management (a fleet's router): which replica APIs it routes to."""

    def __init__(self, base_url: str, timeout: float = 30) -> None:
        self.base_url = base_url
        self._client = httpx.AsyncClient(base_url=base_url, timeout=timeout, trust_env=False,
                                         transport=TRANSPORT)

    async def __aenter__(self) -> RouterApi:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.aclose()

    async def _call(self, method: str, path: str, **kw: object) -> httpx.Response:
        try:
            return await self._client.request(method, path, **kw)  # type: ignore[arg-type]
        except httpx.ConnectError as exc:
            raise ProbeError(f"router {self.base_url}: connection refused (not listening yet)") from exc
        except httpx.TimeoutException as exc:
            raise ProbeError(f"router {self.base_url}{path}: no answer in time") from exc
        except httpx.HTTPError as exc:
            raise ProbeError(f"router {self.base_url}{path}: {type(exc).__name__}: {exc}") from exc

    async def health(self) -> int:
        return (await self._call("GET", "/health")).status_code

    async def workers(self) -> list[str]:
        r = await self._call("GET", "/list_workers")
        if r.status_code != 200:
            raise ProbeError(f"router {self.base_url}/list_workers answered {r.status_code}")
        try:
            urls = r.json().get("urls", [])
        except (ValueError, AttributeError) as exc:
            raise ProbeError(f"router {self.base_url}/list_workers: not a worker list: {r.text[:120]}") from exc
        return [str(u) for u in urls]

    async def add(self, url: str) -> None:
        r = await self._call("POST", "/add_worker", params={"url": url})
        if r.status_code != 200:
            raise ProbeError(f"router {self.base_url}: adding {url} answered {r.status_code}: {r.text[:200]}")

    async def remove(self, url: str) -> None:
        r = await self._call("POST", "/remove_worker", params={"url": url})
        if r.status_code != 200 and url in await self.workers():
            raise ProbeError(f"router {self.base_url}: removing {url} answered {r.status_code}: {r.text[:200]}")
