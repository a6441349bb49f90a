"""The launch order of topologies ray and pd against fake hosts that act like a container
runtime (run, ps, inspect, exec, logs, rm): what starts when, what waits for what, and that a
failure removes everything.  The HTTP readiness is replaced; the lab tests run it for real."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from orchestrator import config
from orchestrator.cluster import Deployment, Session
from orchestrator.errors import ChannelRefused, RankExited
from orchestrator.inventory import Inventory
from orchestrator.remote import Result
from orchestrator.topologies import pd as pd_mod
from orchestrator.topologies import ray as ray_mod

ROOT = Path(__file__).resolve().parents[2]


class World:
    """Containers of all fake hosts, and every command in order."""

    def __init__(self, dies: str | None = None) -> None:
        self.containers: dict[str, dict] = {}
        self.log: list[tuple[str, str]] = []
        self.dies = dies  # a role whose container exits at once

    def ray_nodes(self) -> int:
        return sum(c["running"] and c["labels"]["orch.role"].startswith("ray") for c in self.containers.values())


class FakeHost:
    def __init__(self, name: str, world: World) -> None:
        self.name, self.world = name, world

    async def open_unix(self, path, timeout=10):  # type: ignore[no-untyped-def]
        raise ChannelRefused(self.name, f"no {path} here: the CLI fallback is what this fakes")

    async def run(self, argv, *, timeout=120, check=True, merge=False, input=None):  # type: ignore[no-untyped-def]
        w = self.world
        a = list(argv)
        if a[0] != "podman":
            w.log.append((self.name, " ".join(a[:2])))
            return Result(0, "", "")
        verb = a[1]
        if verb == "run":
            labels = dict(x.split("=", 1) for x in a[a.index("--label") + 1::2] if "=" in x and x.startswith("orch."))
            cid = f"id{len(w.containers)}"
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
        return self.dep.static_plan()


def session(playbook: Path, n: int, world: World) -> FakeSession:
    inv = Inventory.model_validate({
        "deployment": "t", "playbook": str(playbook), "image": "img", "runtime": "podman",
        "model": {"path": "/m", "served_name": "tiny"},
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


def test_ray_head_join_then_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    world = World()

    async def ready(s, plan, deadline, api_key):  # type: ignore[no-untyped-def]
        world.log.append(("-", "wait_ready"))
        return "answer"

    monkeypatch.setattr(ray_mod, "wait_ready", ready)
    s = session(ROOT / "playbooks" / "cpu-lab-ray.yaml", 2, world)
    res = asyncio.run(ray_mod.up_ray(s, checks=False, force=True))
    assert res.changed and res.answer == "answer"
    steps = [step for _, step in world.log if step != "rm"]
    assert steps == ["run ray-head", "ray status 1", "run ray-worker", "ray status 2",
                     "exec serve vllm serve", "wait_ready"]


def test_ray_worker_that_exits_fails_named_and_everything_goes(monkeypatch: pytest.MonkeyPatch) -> None:
    world = World(dies="ray-worker")
    s = session(ROOT / "playbooks" / "cpu-lab-ray.yaml", 2, world)
    with pytest.raises(RankExited, match="h1 is exited"):
        asyncio.run(ray_mod.up_ray(s, checks=False, force=True))
    assert world.containers == {}
    assert not any("exec serve" in step for _, step in world.log)


def test_pd_order_and_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    world = World()
    real_wait = pd_mod.wait_pd_ready

    async def ready(s, plan, deadline, api_key):  # type: ignore[no-untyped-def]
        world.log.append(("-", "ready"))
        return "answer"

    monkeypatch.setattr(pd_mod, "wait_pd_ready", ready)
    s = session(ROOT / "playbooks" / "pd" / "cpu-lab-pd.yaml", 3, world)
    res = asyncio.run(pd_mod.up_pd(s, checks=False, force=True))
    assert res.answer == "answer"
    steps = [(h, st) for h, st in world.log if st != "rm"]
    assert steps[:3] == [(f"h{i}", "mkdir -p") for i in range(3)]
    assert steps[3:] == [("h0", "run prefill"), ("h1", "run decode"), ("h2", "run proxy"), ("-", "ready")]
    # the real readiness wait: a decode container that stopped fails it at once, by name
    world2 = World(dies="decode")
    s2 = session(ROOT / "playbooks" / "pd" / "cpu-lab-pd.yaml", 3, world2)
    monkeypatch.setattr(pd_mod, "wait_pd_ready", real_wait)
    with pytest.raises(RankExited, match=r"h1 \(decode\) is exited"):
        asyncio.run(pd_mod.up_pd(s2, checks=False, force=True))
    assert world2.containers == {}
