"""`orch status`: what runs where, is it healthy, does it match the inventory.

Per container of the plan (snapshot.py's look at every node): state, uptime, restarts,
drift (spec hash vs the inventory's); per group (a replica): its API's readiness, a
whole-group check with real requests, per-rank metrics; for a fleet also the router's view
(its container, the workers it routes to)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from .cluster import Deployment
from .errors import ProbeError
from .health import group_probe, parse_metrics
from .plan import LABEL_ROLE, Fleet, NodeSpec, Plan
from .probe import Api, RouterApi
from .runtime import Container
from .snapshot import Snapshot


@dataclass
class NodeStatus:
    name: str
    role: str
    reachable: bool
    container: str | None = None
    state: str = "missing"
    uptime_s: int | None = None
    restarts: int = 0
    spec_hash: str | None = None
    expected_hash: str | None = None
    drift: bool = False
    extra_containers: int = 0
    error: str | None = None
    containers_via: str | None = None  # how the runtime was asked: "api" (its socket) or "cli"
    ranks: list[int] = field(default_factory=list)
    metrics: dict[int, dict[str, float]] = field(default_factory=dict)  # engine -> figures
    replica: int | None = None  # the fleet replica it belongs to (None: plain / the router)

    @property
    def healthy(self) -> bool:
        return self.reachable and self.state == "running" and not self.drift and not self.extra_containers


@dataclass
class GroupStatus:
    """One serving group (a replica of a fleet, or the whole plain deployment)."""

    replica: int | None
    api_url: str
    api_ready: bool
    api_reason: str
    models: list[str]
    version: str | None
    nodes: list[NodeStatus] = field(default_factory=list)
    group_ok: bool | None = None  # None: not probed
    group_reason: str = "not probed"

    @property
    def healthy(self) -> bool:
        return self.api_ready and all(n.healthy for n in self.nodes) and self.group_ok is not False

    def to_json(self) -> dict[str, object]:
        d = asdict(self)
        d["healthy"] = self.healthy
        for n, nd in zip(self.nodes, d["nodes"]):
            nd["healthy"] = n.healthy
        return d


@dataclass
class RouterStatus:
    """A fleet's router: its container, and the workers it routes to against the healthy
    replicas."""

    node: NodeStatus
    url: str
    answers: bool
    reason: str
    workers: list[str] = field(default_factory=list)  # what the router lists
    expected: list[str] = field(default_factory=list)  # the healthy replicas' API URLs

    @property
    def healthy(self) -> bool:
        return self.node.healthy and self.answers and sorted(self.workers) == sorted(self.expected)


@dataclass
class Status:
    deployment: str
    api_url: str
    served_model: str
    groups: list[GroupStatus]
    router: RouterStatus | None = None
    via: str = ""  # how the nodes were reached (fresh connections, or a keeper's)

    # a plain deployment's figures are its one group's (the JSON fields orch always had)
    @property
    def nodes(self) -> list[NodeStatus]:
        out = [n for g in self.groups for n in g.nodes]
        return out + ([self.router.node] if self.router else [])

    @property
    def api_ready(self) -> bool:
        if self.router is not None:
            return self.router.answers and bool(self.router.workers)
        return self.groups[0].api_ready

    @property
    def api_reason(self) -> str:
        return self.router.reason if self.router else self.groups[0].api_reason

    @property
    def group_ok(self) -> bool | None:
        oks = [g.group_ok for g in self.groups]
        return False if False in oks else (None if None in oks else True)

    @property
    def healthy(self) -> bool:
        return all(g.healthy for g in self.groups) and (self.router is None or self.router.healthy)

    @property
    def drift(self) -> bool:
        return any(n.drift for n in self.nodes)

    def to_json(self) -> dict[str, object]:
        g0 = self.groups[0]
        d: dict[str, object] = {
            "deployment": self.deployment, "api_url": self.api_url,
            "served_model": self.served_model, "api_ready": self.api_ready,
            "api_reason": self.api_reason, "models": g0.models, "version": g0.version,
            "nodes": [{**asdict(n), "healthy": n.healthy} for n in self.nodes],
            "group_ok": self.group_ok,
            "group_reason": "; ".join(g.group_reason for g in self.groups),
            "via": self.via, "healthy": self.healthy, "drift": self.drift,
        }
        if len(self.groups) > 1 or self.router is not None:
            d["replicas"] = [g.to_json() for g in self.groups]
        if self.router is not None:
            r = self.router
            d["router"] = {"url": r.url, "answers": r.answers, "reason": r.reason,
                           "workers": r.workers, "expected": r.expected, "healthy": r.healthy,
                           "node": {**asdict(r.node), "healthy": r.node.healthy}}
        return d


def node_status(spec: NodeSpec, cs: list[Container], planned: set[str], now: datetime
                ) -> NodeStatus:
    """A planned container's status from the node's containers of this deployment (`planned`:
    the spec hashes of every container planned on that node)."""
    ns = NodeStatus(spec.name, spec.role, True, expected_hash=spec.spec_hash,
                    ranks=list(spec.ranks))
    same_role = [c for c in cs if c.labels.get(LABEL_ROLE) == spec.role]
    mine = [c for c in cs if c.spec_hash == spec.spec_hash]
    cands = mine or same_role or [c for c in cs if c.spec_hash not in planned]
    if not cands:
        return ns
    cands = sorted(cands, key=lambda c: (c.spec_hash == spec.spec_hash, c.running,
                                         c.started_at or now), reverse=True)
    c = cands[0]
    ns.container = c.name
    ns.state = c.status if c.status != "exited" else f"exited ({c.exit_code})"
    ns.restarts = c.restarts
    ns.spec_hash = c.spec_hash
    ns.drift = c.spec_hash != spec.spec_hash
    ns.extra_containers = max(0, len({x.id for x in same_role + mine}) - 1)
    if c.running and c.started_at:
        ns.uptime_s = int((now - c.started_at).total_seconds())
    return ns


def container_rows(snap: Snapshot, specs: list[NodeSpec], fleet: Fleet, now: datetime
                   ) -> list[NodeStatus]:
    rows = []
    for spec in specs:
        if spec.name not in snap.looks:
            err = snap.unreachable.get(spec.name, "not connected")
            rows.append(NodeStatus(spec.name, spec.role, False, state="unreachable", error=err,
                                   expected_hash=spec.spec_hash, ranks=list(spec.ranks)))
            continue
        r = snap.containers(spec.name)
        if isinstance(r, str):
            rows.append(NodeStatus(spec.name, spec.role, True, state="unknown", error=r,
                                   expected_hash=spec.spec_hash, ranks=list(spec.ranks)))
        else:
            planned = {s.spec_hash for s in fleet.on(spec.name)}
            rows.append(node_status(spec, r, planned, now))
        rows[-1].containers_via = snap.looks[spec.name].containers_via
    return rows


async def group_status(snap: Snapshot, fleet: Fleet, plan: Plan, api_key: str | None,
                       probe: bool, now: datetime) -> GroupStatus:
    nodes = container_rows(snap, plan.nodes, fleet, now)
    for n in nodes:
        n.replica = plan.replica
    async with Api(plan.api_url, api_key, timeout=5) as api:
        st = await api.state(plan.served_name)
        out = GroupStatus(plan.replica, plan.api_url, st.ready, st.reason, st.models, st.version,
                          nodes)
        if st.ready and probe and plan.topology != "pd" and all(n.state == "running" for n in nodes):
            g = await group_probe(api, plan.served_name, plan.dp_size)
            out.group_ok, out.group_reason = g.ok, g.reason
    # per-rank figures from each API group's /metrics (the engine label is the DP rank)
    for spec in {s.instance: s for s in plan.nodes if s.api_port and s.role != "proxy"}.values():
        assert spec.api_url is not None
        async with Api(spec.api_url, api_key, timeout=5) as api:
            try:
                per_engine = parse_metrics(await api.metrics())
            except ProbeError:
                continue
        for n, s in zip(nodes, plan.nodes):
            if s.instance == spec.instance:
                n.metrics = {r: per_engine[r] for r in n.ranks if r in per_engine}
    return out


async def status(snap: Snapshot, fleet: Fleet, api_key: str | None = None, probe: bool = True
                 ) -> Status:
    """Container state per node (from the snapshot), each group's API readiness, per-rank
    metrics and (with `probe`) a whole-group check with real requests."""
    now = datetime.now(UTC)
    groups = [await group_status(snap, fleet, g, api_key, probe, now) for g in fleet.groups]
    router = None
    if fleet.router is not None:
        router = await router_status(snap, fleet, groups, now)
    return Status(fleet.deployment, fleet.api_url, fleet.served_name, groups, router, via=snap.via)


async def router_status(snap: Snapshot, fleet: Fleet, groups: list[GroupStatus], now: datetime
                        ) -> RouterStatus:
    """The router's container, whether it answers, and what it routes to against the replicas
    that are healthy now."""
    r = fleet.router
    assert r is not None and r.api_url is not None
    node = container_rows(snap, [r], fleet, now)[0]
    out = RouterStatus(node, r.api_url, False, "", expected=[g.api_url for g in groups if g.healthy])
    async with RouterApi(r.api_url, timeout=5) as api:
        try:
            out.workers = sorted(await api.workers())
            out.answers, out.reason = True, "ok"
        except ProbeError as exc:
            out.reason = exc.reason
    return out


async def deployment_status(dep: Deployment, snap: Snapshot, probe: bool = True) -> Status:
    """`orch status` of a deployment from one snapshot of its nodes (the plan uses the NICs/IPs
    the snapshot saw)."""
    return await status(snap, dep.plan(snap.nets(dep.inv), snap.model_digest), dep.api_key, probe)
