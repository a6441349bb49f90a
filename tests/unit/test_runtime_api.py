"""runtime_api.RuntimeApi against a docker-compatible HTTP server on a local UNIX socket (the
stdlib's HTTP server, HTTP/1.1 keep-alive); the SSH channel is replaced by a plain
connection to that socket.  The real path (sshd's streamlocal channel to dockerd / podman's
service) is tested on the lab (tests/lab/test_keeper_lab.py)."""

from __future__ import annotations

import asyncio
import json
import socketserver
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from orchestrator.errors import ChannelRefused, RuntimeApiError
from orchestrator.runtime import parse_objects
from orchestrator.runtime_api import ApiUnavailable, RuntimeApi, ping_version, socket_path


class Engine:
    """What the fake runtime holds and saw."""

    def __init__(self) -> None:
        self.containers: dict[str, dict[str, Any]] = {}
        self.requests: list[str] = []
        self.connections = 0
        self.list_status = 200
        self.close_after_each = False  # says so (Connection: close)
        self.drop_after_each = False  # says keep-alive, then hangs up (a restarted runtime)
        self.vanish: set[str] = set()  # listed, then gone at inspect
        self.ping_headers = {"Server": "Libpod/4.3.1 (linux)", "Libpod-Api-Version": "4.3.1",
                             "Api-Version": "1.41"}
        self.ping_status = 200
        self.version_everywhere = True  # docker and podman: the version headers on every answer
        self.images: dict[str, str] = {}  # reference -> ID
        self.chunked = False  # bodies in chunks (Go's server does so for larger answers)


def inspect_obj(cid: str, labels: dict[str, str], status: str = "running") -> dict[str, Any]:
    return {"Id": cid, "Name": f"/c-{cid}", "RestartCount": 1,
            "State": {"Status": status, "Running": status == "running", "ExitCode": 0,
                      "StartedAt": "2026-12-03T10:00:00.123456789Z"},
            "Config": {"Labels": labels, "Image": "img:1"}}


def handler(engine: Engine) -> type[BaseHTTPRequestHandler]:
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            engine.connections += 1

        def log_message(self, *a: object) -> None:
            pass

        def address_string(self) -> str:  # UNIX sockets have no client address
            return "local"

        def reply(self, code: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            if engine.chunked:
                self.send_header("Transfer-Encoding", "chunked")
                half = len(data) // 2
                data = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (data[:half], data[half:]) if p)
                data += b"0\r\n\r\n"
            else:
                self.send_header("Content-Length", str(len(data)))
            for k, v in engine.ping_headers.items() if engine.version_everywhere else ():
                self.send_header(k, v)
            if engine.close_after_each:
                self.send_header("Connection", "close")
                self.close_connection = True
            if engine.drop_after_each:
                self.close_connection = True
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            engine.requests.append(self.path)
            url = urllib.parse.urlsplit(self.path)
            if url.path == "/_ping":
                self.send_response(engine.ping_status)
                for k, v in engine.ping_headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"OK")
                return None
            if url.path == "/images/json":  # podman: a name matches its pattern or ends with it
                want = json.loads(urllib.parse.parse_qs(url.query)["filters"][0])["reference"][0]
                return self.reply(200, [{"Id": iid, "RepoTags": [name]} for name, iid in engine.images.items()
                                        if name == want or name.endswith("/" + want)])
            if url.path.startswith("/images/") and url.path.endswith("/json"):
                ref = urllib.parse.unquote(url.path[len("/images/"):-len("/json")])
                if ref in engine.images:
                    return self.reply(200, {"Id": engine.images[ref], "RepoTags": [ref]})
                return self.reply(404, {"message": f"failed to find image {ref}: image not known"})
            if url.path == "/containers/json":
                if engine.list_status != 200:
                    return self.reply(engine.list_status, {"message": "page not found"})
                q = urllib.parse.parse_qs(url.query)
                want = json.loads(q["filters"][0])["label"]
                out = []
                for cid, c in engine.containers.items():
                    labels = c["Config"]["Labels"]
                    if all((w in labels) if "=" not in w else
                           labels.get(w.split("=", 1)[0]) == w.split("=", 1)[1] for w in want):
                        out.append({"Id": cid, "Names": [c["Name"]], "Labels": labels})
                return self.reply(200, out)
            parts = url.path.split("/")
            if len(parts) == 4 and parts[1] == "containers" and parts[3] == "json":
                cid = parts[2]
                if cid in engine.containers and cid not in engine.vanish:
                    return self.reply(200, engine.containers[cid])
                return self.reply(404, {"message": f"no such container: {cid}"})
            return self.reply(500, {"message": "boom"})
    return H


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[tuple[Engine, str]]:
    e = Engine()
    path = str(tmp_path / "docker.sock")
    srv = Server(path, handler(e))
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield e, path
    srv.shutdown()
    srv.server_close()


class LocalHost:
    """Host.open_unix without SSH: a direct connection to the local socket."""

    name = "n0"
    closed = False

    def __init__(self, refuse: bool = False) -> None:
        self.refuse = refuse
        self.opened = 0

    async def open_unix(self, path: str, timeout: float = 10):  # type: ignore[no-untyped-def]
        if self.refuse:
            raise ChannelRefused(self.name, f"sshd did not open {path}: open failed")
        self.opened += 1
        return await asyncio.open_unix_connection(path)


def labels(dep: str, node: str) -> dict[str, str]:
    return {"orch.deployment": dep, "orch.node": node, "orch.spec": "abc"}


def inspect_once(host: LocalHost, path: str, dep: str | None, node: str | None) -> list[dict]:
    async def go() -> list[dict]:
        api = RuntimeApi(host, path)  # type: ignore[arg-type]
        try:
            return await api.inspect_all(dep, node)
        finally:
            await api.aclose()
    return asyncio.run(go())


def test_lists_and_inspects_this_deployments_containers_on_one_kept_connection(engine) -> None:
    e, path = engine
    e.containers = {"a1": inspect_obj("a1", labels("core", "n0")),
                    "b2": inspect_obj("b2", labels("other", "n0")),
                    "c3": inspect_obj("c3", labels("core", "n1"), "exited")}
    host = LocalHost()

    async def go() -> tuple[list[dict], list[dict], list[dict]]:
        api = RuntimeApi(host, path)  # type: ignore[arg-type]
        try:
            return (await api.inspect_all("core", "n0"), await api.inspect_all(None, "n1"),
                    await api.inspect_all("core", None))
        finally:
            await api.aclose()

    mine, any_dep_n1, core_all = asyncio.run(go())
    assert [c["Id"] for c in mine] == ["a1"]
    assert [c["Id"] for c in any_dep_n1] == ["c3"]
    assert sorted(c["Id"] for c in core_all) == ["a1", "c3"]
    c = parse_objects(mine)[0]  # the same objects `docker inspect` prints
    assert (c.name, c.status, c.spec_hash, c.restarts) == ("c-a1", "running", "abc", 1)
    assert host.opened == 1 and e.connections == 1  # keep-alive: every request on one channel
    assert json.loads(urllib.parse.parse_qs(urllib.parse.urlsplit(e.requests[0]).query)["filters"][0]) \
        == {"label": ["orch.deployment=core", "orch.node=n0"]}


@pytest.mark.parametrize("how", ["close_after_each", "drop_after_each"])
def test_a_kept_connection_the_server_closed_is_replaced(engine, how: str) -> None:
    e, path = engine
    e.containers = {"a1": inspect_obj("a1", labels("core", "n0"))}
    setattr(e, how, True)
    host = LocalHost()

    async def go() -> list[list[dict]]:
        api = RuntimeApi(host, path)  # type: ignore[arg-type]
        try:
            return [await api.inspect_all("core", "n0") for _ in range(3)]
        finally:
            await api.aclose()

    assert [[c["Id"] for c in r] for r in asyncio.run(go())] == [["a1"]] * 3
    assert host.opened == e.connections >= 6  # list + inspect, each on a fresh connection


def test_unreachable_socket_and_foreign_api_mean_use_the_cli(engine) -> None:
    e, path = engine
    with pytest.raises(ApiUnavailable, match="open failed"):
        inspect_once(LocalHost(refuse=True), path, "core", "n0")
    e.list_status = 404
    with pytest.raises(ApiUnavailable, match="not a docker-compatible API"):
        inspect_once(LocalHost(), path, "core", "n0")


def test_errors_of_the_runtime_are_errors_not_a_fallback(engine) -> None:
    e, path = engine
    e.list_status = 500
    with pytest.raises(RuntimeApiError, match="HTTP 500"):
        inspect_once(LocalHost(), path, "core", "n0")


def test_a_container_removed_between_list_and_inspect_is_not_there(engine) -> None:
    e, path = engine
    e.containers = {"a1": inspect_obj("a1", labels("core", "n0")),
                    "a2": inspect_obj("a2", labels("core", "n0"))}
    e.vanish = {"a1"}
    got = inspect_once(LocalHost(), path, "core", "n0")
    assert [c["Id"] for c in got] == ["a2"]


def test_socket_path_defaults_and_off() -> None:
    assert socket_path("docker", None) == "/var/run/docker.sock"
    assert socket_path("podman", None) == "/run/podman/podman.sock"
    assert socket_path("docker", "/run/user/0/docker.sock") == "/run/user/0/docker.sock"
    assert socket_path("podman", "off") is None


def look_once(host: LocalHost, path: str, image: str):  # type: ignore[no-untyped-def]
    async def go():  # type: ignore[no-untyped-def]
        api = RuntimeApi(host, path)  # type: ignore[arg-type]
        try:
            return await api.look(image)
        finally:
            await api.aclose()
    return asyncio.run(go())


def test_look_answers_version_image_and_containers_on_one_connection(engine) -> None:
    e, path = engine
    e.images = {"quay.io/ascend/vllm-ascend:v0.11.0rc0": "sha256:" + "ab" * 32}
    e.containers = {"a1": inspect_obj("a1", labels("core", "n0")),
                    "b2": inspect_obj("b2", labels("other", "n1"))}
    host = LocalHost()
    look = look_once(host, path, "quay.io/ascend/vllm-ascend:v0.11.0rc0")
    assert look.version == "4.3.1"  # podman: `Server: Libpod/4.3.1`
    assert look.image_id == "sha256:" + "ab" * 32
    assert sorted(c["Id"] for c in look.containers) == ["a1", "b2"]  # any orch deployment
    assert host.opened == 1 and e.connections == 1
    # a registry/path:tag name from the list filtered to it (no inspect); the version from
    # the answers' headers: no /_ping
    assert e.requests[0].startswith("/images/json?filters=")
    assert e.requests[1].startswith("/containers/json?")
    assert not any(r.startswith("/images/quay.io") for r in e.requests)
    assert "/_ping" not in e.requests
    # docker names its version in `Server` too; an image the node lacks is None, not an error
    e.ping_headers = {"Server": "Docker/27.3.1 (linux)", "Api-Version": "1.47"}
    look = look_once(LocalHost(), path, "img:gone")
    assert (look.version, look.image_id) == ("27.3.1", None)


def test_look_asks_ping_when_no_answer_names_the_version(engine) -> None:
    e, path = engine
    e.version_everywhere = False
    look = look_once(LocalHost(), path, "img:gone")
    assert (look.version, look.image_id, look.containers) == ("4.3.1", None, [])
    assert e.requests[-1] == "/_ping" and len(e.requests) == 3
    e.list_status = 500  # the image's answer names it: the list's error stays in its field
    e.version_everywhere = True
    look = look_once(LocalHost(), path, "img:gone")
    assert look.version == "4.3.1" and isinstance(look.containers, RuntimeApiError)


def test_look_keeps_each_error_in_its_answer_and_a_foreign_socket_means_the_cli(engine) -> None:
    e, path = engine
    e.list_status = 500
    look = look_once(LocalHost(), path, "img:gone")
    assert look.version == "4.3.1" and look.image_id is None
    assert isinstance(look.containers, RuntimeApiError) and "HTTP 500" in str(look.containers)
    e.version_everywhere = False  # a foreign API: no version in its answers, 404 to /_ping
    e.list_status = 200
    e.ping_status = 404
    with pytest.raises(ApiUnavailable, match="not a docker-compatible API"):
        look_once(LocalHost(), path, "img:gone")
    with pytest.raises(ApiUnavailable, match="open failed"):
        look_once(LocalHost(refuse=True), path, "img:gone")


def test_version_from_ping_headers() -> None:
    assert ping_version({"server": "Libpod/5.2.0 (linux)"}) == "5.2.0"
    assert ping_version({"libpod-api-version": "4.3.1"}) == "4.3.1"
    assert ping_version({"api-version": "1.41"}) == ""  # an API version is not the engine's
    # other answers: only docker's or podman's own Server header names the engine
    assert ping_version({"server": "Docker/27.3.1 (linux)"}, engines_only=True) == "27.3.1"
    assert ping_version({"server": "BaseHTTP/0.6 Python/3.11"}, engines_only=True) == ""


def test_chunked_answers_on_a_kept_connection(engine) -> None:
    e, path = engine
    e.chunked = True
    e.images = {"img:1": "sha256:" + "cd" * 32}
    e.containers = {"a1": inspect_obj("a1", labels("core", "n0"))}
    host = LocalHost()
    look = look_once(host, path, "img:1")
    assert look.image_id == "sha256:" + "cd" * 32 and [c["Id"] for c in look.containers] == ["a1"]
    assert host.opened == 1 and e.connections == 1 and len(e.requests) == 3  # image, list, inspect


def test_image_lookup_by_the_filtered_list_only_for_an_exact_qualified_name(engine) -> None:
    """The list filtered by reference matches suffixes too (podman): its answer counts only
    where an entry carries the name exactly; short names, digests and misses are inspected,
    which resolves them as `run` does."""
    e, path = engine
    e.images = {"mirror.example/quay.io/ascend/vllm-ascend:v1": "sha256:" + "11" * 32,
                "localhost/x:1": "sha256:" + "22" * 32}
    look = look_once(LocalHost(), path, "quay.io/ascend/vllm-ascend:v1")  # only a longer name
    assert look.image_id is None
    assert [r.split("?")[0] for r in e.requests[:2]] == ["/images/json", "/images/quay.io/ascend/vllm-ascend:v1/json"]
    e.requests.clear()
    assert look_once(LocalHost(), path, "localhost/x:1").image_id == "sha256:" + "22" * 32
    assert e.requests[0].startswith("/images/json?") and not any(
        r.startswith("/images/localhost") for r in e.requests)
    for ref in ("x:1", "localhost/x", "localhost/x@sha256:" + "22" * 32, "library/x:1"):
        e.requests.clear()
        look_once(LocalHost(), path, ref)
        assert not e.requests[0].startswith("/images/json"), ref
