"""A deployment's session with its nodes: connect to all, learn their network facts, plan,
and list/remove this deployment's containers.  Shared by up, status, down and check."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from . import config, netinfo, runtime, secrets
from .errors import ConnectError, NodeErrors, OrchError
from .inventory import Inventory
from .playbook import Playbook, Profile
from .plan import NodeNet, Plan, build_plan
from .log import log
from .remote import Host, Target, close_all, connect, connect_all
from .secrets import Secrets

T = TypeVar("T")


@dataclass
class Deployment:
    """Inventory + playbook + profile, loaded and validated (nothing contacted yet)."""

    inventory_path: Path
    inv: Inventory
    playbook: Playbook
    profile: Profile
    secrets: Secrets | None = None

    @classmethod
    def load(cls, path: Path, with_secrets: bool = True) -> Deployment:
        """Load and validate everything; read the secrets (unless `with_secrets` is False)."""
        inv = config.load_inventory(path)
        pb_path = config.find_playbook(inv.playbook, path)
        pb = config.load_playbook(pb_path)
        prof = config.load_profile(pb.profile, pb_path)
        sec = secrets.resolve(inv, str(path)) if with_secrets else None
        dep = cls(path, inv, pb, prof, sec)
        dep.static_plan()  # topology errors surface before anything is contacted
        return dep

    @property
    def api_key(self) -> str | None:
        return self.secrets.api_key if self.secrets else None

    def static_plan(self, nets: dict[str, NodeNet] | None = None) -> Plan:
        digest = self.secrets.digest() if self.secrets else None
        return build_plan(self.inv, self.playbook, self.profile, nets, digest)

    def targets(self, accept_new: bool = False) -> list[Target]:
        return [Target.of(self.inv, n, accept_new) for n in self.inv.nodes]


@dataclass
class Session:
    dep: Deployment
    hosts: dict[str, Host]
    unreachable: dict[str, BaseException] = field(default_factory=dict)

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
            if not getattr(exc, "transient", False):
                raise
            log.warning("ssh connection lost, reconnecting", node=h.name, error=exc.message)
            h.close()
            fresh = await connect(h.target)
            self.hosts[h.name] = fresh
            return await fn(fresh)

    async def nets(self, tolerant: bool = False) -> dict[str, NodeNet]:
        async def facts(h: Host) -> NodeNet:
            r = await h.sh(netinfo.FACTS_SCRIPT, timeout=20)
            node = next(n for n in self.dep.inv.nodes if n.name == h.name)
            return netinfo.resolve(node, netinfo.parse_facts(r.stdout))

        out: dict[str, NodeNet] = {}
        errors = []
        for name, r in (await self.each(facts)).items():
            if isinstance(r, BaseException):
                errors.append(r)
            else:
                out[name] = r
        if errors and not tolerant:
            raise _combine(errors)
        return out

    async def plan(self, tolerant: bool = False) -> Plan:
        """The plan with every node's NIC/IP resolved on the host (tolerant: skip failures)."""
        return self.dep.static_plan(await self.nets(tolerant))

    async def containers(self, h: Host, all_deployments: bool = False) -> list[runtime.Container]:
        dep = None if all_deployments else self.dep.inv.deployment
        r = await h.run(runtime.ps_ids(self.runtime, dep, h.name), timeout=30)
        ids = r.stdout.split()
        if not ids:
            return []
        r = await h.run(runtime.inspect(self.runtime, ids), timeout=30)
        return runtime.parse_inspect(r.stdout)

    async def remove(self, h: Host) -> list[str]:
        cs = await self.containers(h)
        if cs:
            await h.run(runtime.remove(self.runtime, [c.id for c in cs]), timeout=120)
        return [c.name for c in cs]

    async def log_tail(self, h: Host, container: str, lines: int = 40) -> str:
        r = await h.run(runtime.logs(self.runtime, container, lines), check=False, merge=True, timeout=30)
        return secrets.mask(r.stdout)

    def close(self) -> None:
        close_all(self.hosts)


def _combine(errors: list[BaseException]) -> OrchError:
    for e in errors:
        if not isinstance(e, OrchError):
            raise e
    oe = [e for e in errors if isinstance(e, OrchError)]
    return oe[0] if len(oe) == 1 else NodeErrors(oe)


async def open_session(dep: Deployment, *, require_all: bool = True, accept_new: bool = False) -> Session:
    hosts, errors = await connect_all(dep.targets(accept_new))
    if errors and require_all:
        close_all(hosts)
        raise _combine(list(errors.values()))
    return Session(dep, hosts, errors)


__all__ = ["Deployment", "Session", "open_session", "ConnectError"]
