"""A deployment and its session with the nodes: connect to all, learn their network facts,
plan, and list/remove this deployment's containers.  Shared by up, status, down, check,
logs, smoke, bench, stage and the keeper.

    dep = Deployment.load(path)                       # validated, nothing contacted
    async with connected(dep, require_all=False) as s:
        fleet = await s.plan()                        # NIC/IP resolved on the hosts
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from . import config, netinfo, runtime, runtime_api, secrets
from .errors import CommandError, ConnectError, InventoryError, NodeErrors, OrchError, RuntimeApiUnavailable
from .inventory import Inventory
from .log import log
from .plan import Digests, Fleet, NodeNet, fleet_plan
from .playbook import Playbook, Profile
from .remote import Host, Shell, Target, close_all, connect, connect_all
from .runtime import Container, Look
from .secrets import Secrets
from .snapshot import NodeLook, Snapshot
from .stage.manifest import Manifest, manifest_argv, parse_manifest

MANIFEST_TIMEOUT = 3600  # hashing a 470 GB model the first time, at a few GB/s

T = TypeVar("T")


@dataclass
class Deployment:
    """Inventory + playbook + profile, loaded and validated (nothing contacted yet)."""

    inventory_path: Path
    inv: Inventory
    playbook: Playbook
    profile: Profile
    secrets: Secrets | None = None
    secrets_unread: str | None = None  # why the secrets could not be read (`orch plan` only)

    @classmethod
    def load(cls, path: Path, with_secrets: bool = True, secrets_optional: bool = False
             ) -> Deployment:
        """Load and validate everything; read the secrets (unless `with_secrets` is False;
        with `secrets_optional` an unreadable secret is noted, not an error)."""
        inv = config.load_inventory(path)
        pb_path = config.find_playbook(inv.playbook, path)
        pb = config.load_playbook(pb_path)
        prof = config.load_profile(pb.profile, pb_path)
        sec, unread = None, None
        if with_secrets:
            try:
                sec = secrets.resolve(inv, str(path))
            except InventoryError as exc:
                if not secrets_optional:
                    raise
                unread = str(exc)
        dep = cls(path, inv, pb, prof, sec, unread)
        dep.plan()  # topology errors surface before anything is contacted
        return dep

    @property
    def api_key(self) -> str | None:
        return self.secrets.api_key if self.secrets else None

    def plan(self, nets: dict[str, NodeNet] | None = None, model_digest: str | None = None) -> Fleet:
        """The fleet with the NICs/IPs known (`nets`: detected ones; others are placeholders);
        `model_digest`: the model's manifest digest, folded into the spec hashes when the
        inventory asks for it (model.digest_in_spec)."""
        digests = Digests(self.secrets.digest() if self.secrets else None,
                          model_digest if self.inv.model.digest_in_spec else None)
        fleet = fleet_plan(self.inv, self.playbook, self.profile, nets, digests)
        if self.secrets_unread:
            fleet.warnings.append(
                f"secrets not readable here ({self.secrets_unread}): container names and spec "
                "hashes shown differ from the ones `orch up` creates")
        return fleet

    def targets(self, accept_new: bool = False) -> list[Target]:
        return [Target.of(self.inv, n, accept_new) for n in self.inv.nodes]


@dataclass
class Session:
    dep: Deployment
    hosts: dict[str, Host]
    unreachable: dict[str, BaseException] = field(default_factory=dict)
    # kept per node with the connection they run on: the runtime API's HTTP connection (None:
    # the socket is not reachable, the CLI is used) and, for repeated looks, a long-lived shell
    _apis: dict[str, tuple[Host, runtime_api.RuntimeApi | None]] = field(default_factory=dict)
    _shells: dict[str, Shell] = field(default_factory=dict)
    # each node's network facts (netinfo.FACTS_SCRIPT's text) as last read: the preflight
    # reuses them instead of gathering them again
    facts_seen: dict[str, str] = field(default_factory=dict)

    @property
    def runtime(self) -> str:
        return self.dep.inv.runtime

    async def each(
        self, fn: Callable[[Host], Awaitable[T]], names: list[str] | None = None
    ) -> dict[str, T | BaseException]:
        """Run fn on every (named) reachable host at once; per-host result or exception."""
        hs = [self.hosts[n] for n in (names or list(self.hosts)) if n in self.hosts]
        res = await asyncio.gather(*(self._with_reconnect(fn, h) for h in hs), return_exceptions=True)
        for r in res:
            if isinstance(r, asyncio.CancelledError):
                raise r
        return {h.name: r for h, r in zip(hs, res)}

    async def _with_reconnect(self, fn: Callable[[Host], Awaitable[T]], h: Host) -> T:
        """Run fn; if the SSH connection dropped, reconnect (the retry policy's backoff and
        deadline) and run it once more.  A node that stays unreachable raises ConnectError."""
        try:
            return await fn(h)
        except ConnectError as exc:
            if not exc.transient:
                raise
            log.warning("ssh connection lost, reconnecting", node=h.name, error=exc.message)
            self._forget(h)
            fresh = await connect(h.target)
            self.hosts[h.name] = fresh
            return await fn(fresh)

    def _forget(self, h: Host) -> None:
        """Drop a node's connection and everything kept on it."""
        self._apis.pop(h.name, None)
        shell = self._shells.pop(h.name, None)
        if shell is not None:
            shell.close()
        h.close()

    def adopt(self, hosts: dict[str, Host], errors: dict[str, BaseException]) -> None:
        """Take fresh connections (the keeper reconnecting nodes it lost)."""
        self.hosts.update(hosts)
        for name in hosts:
            self.unreachable.pop(name, None)
        self.unreachable.update(errors)

    async def nets(self, tolerant: bool = False) -> dict[str, NodeNet]:
        async def facts(h: Host) -> NodeNet:
            node = next(n for n in self.dep.inv.nodes if n.name == h.name)
            return netinfo.resolve(node, netinfo.parse_facts(await self.facts(h)))

        out: dict[str, NodeNet] = {}
        errors = []
        for name, r in (await self.each(facts)).items():
            if isinstance(r, BaseException):
                errors.append(r)
            else:
                out[name] = r
        if errors and not tolerant:
            raise combine(errors)
        return out

    async def plan(self, tolerant: bool = False) -> Fleet:
        """The fleet with every node's NIC/IP resolved on the host (tolerant: skip failures),
        and, when the inventory folds it into the spec hash, the model's manifest digest."""
        nets = await self.nets(tolerant)
        return self.dep.plan(nets, await self.model_digest() if self.dep.inv.model.digest_in_spec else None)

    async def manifests(self, names: list[str] | None = None, path: str | None = None
                        ) -> dict[str, Manifest | None | BaseException]:
        """The manifest of the model directory (or `path`) on every (named) node; None where
        it does not exist."""
        where = path or self.dep.inv.model.path

        async def one(h: Host) -> Manifest | None:
            r = await h.run(manifest_argv(where), check=False, timeout=MANIFEST_TIMEOUT)
            return parse_manifest(h.name, r.stdout)

        return await self.each(one, names)

    async def model_digest(self) -> str | None:
        """The manifest digest of the first node that has the model (the reference: preflight's
        model.identical fails where another node differs)."""
        if not self.dep.inv.model.path.startswith("/"):
            return None
        got = await self.manifests()
        for node in [n.name for n in self.dep.inv.nodes]:
            m = got.get(node)
            if isinstance(m, Manifest):
                return m.digest
        return None

    async def containers(self, h: Host, all_deployments: bool = False) -> list[Container]:
        return runtime.parse_objects(await self.inspect_containers(h, all_deployments))

    async def inspect_containers(self, h: Host, all_deployments: bool = False) -> list[dict[str, object]]:
        return (await self._inspect(h, all_deployments))[0]

    async def _inspect(self, h: Host, all_deployments: bool = False) -> tuple[list[dict[str, object]], str]:
        """Inspect objects of this deployment's containers on the node (any orch deployment's
        with all_deployments), and how they were read: "api" through the runtime's API socket
        when the node lets orch reach it, else "cli" (`ps`, then `inspect`)."""
        dep = None if all_deployments else self.dep.inv.deployment
        got = await self._ask_api(h, lambda api: api.inspect_all(dep, h.name))
        if got is not None:
            return got, "api"
        r = await h.run(runtime.ps_ids(self.runtime, dep, h.name), timeout=30)
        ids = r.stdout.split()
        if not ids:
            return [], "cli"
        r = await h.run(runtime.inspect(self.runtime, ids), timeout=30)
        return json.loads(r.stdout or "[]"), "cli"

    async def runtime_look(self, h: Host, image: str) -> Look | None:
        """The runtime's version, the image's ID and every orch container on the node through
        the runtime's API socket; None when the node does not let orch reach it (the caller
        asks the CLI instead)."""
        return await self._ask_api(h, lambda api: api.look(image))

    async def _ask_api(self, h: Host, ask: Callable[[runtime_api.RuntimeApi], Awaitable[T]]) -> T | None:
        """ask(api) through the node's runtime API; None when the node does not let orch reach
        it (turned off, or found unreachable now: remembered for this connection)."""
        api = self._runtime_api(h)
        if api is None:
            return None
        try:
            return await ask(api)
        except RuntimeApiUnavailable as exc:
            log.info("runtime API not reachable, using the CLI", node=h.name, reason=exc.message)
            self._keep(self._apis, h, (h, None))
            return None

    def runtime_api_possible(self, h: Host) -> bool:
        """False when the inventory turned the runtime's API off or it was found unreachable
        on this connection: the CLI answers then."""
        return self._runtime_api(h) is not None

    def _runtime_api(self, h: Host) -> runtime_api.RuntimeApi | None:
        kept = self._apis.get(h.name)
        if kept is None or kept[0] is not h:
            sock = runtime_api.socket_path(self.runtime, self.dep.inv.runtime_socket)
            kept = (h, runtime_api.RuntimeApi(h, sock) if sock else None)
            self._keep(self._apis, h, kept)
        return kept[1]

    def _keep(self, where: dict[str, T], h: Host, value: T) -> None:
        """Keep something bound to h's connection, unless h was replaced meanwhile (another
        step reconnected the node): what runs on a dead connection is not kept."""
        if self.hosts.get(h.name) is h:
            where[h.name] = value

    async def facts(self, h: Host, kept: bool = False) -> str:
        """The node's network facts (netinfo.FACTS_SCRIPT); `kept`: in a long-lived shell
        (for repeated looks) instead of an SSH exec of its own."""
        if not kept:
            text = (await h.sh(netinfo.FACTS_SCRIPT, timeout=20)).stdout
        else:
            shell = self._shells.get(h.name)
            if shell is None or shell.host is not h:
                shell = Shell(h)
                self._keep(self._shells, h, shell)
            r = await shell.run(netinfo.FACTS_SCRIPT, timeout=20)
            if not r.ok:
                raise CommandError(h.name, ["sh", "-c", "(facts)"], r.rc, r.stdout)
            text = r.stdout
        self.facts_seen[h.name] = text
        return text

    async def snapshot(self, kept: bool = False) -> Snapshot:
        """Facts and containers of every reachable node, both at once on each node."""

        async def look(h: Host) -> NodeLook:
            facts, cs = await asyncio.gather(self.facts(h, kept), self._inspect(h),
                                             return_exceptions=True)
            for r in (facts, cs):
                if isinstance(r, ConnectError) and r.transient:
                    raise r  # the connection dropped: each() reconnects and looks again
                if isinstance(r, BaseException) and not isinstance(r, Exception):
                    raise r
            out = NodeLook()
            if isinstance(facts, BaseException):
                out.facts_error = str(facts)
            else:
                out.facts = facts
            if isinstance(cs, BaseException):
                out.containers_error = str(cs)
            else:
                out.containers, out.containers_via = cs
            return out

        snap = Snapshot(unreachable={k: str(v) for k, v in self.unreachable.items()})
        for name, r in (await self.each(look)).items():
            if isinstance(r, BaseException):
                snap.unreachable[name] = str(r)
            else:
                snap.looks[name] = r
        if self.dep.inv.model.digest_in_spec:  # the spec hashes depend on it
            snap.model_digest = await self.model_digest()
        return snap

    async def remove(self, h: Host, select: Callable[[Container], bool] | None = None
                     ) -> list[str]:
        """Remove this deployment's containers on the node (those `select` picks, else all);
        their names."""
        cs = [c for c in await self.containers(h) if select is None or select(c)]
        if cs:
            await h.run(runtime.remove(self.runtime, [c.id for c in cs]), timeout=120)
        return [c.name for c in cs]

    async def log_tail(self, h: Host, container: str, lines: int = 40) -> str:
        r = await h.run(runtime.logs(self.runtime, container, lines), check=False, merge=True, timeout=30)
        return secrets.mask(r.stdout)

    def close(self) -> None:
        for h in list(self.hosts.values()):
            self._forget(h)


def combine(errors: list[BaseException]) -> OrchError:
    """One error for several nodes' errors (a non-orch error is re-raised as it is)."""
    for e in errors:
        if not isinstance(e, OrchError):
            raise e
    oe = [e for e in errors if isinstance(e, OrchError)]
    return oe[0] if len(oe) == 1 else NodeErrors(oe)


async def open_session(dep: Deployment, *, require_all: bool = True, accept_new: bool = False) -> Session:
    hosts, errors = await connect_all(dep.targets(accept_new))
    if errors and require_all:
        close_all(hosts)
        raise combine(list(errors.values()))
    return Session(dep, hosts, errors)


@contextlib.asynccontextmanager
async def connected(dep: Deployment, *, require_all: bool = True, accept_new: bool = False
                    ) -> AsyncIterator[Session]:
    """A session with every node (or every reachable one: require_all=False), closed after."""
    s = await open_session(dep, require_all=require_all, accept_new=accept_new)
    try:
        yield s
    finally:
        s.close()


__all__ = ["Deployment", "Session", "combine", "connected", "open_session"]
