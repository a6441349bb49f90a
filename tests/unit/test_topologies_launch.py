"""The one `up` skeleton (orchestrator/deploy/) for every topology, against fake hosts that
act like a container runtime (run, ps, inspect, exec, logs, rm) and a fake HTTP side (the
served APIs, answering only while the containers behind them run): the launch order of each
topology, and the behaviours all topologies share - plan warnings logged, the no-op when
healthy and unchanged, a redeploy on drift with the replaced containers' log tails saved
(not on a first deploy, not when forced), a container that stops while waiting failing the
run at once, named, with everything removed.  The lab tests run the same code for real."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from structlog.testing import capture_logs

from orchestrator import config, probe
from orchestrator.cluster import Deployment, Session
from orchestrator.deploy import UpOptions, up
from orchestrator.errors import ChannelRefused, RankExited
from orchestrator.inventory import Inventory
from orchestrator.remote import Result

ROOT = Path(__file__).resolve().parents[2]
PLAYBOOKS = {"dp": (ROOT / "playbooks" / "cpu-lab-dp.yaml", 2),
             "ray": (ROOT / "playbooks" / "cpu-lab-ray.yaml", 2),
             "pd": (ROOT / "playbooks" / "pd" / "cpu-lab-pd.yaml", 3)}


class World:
    """Containers of all fake hosts, every command in order, and the HTTP side."""

    def __init__(self, dies: str | None = None) -> None:
        self.containers: dict[str, dict] = {}
        self.log: list[tuple[str, str]] = []
        self.dies = dies  # a role whose container exits as soon as it is started
        self.served = 0
        self.ray_serving = False

    def running(self, role: str | None = None) -> list[dict]:
        return [c for c in self.containers.values() if c["running"]
                and (role is None or c["labels"]["orch.role"] == role)]

    def ray_nodes(self) -> int:
        return len([c for c in self.running() if c["labels"]["orch.role"].startswith("ray")])

    def api_up(self) -> bool:
        roles = {c["labels"]["orch.role"] for c in self.running()}
        if "ray-head" in roles:
            return self.ray_serving and self.ray_nodes() == 2
        return bool(roles) and not any(not c["running"] for c in self.containers.values())

    def http(self, req: httpx.Request) -> httpx.Response:
        if not self.api_up():
            raise httpx.ConnectError("refused", request=req)
        path = req.url.path
        if path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "tiny"}]})
        if path == "/version":
            return httpx.Response(200, json={"version": "0.32.0"})
        if path in ("/health", "/healthcheck"):
            return httpx.Response(200, json={"status": "ok", "prefill_instances": 1,
                                             "decode_instances": 1})
        if path == "/metrics":
            n = len([c for c in self.running() if c["labels"]["orch.role"] in ("head", "headless")])
            lines = [f'vllm:request_success_total{{engine="{e}",model_name="tiny"}} '
                     f'{(self.served + n - 1 - e) // max(n, 1)}' for e in range(max(n, 1))]
            return httpx.Response(200, text="\n".join(lines) + "\n")
        if path == "/v1/completions":
            self.served += 1
            return httpx.Response(200, json={"choices": [{"text": " Paris."}]})
        return httpx.Response(404)


class FakeHost:
    def __init__(self, name: str, world: World) -> None:
        self.name, self.world = name, world

    async def open_unix(self, path, timeout=10):  # type: ignore[no-untyped-def]
        raise ChannelRefused(self.name, f"no {path} here: the CLI fallback is what this fakes")

    async def sh(self, script, **kw):  # type: ignore[no-untyped-def]
        return await self.run(["sh", "-c", script], **kw)

    async def run(self, argv, *, timeout=120, check=True, merge=False, input=None):  # type: ignore[no-untyped-def]
        w = self.world
        a = list(argv)
        if a[0] != "podman":
            w.log.append((self.name, " ".join(a[:2])))
            return Result(0, "", "")
        verb = a[1]
        if verb == "run":
            labels = dict(x.split("=", 1) for x in a[a.index("--label") + 1::2]
                          if "=" in x and x.startswith("orch."))
            cid = f"id{len(w.log)}"
            w.containers[cid] = {"name": a[a.index("--name") + 1], "labels": labels, "node": self.name,
                                 "running": labels["orch.role"] != w.dies}
            w.log.append((self.name, f"run {labels['orch.role']}"))
            return Result(0, cid + "\n", "")
        if verb == "ps":
            want = dict(f.split("=", 1)[1].split("=", 1) for f in a if f.startswith("label="))
            ids = [i for i, c in w.containers.items()
                   if c["node"] == self.name and all(c["labels"].get(k) == v for k, v in want.items())]
            return Result(0, "\n".join(ids), "")
        if verb == "inspect":
            out = [{"Id": i, "Name": w.containers[i]["name"],
                    "State": {"Status": "running" if w.containers[i]["running"] else "exited",
                              "ExitCode": 0 if w.containers[i]["running"] else 1},
                    "Config": {"Labels": w.containers[i]["labels"], "Image": "img"}} for i in a[2:]]
            return Result(0, json.dumps(out), "")
        if verb == "rm":
            for i in a[3:]:
                w.containers.pop(i, None)
            w.log.append((self.name, "rm"))
            return Result(0, "", "")
        if verb == "logs":
            return Result(0, f"last words of {a[-1]}\n", "")
        if verb == "exec" and a[2] == "-d":
            w.ray_serving = True
            w.log.append((self.name, f"exec serve {a[a.index('serve') - 1]} serve"))
            return Result(0, "", "")
        if verb == "exec" and a[-2:] == ["ray", "status"]:
            text = "Active:\n" + "".join(f" 1 node_{i:04x}\n" for i in range(w.ray_nodes())) + "Pending:\n"
            w.log.append((self.name, f"ray status {w.ray_nodes()}"))
            return Result(0, text, "")
        raise AssertionError(a)

    def close(self) -> None:
        pass


class FakeSession(Session):
    async def plan(self, tolerant: bool = False):  # type: ignore[no-untyped-def]
        return self.dep.plan()


def session(topology: str, world: World, env: dict[str, str] | None = None) -> FakeSession:
    playbook, n = PLAYBOOKS[topology]
    inv = Inventory.model_validate({
        "deployment": "t", "playbook": str(playbook), "image": "img", "runtime": "podman",
        "model": {"path": "/m", "served_name": "tiny"}, "overrides": {"env": env or {}},
        "nodes": [{"name": f"h{i}", "host": f"10.77.0.{11 + i}", "nic": f"e{i}", "ip": f"10.77.0.{11 + i}"}
                  for i in range(n)]})
    pb = config.load_playbook(playbook)
    dep = Deployment(playbook, inv, pb, config.load_profile(pb.profile, playbook))
    return FakeSession(dep, {f"h{i}": FakeHost(f"h{i}", world) for i in range(n)})  # type: ignore[dict-item]


@pytest.fixture(autouse=True)
def fast(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ORCH_STATE_DIR", str(tmp_path))
    real_sleep = asyncio.sleep

    async def no_sleep(_: float) -> None:
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", no_sleep)


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> World:
    w = World()
    monkeypatch.setattr(probe, "TRANSPORT", httpx.MockTransport(w.http))
    return w


def steps(world: World) -> list[tuple[str, str]]:
    return [(h, s) for h, s in world.log if s != "rm" and not s.startswith("ray status")]


LAUNCH_ORDER = {
    "dp": [("h0", "run head"), ("h1", "run headless")],
    "ray": [("h0", "run ray-head"), ("h1", "run ray-worker"), ("h0", "exec serve vllm serve")],
    "pd": [("h0", "mkdir -p"), ("h1", "mkdir -p"), ("h2", "mkdir -p"),
           ("h0", "run prefill"), ("h1", "run decode"), ("h2", "run proxy")],
}


@pytest.mark.parametrize("topology", ["dp", "ray", "pd"])
def test_launch_order_then_ready(topology: str, world: World) -> None:
    s = session(topology, world)
    with capture_logs() as logs:
        res = asyncio.run(up(s, UpOptions(checks=False, timeout_s=10)))
    assert res.changed and res.answer == " Paris." and res.reason.endswith("no container")
    assert steps(world) == LAUNCH_ORDER[topology]
    if topology == "ray":  # the workers start once the head's GCS is up; serve once all joined
        joined = [st for _, st in world.log if st.startswith("ray status")]
        assert joined[0] == "ray status 1" and joined[-1] == "ray status 2"
    # every topology logs the plan's warnings (the lab's API binds 0.0.0.0 without a key)
    assert any(e["event"] == "plan" and "0.0.0.0" in e["warning"] for e in logs)
    # a first deploy has no replaced containers whose tails were worth keeping
    assert not any(e["event"].startswith("saved") for e in logs)


@pytest.mark.parametrize("topology", ["dp", "ray", "pd"])
def test_noop_then_drift_redeploys_and_keeps_the_replaced_tails(topology: str, world: World,
                                                                tmp_path: Path) -> None:
    asyncio.run(up(session(topology, world), UpOptions(checks=False, timeout_s=10)))
    before = dict(world.containers)
    n_log = len(world.log)
    again = asyncio.run(up(session(topology, world), UpOptions(checks=False, timeout_s=10)))
    assert not again.changed and again.reason.startswith("healthy and unchanged")
    assert world.containers == before
    assert not [st for _, st in world.log[n_log:] if st.startswith(("run", "rm", "mkdir"))]

    drifted = session(topology, world, env={"ORCH_TEST_DRIFT": "1"})
    with capture_logs() as logs:
        res = asyncio.run(up(drifted, UpOptions(checks=False, timeout_s=10)))
    assert res.changed and "drift" in res.reason
    assert set(world.containers).isdisjoint(before)
    saved = list((tmp_path / "deployments" / "t" / "replaced").glob("*/*.log"))
    assert {p.stem for p in saved} == {c["node"] for c in before.values()}
    assert any(e["event"] == "saved the replaced containers' log tails" for e in logs)


@pytest.mark.parametrize("topology", ["dp", "ray", "pd"])
def test_forced_redeploy_saves_no_tails(topology: str, world: World, tmp_path: Path) -> None:
    asyncio.run(up(session(topology, world), UpOptions(checks=False, timeout_s=10)))
    res = asyncio.run(up(session(topology, world), UpOptions(checks=False, force=True, timeout_s=10)))
    assert res.changed and res.reason == "forced"
    assert not (tmp_path / "deployments" / "t" / "replaced").exists()


DYING = {"dp": ("headless", r"rank on node h1 is exited"),
         "ray": ("ray-worker", r"rank on node h1 is exited"),
         "pd": ("decode", r"rank on node h1 \(decode\) is exited")}


@pytest.mark.parametrize("topology", ["dp", "ray", "pd"])
def test_a_container_that_stops_fails_named_and_everything_goes(topology: str, monkeypatch,
                                                                tmp_path: Path) -> None:
    role, message = DYING[topology]
    world = World(dies=role)
    monkeypatch.setattr(probe, "TRANSPORT", httpx.MockTransport(world.http))
    with pytest.raises(RankExited, match=message) as e:
        asyncio.run(up(session(topology, world), UpOptions(checks=False, timeout_s=10)))
    assert "last words of" in str(e.value)
    assert world.containers == {}
    assert list((tmp_path / "deployments" / "t" / "failed").glob("*/h1.log"))
    if topology == "ray":  # vllm serve is never started on an incomplete Ray cluster
        assert not any("exec serve" in st for _, st in world.log)
