"""run_checks end to end through the Session seam: fake Hosts answer the gather and cross
scripts from a small simulated cluster (NICs, images, ports, a network with cuts and
firewalls); the Ascend probe and hccn_tool pings run for real against the fake NPU tools."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest

from orchestrator.cluster import Deployment, Session
from orchestrator.errors import ChannelRefused, CommandError, ConnectError
from orchestrator.hw import recorded_output
from orchestrator.hw.fakes import fake_npu_ip, render_fake_tools
from orchestrator.plan import NodeNet
from orchestrator.preflight import clean_stale, run_checks, runner
from orchestrator.preflight import scripts as S
from orchestrator.remote import Result
from orchestrator.render import print_report
from orchestrator.runtime import Look

NODES = ["h0", "h1", "h2"]
IMAGE_ID = "sha256:" + "ab" * 32
MODEL = "/models/qwen"


def sections(d: dict[str, tuple[str, int]]) -> str:
    return "".join(f"==== {k} ====\n{t}\n==== rc {rc} ====\n" for k, (t, rc) in d.items())


def ip_of(i: int) -> str:
    return f"10.0.0.{11 + i}"


@dataclass
class World:
    """The simulated cluster. Mutate the fields to inject faults."""

    nics: dict[str, str] = field(default_factory=lambda: {n: "eth0" for n in NODES})
    image: dict[str, str | None] = field(default_factory=lambda: {n: IMAGE_ID for n in NODES})
    model_bytes: dict[str, int | None] = field(default_factory=lambda: {n: 123456 for n in NODES})
    runtime: dict[str, bool] = field(default_factory=lambda: {n: True for n in NODES})
    listeners: dict[str, str] = field(default_factory=dict)  # node -> ss lines
    extra: dict[str, dict[str, tuple[str, int]]] = field(default_factory=dict)
    cut: set[tuple[str, str]] = field(default_factory=set)  # (from, to) pings lost
    blocked: set[tuple[str, int]] = field(default_factory=set)  # (from, port) connects dropped
    gpu: str | None = None
    faults: dict[str, dict[str, int]] = field(default_factory=dict)  # ascend fake faults
    bins: dict[str, Path] = field(default_factory=dict)
    calls: list[tuple[str, str, list[str]]] = field(default_factory=list)
    scripts: list[tuple[str, str]] = field(default_factory=list)  # (kind, script) as run
    delay: float = 0.0
    cross_hangs: set[str] = field(default_factory=set)  # nodes whose cross step times out
    listener_silent: set[str] = field(default_factory=set)  # their listeners never say "bound"
    events: list[tuple[str, str]] = field(default_factory=list)  # (node, what), in order
    files: dict[str, dict[str, str]] = field(default_factory=dict)  # node -> file -> content
    # how the runtime is asked: "api" (its socket answers), "refused" (sshd refuses the
    # channel: the `runtime` script asks the CLI), "off" (no API: the gather asks the CLI)
    api: str = "api"

    def execs(self) -> dict[str, int]:
        """How many execs each node ran (every script run on it counts)."""
        return {n: sum(1 for h, what in self.events if h == n and what.endswith("starts"))
                for n in NODES}

    def manifest(self, n: str) -> str:
        """The manifest script's output for the node's model directory."""
        if self.model_bytes[n] is None:
            return "orch-manifest: missing\n"
        files = {"model.safetensors": "w" * (self.model_bytes[n] or 0), "config.json": "{}",
                 **self.files.get(n, {})}
        rows = [f"{p}\t{len(c)}\t{hashlib.blake2b(c.encode()).hexdigest()}" for p, c in sorted(files.items())]
        total = sum(len(c) for c in files.values())
        return f"orch-manifest v1 {len(rows)} {total} 0\n" + "\n".join(rows) + "\n"

    def net(self, n: str) -> str:
        """The node's network facts (netinfo.FACTS_SCRIPT's output)."""
        i = NODES.index(n)
        addr = [{"ifname": "lo", "flags": ["LOOPBACK", "UP"],
                 "addr_info": [{"family": "inet", "local": "127.0.0.1"}]},
                {"ifname": self.nics[n], "flags": ["UP"], "operstate": "UP",
                 "addr_info": [{"family": "inet", "local": ip_of(i)}]}]
        return f"ssh=10.0.0.1 5000 {ip_of(i)} 22\n==== addr route\n{json.dumps(addr)}\n[]"

    def runtime_sections(self, n: str) -> dict[str, tuple[str, int]]:
        """What the runtime's CLI prints (the `runtime` script's sections)."""
        d = {
            "runtime info": ("27.3.1", 0),
            "image": (self.image[n], 0) if self.image[n] else (
                f"Error: No such image: {MODEL}", 1),
            "containers": ("[]", 0),
        }
        d.update({k: v for k, v in self.extra.get(n, {}).items() if k in d})
        return d

    def look(self, n: str) -> Look:
        """What the runtime's API answers: the same facts as its CLI."""
        d = self.runtime_sections(n)
        return Look(d["runtime info"][0], d["image"][0] if d["image"][1] == 0 else None,
                    json.loads(d["containers"][0]))

    def gather(self, n: str, script: str = "", args: list[str] | None = None) -> str:
        i = NODES.index(n)
        net = self.net(n)
        size = self.model_bytes[n]
        d = {
            "id": ("0", 0),
            "tools": ("python3 /usr/bin/python3\nbash /bin/bash", 0),
            "runtime path": ("/usr/bin/docker", 0) if self.runtime[n] else ("", 127),
            **(self.runtime_sections(n) if "run 'runtime info'" in script else {}),
            "net": (net, 0),
            "listeners": ("State Recv-Q Send-Q Local Address:Port Peer Address:Port Process\n"
                          f"LISTEN 0 128 {ip_of(i)}:22 0.0.0.0:* users:((\"sshd\",pid=9,fd=3))\n"
                          + self.listeners.get(n, ""), 0),
            "model": (f"bytes {size}\t{MODEL}", 0) if size else ("missing", 1),
            "disks": ("Filesystem 1024-blocks Used Available Capacity Mounted on\n"
                      "/dev/sda1 900000000 1000 800000000 1% /", 0),
            "shm": ("Filesystem 1024-blocks Used Available Capacity Mounted on\n"
                    "tmpfs 65000000 0 65000000 0% /dev/shm", 0),
            "procs": ("", 0),
            "shmfiles": ("", 0),
        }
        if args and args[4]:  # the model's manifest was asked for: it sizes the model too
            d["manifest"] = (self.manifest(n), 0)
            if size:
                d["model"] = (S.SIZED_BY_MANIFEST, 0)
        if self.gpu is not None:
            d["gpu"] = (self.gpu, 0)
        d.update({k: v for k, v in self.extra.get(n, {}).items()
                  if k in d or k not in self.runtime_sections(n)})
        if script and "run net netfacts" not in script:
            del d["net"]
        return sections(d)

    def cross(self, n: str, args: list[str]) -> str:
        out, hops = {}, []
        unanswered: dict[str, bool] = {}
        i = 0
        while i < len(args):
            op = args[i]
            if op == "P":
                ip = args[i + 1]
                to = NODES[int(ip.rsplit(".", 1)[1]) - 11]
                ok = (n, to) not in self.cut
                out[f"ping {ip}"] = ("1 packets transmitted, 1 received" if ok else
                                     "1 packets transmitted, 0 received", 0 if ok else 1)
                i += 2
            elif op == "T":  # a cut drops the connect too; a peer none of whose connects
                port = int(args[i + 2])  # was answered is pinged after them (scripts.conns)
                to = NODES[int(args[i + 1].rsplit(".", 1)[1]) - 11]
                ok = (n, port) not in self.blocked and (n, to) not in self.cut
                out[f"tcp {args[i + 1]} {port}"] = ("connected" if ok else "timeout", 0 if ok else 1)
                unanswered[args[i + 1]] = unanswered.get(args[i + 1], True) and not ok
                i += 4
            elif op == "L":
                port = int(args[i + 1])
                peers = [p for p in NODES if p != n and (p, port) not in self.blocked]
                out[f"listen {port}"] = ("bound python3\n" + "\n".join(
                    f"accepted {ip_of(NODES.index(p))}" for p in peers), 0)
                i += 4
            else:  # H dev ips: run for real against this node's fake hccn_tool
                hops += args[i:i + 3]
                i += 3
        for ip, silent in unanswered.items():
            if silent:
                to = NODES[int(ip.rsplit(".", 1)[1]) - 11]
                up = (n, to) not in self.cut
                out[f"ping {ip}"] = ("1 packets transmitted, 1 received" if up else
                                     "1 packets transmitted, 0 received", 0 if up else 1)
        text = sections(out)
        if hops:
            text += subprocess.run(["sh", "-c", S.cross_script(), "sh", *hops], capture_output=True,
                                   text=True, env={"PATH": f"{self.bins[n]}:/usr/bin:/bin"},
                                   timeout=60, check=True).stdout
        return text


class FakeHost:
    def __init__(self, name: str, world: World, sudo: bool = False) -> None:
        self.name = name
        self.world = world
        self.sudo = sudo
        self.target = SimpleNamespace(host=f"{name}.example", user="ops" if sudo else "root")

    async def run(self, argv, *, timeout=120, check=True, merge=False, input=None,  # noqa: A002
                  delay=None):
        script, args = argv[2], list(argv[4:])
        both = S.GATHER_MARK in script and S.CROSS_MARK in script  # one round trip (check_script)
        kind = ("gather" if S.GATHER_MARK in script else "cross" if S.CROSS_MARK in script
                else "clean" if S.CLEAN_MARK in script else "runtime" if S.RUNTIME_MARK in script
                else "manifest" if "orch-manifest" in script else "probe")
        if both:
            self.world.calls += [(self.name, "gather", args[:S.GATHER_NARGS]),
                                 (self.name, "cross", args[S.GATHER_NARGS:])]
        else:
            self.world.calls.append((self.name, kind, args))
        self.world.scripts.append((kind, script))
        self.world.events.append((self.name, "cross starts" if both else f"{kind} starts"))
        delay = self.world.delay if delay is None else delay
        if delay:
            await asyncio.sleep(delay)
        if self.sudo:
            return Result(1, "", "sudo: a password is required\n")
        if both and self.name in self.world.cross_hangs:
            raise CommandError(self.name, list(argv[:3]), None, f"timed out after {timeout:.0f}s")
        if both:
            return Result(0, self.world.gather(self.name, script, args[:S.GATHER_NARGS])
                          + self.world.cross(self.name, args[S.GATHER_NARGS:]), "")
        if kind == "gather":
            return Result(0, self.world.gather(self.name, script, args), "")
        if kind == "runtime":
            return Result(0, sections(self.world.runtime_sections(self.name)), "")
        if kind == "cross" and self.name in self.world.cross_hangs:
            raise CommandError(self.name, list(argv[:3]), None, f"timed out after {timeout:.0f}s")
        if kind == "cross":
            return Result(0, self.world.cross(self.name, args), "")
        if kind == "manifest":
            return Result(0, self.world.manifest(self.name), "")
        if kind == "clean":
            return Result(0, "removed /dev/shm/psm_dead\nkept /dev/shm/psm_live (in use)\n", "")
        return Result(0, subprocess.run(["sh", "-c", script], capture_output=True, text=True,  # noqa: ASYNC221
                                        env={"PATH": f"{self.world.bins[self.name]}:/usr/bin:/bin"},
                                        timeout=60).stdout, "")

    async def sh(self, script, **kw):
        return await self.run(["sh", "-c", script], **kw)

    async def start(self, argv):  # the cross script of a node that listens: read as it runs
        r = await self.run(argv, check=False, delay=0)
        ports = [a for i, a in enumerate(argv[4:]) if i and argv[4:][i - 1] == "L"]
        ready = "" if self.name in self.world.listener_silent else "".join(
            f"==== ready {p} ====\n==== rc 0 ====\n" for p in ports)
        return FakeProcess(self, ready, r, self.world.delay)

    async def open_unix(self, path, timeout):  # sshd refusing the channel to the socket
        self.world.calls.append((self.name, "api", [path]))
        raise ChannelRefused(self.name, f"open failed: {path}: connection refused")

    closed = False


class FakeProcess:
    """A listening node's cross script: its listeners say they are bound a moment after it
    starts, the rest of its output comes when it ends (after the World's delay)."""

    def __init__(self, host: FakeHost, ready: str, r: Result, delay: float) -> None:
        self.host, self.r, self.delay = host, r, delay
        self.parts = [ready.encode(), r.stdout.encode()]

    async def read(self, n=1 << 16):
        if not self.parts:
            return b""
        part = self.parts.pop(0)
        await asyncio.sleep(0.05 if len(self.parts) else self.delay)
        if part.startswith(b"==== ready"):
            self.host.world.events.append((self.host.name, "listeners bound"))
        if not self.parts:
            self.host.world.events.append((self.host.name, "cross ends"))
        return part or await self.read(n)

    async def wait(self, timeout=None):
        return self.r.rc

    def close(self):
        pass


class FakeSession(Session):
    """The Session, but the runtime's API answers from the World (mode "api") or is off."""

    world: World

    def runtime_api_possible(self, h):
        return self.world.api != "off" and super().runtime_api_possible(h)

    async def runtime_look(self, h, image):
        if self.world.api == "api":
            self.world.calls.append((h.name, "look", [image]))
            return self.world.look(h.name)
        return await super().runtime_look(h, image)


def deployment(tmp: Path, profile: str = "cpu", nics: dict[str, str] | None = None,
               tensor: int = 1, extra_pb: str = "", model: str = MODEL,
               ips: bool = True) -> Deployment:
    """Three nodes h0..h2; without `ips` their IPs are not in the inventory (found from the
    NICs: the cross ops are then only known after the gather, in a round trip of their own)."""
    (tmp / "playbooks").mkdir(exist_ok=True)
    (tmp / "playbooks" / "t.yaml").write_text(
        f"name: t\nprofile: {profile}\nvllm_version: '0.11.0'\ntopology: dp\n"
        f"parallel: {{tensor: {tensor}, data: 3, data_local: 1}}\nports: {{api: 8000, rpc: 13389}}\n"
        f"container: {{net_host: true, shm_size: 16g}}\n{extra_pb}")
    nodes = "".join(f"  - {{name: {n}, host: {n}.example, nic: {(nics or {}).get(n, 'eth0')}"
                    + (f", ip: {ip_of(i)}" if ips else "") + "}\n" for i, n in enumerate(NODES))
    (tmp / "inv.yaml").write_text(f"deployment: t\nplaybook: t\nruntime: docker\nimage: img:1\n"
                                  f"model: {{path: {model}}}\nnodes:\n{nodes}")
    return Deployment.load(tmp / "inv.yaml", with_secrets=False)


def session(dep: Deployment, world: World, unreachable: dict[str, BaseException] | None = None,
            sudo: set[str] = frozenset()) -> Session:  # type: ignore[assignment]
    hosts = {n: FakeHost(n, world, n in sudo) for n in NODES if n not in (unreachable or {})}
    s = FakeSession(dep, hosts, dict(unreachable or {}))  # type: ignore[arg-type]
    s.world = world
    return s


def check(dep: Deployment, world: World, skip: frozenset[str] = frozenset(), **kw):
    return asyncio.run(run_checks(session(dep, world, **kw), dep.plan(), skip))


def not_passing(report) -> set[tuple[str, str, str]]:
    return {(r.node, r.check, r.status) for r in report.results if r.status != "pass"}


def fails(report) -> set[tuple[str, str]]:
    return {(r.node, r.check) for r in report.results if r.status == "fail"}


# ---------------------------------------------------------------------------- CPU


def test_healthy_cluster_passes_every_check(tmp_path):
    rep = check(deployment(tmp_path), World())
    assert not_passing(rep) == set()
    checks = {n: {r.check for r in rep.results if r.node == n} for n in NODES}
    assert checks["h0"] - checks["h1"] == {"ports.free"}
    assert {"ssh.reachable", "ssh.root", "runtime.present", "runtime.daemon", "net.nic",
            "net.ping", "ports.reachable", "image.present", "image.same", "model.present",
            "model.same", "model.identical", "shm.size", "disk.free", "stale.containers", "stale.processes",
            "stale.shm"} == checks["h1"]
    j = rep.to_json()
    assert j["ok"] is True and set(j["nodes"]) == set(NODES)  # type: ignore[arg-type]
    assert j["nodes"]["h0"]["ports.free"]["status"] == "pass"  # type: ignore[index]


def test_up_path_without_inventory_ips_uses_the_plans_ips_in_one_round_trip(tmp_path):
    """`orch up` plans with the facts the session read (no `ip:` in the inventory): the
    preflight takes the IPs from that plan and carries the cross ops in the gather's exec."""
    dep = deployment(tmp_path, ips=False)
    world = World()
    s = session(dep, world)
    s.facts_seen = {n: world.net(n) for n in NODES}
    fleet = dep.plan({n: NodeNet("eth0", ip_of(i)) for i, n in enumerate(NODES)})
    rep = asyncio.run(run_checks(s, fleet, frozenset()))
    assert not rep.failed and rep.get("h1", "ports.reachable").status == "pass"  # type: ignore[union-attr]
    execs = world.execs()
    assert execs == {n: 1 for n in NODES}


def test_network_facts_the_session_read_are_not_gathered_again(tmp_path):
    dep = deployment(tmp_path)
    world = World(nics={"h0": "eth0", "h1": "eth7", "h2": "eth0"})  # what a new look would see
    s = session(dep, world)
    s.facts_seen = {n: World().net(n) for n in NODES}  # read while planning: eth0 everywhere
    rep = asyncio.run(run_checks(s, dep.plan(), frozenset()))
    assert rep.get("h1", "net.nic").status == "pass"  # type: ignore[union-attr]
    # without them the node's own facts are gathered (and h1's NIC is not the inventory's)
    rep = check(dep, world)
    assert ("h1", "net.nic") in fails(rep)


@pytest.mark.parametrize("ips", [True, False])
def test_nodes_run_concurrently_in_one_round_trip_or_two(tmp_path, ips):
    world = World(delay=0.4)
    t0 = time.monotonic()
    rep = check(deployment(tmp_path, ips=ips), world)
    took = time.monotonic() - t0
    assert not rep.failed
    per_node = {n: sorted(k for h, k, _ in world.calls if h == n) for n in NODES}
    # the gather (the model's manifest one of its sections), the runtime's API beside it and
    # the cross ops: in the gather's exec when every IP is in the plan, else in a second one
    assert all(v == ["cross", "gather", "look"] for v in per_node.values()), per_node
    execs = world.execs()
    assert execs == {n: 1 if ips else 2 for n in NODES}
    assert all(a[4] for _, k, a in world.calls if k == "gather")
    assert took < 1.5, f"{took:.2f}s: nodes were checked one after the other"


def test_connecting_nodes_start_once_the_heads_listeners_are_bound(tmp_path):
    world = World(delay=0.3)
    rep = check(deployment(tmp_path), world)
    assert not rep.failed
    ev = [e for e in world.events if e[1] in ("cross starts", "listeners bound")]
    # h0 (the head) listens; h1 and h2 only connect to it: they start after its listeners are
    # bound, not at once with it (when a listener can start seconds late under load)
    assert ev[:2] == [("h0", "cross starts"), ("h0", "listeners bound")], ev
    assert sorted(ev[2:]) == [("h1", "cross starts"), ("h2", "cross starts")], ev


def test_a_listener_that_never_says_bound_delays_its_peers_only_by_ready_wait(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "READY_WAIT", 0.2)
    world = World(delay=0.6, listener_silent={"h0"})
    rep = check(deployment(tmp_path), world)
    assert not rep.failed  # the fake's connects succeed anyway
    ev = [e for e in world.events if e[1] in ("cross starts", "cross ends", "listeners bound")]
    # h1 and h2 gave up waiting after READY_WAIT and started while h0's script still ran
    assert ev[0] == ("h0", "cross starts") and ev[-1] == ("h0", "cross ends"), ev
    assert sorted(ev[1:3]) == [("h1", "cross starts"), ("h2", "cross starts")], ev


@pytest.mark.parametrize("api", ["refused", "off"])
def test_without_the_runtime_api_the_cli_gives_the_same_verdicts(tmp_path, api):
    dep = deployment(tmp_path)
    old = [{"Id": "1" * 64, "Name": "/orch-t-h1-old", "State": {"Status": "exited"},
            "Config": {"Labels": {"orch.deployment": "t", "orch.node": "h1", "orch.spec": "0ld"}}}]
    verdicts = {}
    for mode in ("api", api):
        w = World(api=mode, extra={"h1": {"containers": (json.dumps(old), 0)}})
        w.image["h2"] = None
        rep = check(dep, w)
        verdicts[mode] = {(r.node, r.check, r.status) for r in rep.results}
        kinds = {n: [k for h, k, _ in w.calls if h == n] for n in NODES}
        cli_in_gather = ["run 'runtime info'" in x for k, x in w.scripts if k == "gather"]
        if mode == "api":
            assert sorted(kinds["h0"]) == ["cross", "gather", "look"] and not any(cli_in_gather)
        elif mode == "refused":  # sshd refused the socket: the CLI's sections in an exec of their own
            assert all(sorted(v) == ["api", "cross", "gather", "runtime"] for v in kinds.values()), kinds
            assert not any(cli_in_gather)
        else:  # the API is off: the CLI's sections are part of the gather
            assert all(sorted(v) == ["cross", "gather"] for v in kinds.values()) and all(cli_in_gather)
    assert verdicts["api"] == verdicts[api]
    assert ("h2", "image.present", "fail") in verdicts[api]
    assert ("h1", "stale.containers", "warn") in verdicts[api]


def test_image_ids_from_the_api_and_from_podmans_cli_compare_equal(tmp_path):
    w = World(api="off")
    w.image = {"h0": IMAGE_ID, "h1": IMAGE_ID.removeprefix("sha256:"), "h2": IMAGE_ID}
    assert not_passing(check(deployment(tmp_path), w)) == set()


def test_who_holds_a_port_is_asked_only_on_nodes_with_planned_ports(tmp_path):
    w = World()
    check(deployment(tmp_path), w)
    ports = {h: a[3] for h, k, a in w.calls if k == "gather"}
    assert ports == {"h0": "8000 13389", "h1": "", "h2": ""}
    # the script: `ss -p` (every process's fds) only when a planned port is taken
    script = S.gather_script("cpu")
    assert "ss -ltn)" in script and 'case $out in *":$p "*) ss -ltnp' in script


def test_missing_nic_fails_only_that_node(tmp_path):
    world = World()
    rep = check(deployment(tmp_path, nics={"h1": "bogus0"}), world)
    assert not_passing(rep) == {("h1", "net.nic", "fail")}
    assert "bogus0 does not exist" in rep.get("h1", "net.nic").reason  # type: ignore[union-attr]
    assert rep.get("h1", "net.ping").status == "pass"  # type: ignore[union-attr]
    # the cross ops ran in the gather's exec with h1's inventory IP; made again from the facts
    # (no IP resolved for h1: nobody pings it) they differ, so round 2 ran with those
    execs = world.execs()
    assert execs == {"h0": 2, "h1": 2, "h2": 2}
    last = {n: [a for h, k, a in world.calls if h == n and k == "cross"][-1] for n in NODES}
    assert ip_of(1) not in last["h0"] and ip_of(1) in [a for h, k, a in world.calls
                                                       if h == "h0" and k == "cross"][0]


@pytest.mark.parametrize("ips", [True, False])
def test_rpc_port_taken_on_head(tmp_path, ips):
    world = World(listeners={"h0": 'LISTEN 0 100 0.0.0.0:13389 0.0.0.0:* users:(("python3",pid=4242,fd=3))\n'})
    rep = check(deployment(tmp_path, ips=ips), world)
    assert fails(rep) == {("h0", "ports.free")}
    assert "13389" in rep.get("h0", "ports.free").reason and "4242" in rep.get("h0", "ports.free").reason  # type: ignore[union-attr]
    assert rep.get("h0", "ports.reachable").status == "warn"  # type: ignore[union-attr]
    listened = [a for h, k, a in world.calls if h == "h0" and k == "cross"][0]
    # the ops of a round trip of their own know the port is taken: no listener there; in the
    # gather's exec they do not yet (the listener fails on it), and the verdicts are the same
    assert ("13389" not in listened) is (not ips) and "8000" in listened


def test_rpc_port_blocked_on_head_fails_the_head(tmp_path):
    world = World(blocked={("h1", 13389), ("h2", 13389)})
    rep = check(deployment(tmp_path), world)
    assert fails(rep) == {("h0", "ports.reachable")}
    r = rep.get("h0", "ports.reachable")
    assert "13389" in r.reason and "h1" in r.reason and "timed out" in r.reason  # type: ignore[union-attr]


def test_one_peer_that_cannot_connect_is_the_one_at_fault(tmp_path):
    rep = check(deployment(tmp_path), World(blocked={("h2", 8000)}))
    assert fails(rep) == {("h2", "ports.reachable")}


def test_node_nobody_can_ping_is_the_one_at_fault(tmp_path):
    rep = check(deployment(tmp_path), World(cut={("h0", "h2"), ("h1", "h2")}))
    assert fails(rep) == {("h2", "net.ping")}
    # h1 pings no peer it connects to (the head): its connects time out, the ping after them
    # says the head is not reachable from h1 at all, and h2 reaches it: h1 is at fault
    rep = check(deployment(tmp_path), World(cut={("h1", "h0")}))
    assert fails(rep) == {("h1", "net.ping"), ("h1", "ports.reachable")}
    assert "h1 cannot reach h0" in rep.get("h1", "net.ping").reason  # type: ignore[union-attr]


@pytest.mark.parametrize("ips", [True, False])
def test_cross_step_that_hangs_is_a_failure_not_a_silent_pass(tmp_path, ips):
    rep = check(deployment(tmp_path, ips=ips), World(cross_hangs={"h2"}))
    # in the gather's exec, the node's whole round trip did not finish; in a round trip of
    # their own, the first cross-node check fails
    check_name = "ssh.reachable" if ips else "net.ping"
    assert ("h2", check_name) in fails(rep)
    assert "timed out" in rep.get("h2", check_name).reason  # type: ignore[union-attr]


def test_image_missing_and_image_different(tmp_path):
    w = World()
    w.image["h1"] = None
    rep = check(deployment(tmp_path), w)
    assert not_passing(rep) == {("h1", "image.present", "fail")}
    w.image["h1"] = IMAGE_ID
    w.image["h2"] = "sha256:" + "cd" * 32
    rep = check(deployment(tmp_path), w)
    assert not_passing(rep) == {("h2", "image.same", "fail")}


def test_model_missing_everywhere_and_model_different(tmp_path):
    w = World(model_bytes={n: None for n in NODES})
    rep = check(deployment(tmp_path), w)
    assert not_passing(rep) == {(n, "model.present", "fail") for n in NODES}
    assert not any(r.check == "model.same" for r in rep.results)
    w.model_bytes = {"h0": 100, "h1": 99, "h2": 100}
    assert not_passing(check(deployment(tmp_path), w)) == {("h1", "model.same", "fail"),
                                                           ("h1", "model.identical", "fail")}


def test_model_identical_names_the_file_that_differs(tmp_path):
    w = World()
    w.files["h1"] = {"config.json": "{ }"}  # one byte more in one file on h1
    rep = check(deployment(tmp_path), w)
    assert ("h1", "model.identical", "fail") in not_passing(rep)
    r = rep.get("h1", "model.identical")
    assert "config.json" in r.reason and "model.safetensors" not in r.reason and "orch stage" in r.fix  # type: ignore[union-attr]
    w.files["h1"] = {"config.json": "[]"}  # same size, other bytes: only the hashes tell
    rep = check(deployment(tmp_path), w)
    assert not_passing(rep) == {("h1", "model.identical", "fail")}
    assert rep.get("h0", "model.identical").status == "pass"  # type: ignore[union-attr]
    before = len(w.calls)
    rep = check(deployment(tmp_path), w, skip=frozenset({"model.identical"}))
    gathers = [a for _, k, a in w.calls[before:] if k == "gather"]
    assert len(gathers) == 3 and not any(a[4] for a in gathers)  # skipped: nothing hashed


def test_hub_model_id_is_not_a_path(tmp_path):
    w = World(extra={n: {"model": ("not a path", 0)} for n in NODES})
    rep = check(deployment(tmp_path, model="Qwen/Qwen3-8B"), w)
    assert not_passing(rep) == set()
    assert not any(r.check == "model.same" for r in rep.results)


def test_runtime_missing_is_one_failure(tmp_path):
    w = World()
    w.runtime["h2"] = False
    rep = check(deployment(tmp_path), w)
    assert not_passing(rep) == {("h2", "runtime.present", "fail")}
    assert {r.check for r in rep.results if r.node == "h2"}.isdisjoint(
        {"runtime.daemon", "image.present", "image.same", "stale.containers"})


def test_unreachable_node(tmp_path):
    dep = deployment(tmp_path)
    w = World()
    rep = check(dep, w, unreachable={"h2": ConnectError("h2", "cannot connect to h2.example:22: refused")})
    assert not_passing(rep) == {("h2", "ssh.reachable", "fail")}
    assert "refused" in rep.get("h2", "ssh.reachable").reason  # type: ignore[union-attr]
    assert all(ip_of(2) not in a for _, k, a in w.calls if k == "cross")


def test_sudo_needing_a_password(tmp_path):
    rep = check(deployment(tmp_path), World(), sudo={"h1"})
    assert ("h1", "ssh.root", "fail") in not_passing(rep)
    assert "sudo" in rep.get("h1", "ssh.root").reason  # type: ignore[union-attr]
    assert rep.get("h1", "ssh.reachable").status == "pass"  # type: ignore[union-attr]


def test_a_node_pings_no_peer_it_connects_to(tmp_path):
    """The DP ranks connect to the head's ports: that probes the head, so they ping only their
    ring neighbours, and the head's net.ping counts the answered connects."""
    w = World()
    rep = check(deployment(tmp_path), w)
    assert not rep.failed
    pinged = {n: [a[i + 1] for i in range(len(a)) if a[i] == "P"] for n, k, a in w.calls if k == "cross"}
    assert pinged == {"h0": [ip_of(1), ip_of(2)], "h1": [ip_of(2)], "h2": [ip_of(1)]}
    assert rep.get("h2", "net.ping").reason == "reaches h0, h1"  # type: ignore[union-attr]


def test_skip_checks_by_name_and_prefix(tmp_path):
    w = World(cut={("h1", "h2")})  # a ring peer's: only a ping would see it
    rep = check(deployment(tmp_path), w, skip=frozenset({"net.ping", "stale"}))
    skipped = {(r.node, r.check) for r in rep.results if r.reason == "skipped by --skip-checks"}
    assert skipped == {(n, c) for n in NODES for c in ("net.ping", "stale.containers",
                                                       "stale.processes", "stale.shm")}
    assert all(r.status == "warn" for r in rep.results if (r.node, r.check) in skipped)
    assert not rep.failed
    assert all("P" not in a for _, k, a in w.calls if k == "cross")  # no pings were sent


def test_stale_state(tmp_path):
    dep = deployment(tmp_path)
    spec = dep.plan().groups[0].node("h1").spec_hash
    cid = "e" * 64
    ctrs = [
        {"Id": "1" * 64, "Name": "/orch-t-h1-old", "State": {"Status": "exited"},
         "Config": {"Labels": {"orch.deployment": "t", "orch.node": "h1", "orch.spec": "0ld"}}},
        {"Id": cid, "Name": "/orch-other-h1-x", "State": {"Status": "running"},
         "Config": {"Labels": {"orch.deployment": "other", "orch.node": "h1", "orch.spec": spec}}},
    ]
    w = World(extra={
        "h1": {"containers": (json.dumps(ctrs), 0),
               "procs": (f"77\t/system.slice/docker-{cid}.scope \tVLLM::EngineCore_DP0\n", 0)},
        "h2": {"procs": ("4242\t/user.slice/session-1.scope \tvllm serve /models/qwen\n", 0),
               "shmfiles": ("free 1048576 /dev/shm/psm_dead\nheld 10 /dev/shm/psm_live\n", 0)},
    })
    rep = check(dep, w)
    assert not_passing(rep) == {("h1", "stale.containers", "warn"), ("h1", "stale.processes", "warn"),
                                ("h2", "stale.processes", "fail"), ("h2", "stale.shm", "warn")}
    r = rep.get("h1", "stale.containers")
    assert "orch-t-h1-old" in r.reason and "other" in r.reason and "orch down" in r.fix  # type: ignore[union-attr]
    assert "orch-other-h1-x" in rep.get("h1", "stale.processes").reason  # type: ignore[union-attr]
    assert "4242" in rep.get("h2", "stale.processes").fix  # type: ignore[union-attr]
    assert "psm_dead" in rep.get("h2", "stale.shm").reason  # type: ignore[union-attr]


@pytest.mark.parametrize("ips", [True, False])
def test_running_deployment_holding_its_own_ports_is_not_a_failure(tmp_path, ips):
    dep = deployment(tmp_path, ips=ips)
    nets = None if ips else {n: NodeNet("eth0", ip_of(i)) for i, n in enumerate(NODES)}
    spec = dep.plan(nets).groups[0].node("h0").spec_hash  # as the check plans it
    cid = "f" * 64
    ctr = [{"Id": cid, "Name": "/orch-t-h0-cur", "State": {"Status": "running"},
            "Config": {"Labels": {"orch.deployment": "t", "orch.node": "h0", "orch.spec": spec}}}]
    w = World(
        listeners={"h0": 'LISTEN 0 100 10.0.0.11:13389 0.0.0.0:* users:(("vllm",pid=500,fd=3))\n'},
        extra={"h0": {"containers": (json.dumps(ctr), 0),
                      "procs": (f"500\t/docker/{cid} \tvllm serve /models/qwen\n", 0)}})
    rep = check(dep, w)
    assert not_passing(rep) == set()
    assert "held by this deployment" in rep.get("h0", "ports.free").reason  # type: ignore[union-attr]
    head_ops = [a for h, k, a in w.calls if h == "h0" and k == "cross"][0]
    peer_ops = [a for h, k, a in w.calls if h == "h1" and k == "cross"][0]
    # peers reach the running vLLM itself (the head does not listen there: it knows, or, in
    # the gather's exec, its listener finds the port taken)
    assert ("13389" not in head_ops) is (not ips) and "13389" in peer_ops
    assert rep.get("h0", "stale.containers").status == "pass"  # type: ignore[union-attr]
    assert rep.get("h0", "stale.processes").status == "pass"  # type: ignore[union-attr]


# -------------------------------------------------------------------------- Ascend

needs_sh = pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX sh")


def ascend_world(tmp: Path, faults: dict[str, dict[str, int]] | None = None) -> World:
    w = World()
    for i, n in enumerate(NODES):
        peers = [fake_npu_ip(j, d) for j in range(len(NODES)) if j != i for d in range(8)]
        b = tmp / f"bin-{n}"
        b.mkdir(exist_ok=True)
        for name, text in render_fake_tools((faults or {}).get(n), 8, i, peers).items():
            (b / name).write_text(text)
            (b / name).chmod(0o755)
        w.bins[n] = b
    return w


@needs_sh
def test_ascend_healthy(tmp_path):
    rep = check(deployment(tmp_path, "ascend-a2", tensor=8), ascend_world(tmp_path))
    # the fakes ship no driver version.info: the only thing not passing
    assert not_passing(rep) == {(n, "driver.same", "warn") for n in NODES}
    for n in NODES:
        assert rep.get(n, "hccn.ping").status == "pass"  # type: ignore[union-attr]
        assert rep.get(n, "npu.count").reason == "8 NPUs, need 8"  # type: ignore[union-attr]


@needs_sh
def test_ascend_link_down_on_one_npu(tmp_path):
    w = ascend_world(tmp_path, {"h1": {"link_down": 3}})
    rep = check(deployment(tmp_path, "ascend-a2", tensor=8), w)
    assert fails(rep) == {("h1", "hccn.link")}
    assert "NPU 3 link DOWN" in rep.get("h1", "hccn.link").reason  # type: ignore[union-attr]
    pinged = [a for h, k, a in w.calls if k == "cross" and h != "h1"]
    assert all(fake_npu_ip(1, 3) not in " ".join(a) for a in pinged)  # nobody pings the dead NPU


@needs_sh
def test_ascend_tls_mismatch_on_one_node(tmp_path):
    rep = check(deployment(tmp_path, "ascend-a2", tensor=8),
                ascend_world(tmp_path, {"h2": {"tls": 1}}))
    assert fails(rep) == {("h2", "hccn.tls")}
    assert "most nodes have it disabled" in rep.get("h2", "hccn.tls").reason  # type: ignore[union-attr]


@needs_sh
def test_ascend_too_few_npus_for_the_plan(tmp_path):
    w = ascend_world(tmp_path)
    dep = deployment(tmp_path, "ascend-a2", tensor=8)
    for n in NODES:  # a 4-NPU node: the fake prints 4 NPUs
        (w.bins[n] / "npu-smi").write_text(render_fake_tools(None, 4, NODES.index(n))["npu-smi"])
    assert ("h0", "npu.count") in fails(check(dep, w))


# ----------------------------------------------------------------------------- GPU


def test_nvidia_nodes(tmp_path):
    w = World(gpu=recorded_output("nvidia_smi_h100x8"))
    dep = deployment(tmp_path, "nvidia", tensor=8)
    assert not_passing(check(dep, w)) == set()
    w.extra["h2"] = {"gpu": (recorded_output("nvidia_smi_h100x4_busy"), 0)}
    bad = not_passing(check(dep, w))
    assert ("h2", "gpu.count", "fail") in bad and all(n == "h2" for n, _, _ in bad - {
        (n, "driver.same", "warn") for n in NODES})


# ------------------------------------------------------------------- clean / print


def test_clean_stale_returns_what_it_removed(tmp_path):
    dep = deployment(tmp_path)
    got = asyncio.run(clean_stale(session(dep, World()), dep.plan()))
    assert got == {n: ["/dev/shm/psm_dead"] for n in NODES}


def test_print_report(tmp_path):
    from orchestrator.render import console

    rep = check(deployment(tmp_path, nics={"h1": "bogus0"}), World(),
                skip=frozenset({"stale.shm"}))
    with console.capture() as cap:
        print_report(rep)
    text = cap.get()
    assert "net.nic" in text and "h1" in text and "bogus0" in text and "fix:" in text
    assert "skipped: stale.shm" in text and "1 failed" in text


def test_print_report_counts_per_check_when_the_nodes_do_not_fit(tmp_path):
    from orchestrator.render import console

    rep = check(deployment(tmp_path, nics={"h1": "bogus0"}), World())
    with console.capture() as cap:
        old, console.width = console.width, 38
        try:
            print_report(rep)
        finally:
            console.width = old
    text = cap.get()
    assert "3 nodes" in text
    rows = text.splitlines()
    i = next(i for i, ln in enumerate(rows) if "net.nic" in ln and "│" in ln)
    assert "FAIL 1 (h1)" in rows[i] and "pass 2" in rows[i] + rows[i + 1], text
    assert "pass 3" in text  # ssh.reachable passed on every node
    assert any("ports.free" in ln and "pass 1" in ln and "· 2" in ln for ln in rows)  # head only
    assert "h1 net.nic" in text  # the failure's own line still names node and check
