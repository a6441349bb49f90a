"""`orch status`: what runs where, is it healthy, does it match the inventory."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from .cluster import Deployment
from .plan import Plan
from .snapshot import Snapshot
from .health import group_probe, parse_metrics
from .probe import Api, ProbeError
from .runtime import Container


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

    @property
    def healthy(self) -> bool:
        return self.reachable and self.state == "running" and not self.drift and not self.extra_containers


@dataclass
class Status:
    deployment: str
    api_url: str
    served_model: str
    api_ready: bool
    api_reason: str
    models: list[str]
    version: str | None
    nodes: list[NodeStatus] = field(default_factory=list)
    group_ok: bool | None = None  # None: not probed
    group_reason: str = "not probed"
    via: str = ""  # how the nodes were reached (fresh connections, or a keeper's)

    @property
    def healthy(self) -> bool:
        return self.api_ready and all(n.healthy for n in self.nodes) and self.group_ok is not False

    @property
    def drift(self) -> bool:
        return any(n.drift for n in self.nodes)

    def to_json(self) -> dict[str, object]:
        d = asdict(self)
        d["healthy"] = self.healthy
        d["drift"] = self.drift
        for n, nd in zip(self.nodes, d["nodes"]):  # type: ignore[arg-type]
            nd["healthy"] = n.healthy
        return d


def node_status(name: str, role: str, expected: str, cs: list[Container], now: datetime) -> NodeStatus:
    ns = NodeStatus(name, role, True, expected_hash=expected)
    if not cs:
        return ns
    cs = sorted(cs, key=lambda c: (c.running, c.started_at or now), reverse=True)
    c = cs[0]
    ns.container = c.name
    ns.state = c.status if c.status != "exited" else f"exited ({c.exit_code})"
    ns.restarts = c.restarts
    ns.spec_hash = c.spec_hash
    ns.drift = c.spec_hash != expected
    ns.extra_containers = len(cs) - 1
    if c.running and c.started_at:
        ns.uptime_s = int((now - c.started_at).total_seconds())
    return ns


async def status(snap: Snapshot, plan: Plan, api_key: str | None = None, probe: bool = True) -> Status:
    """Container state per node (from the snapshot), the API's readiness, per-rank metrics and
    (with `probe`) a whole-group check with real requests."""
    now = datetime.now(timezone.utc)
    nodes = []
    for spec in plan.nodes:
        if spec.name not in snap.looks:
            err = snap.unreachable.get(spec.name, "not connected")
            nodes.append(NodeStatus(spec.name, spec.role, False, state="unreachable", error=err,
                                    expected_hash=spec.spec_hash))
            continue
        r = snap.containers(spec.name)
        if isinstance(r, str):
            nodes.append(NodeStatus(spec.name, spec.role, True, state="unknown", error=r,
                                    expected_hash=spec.spec_hash))
        else:
            nodes.append(node_status(spec.name, spec.role, spec.spec_hash, r, now))
        nodes[-1].containers_via = snap.looks[spec.name].containers_via
    for n, spec in zip(nodes, plan.nodes):
        n.ranks = list(range(spec.rank_start, spec.rank_start + spec.dp_local))
    async with Api(plan.api_url, api_key, timeout=5) as api:
        st = await api.state(plan.served_name)
        out = Status(plan.deployment, plan.api_url, plan.served_name, st.ready, st.reason, st.models,
                     st.version, nodes, via=snap.via)
        if st.ready:
            if probe and all(n.state == "running" for n in nodes):
                g = await group_probe(api, plan.served_name, plan.dp_size)
                out.group_ok, out.group_reason = g.ok, g.reason
            try:
                per_engine = parse_metrics(await api.metrics())
            except ProbeError:
                per_engine = {}
            for n in nodes:
                n.metrics = {r: per_engine[r] for r in n.ranks if r in per_engine}
    return out


async def deployment_status(dep: Deployment, snap: Snapshot, probe: bool = True) -> Status:
    """`orch status` of a deployment from one snapshot of its nodes (the plan uses the NICs/IPs
    the snapshot saw)."""
    return await status(snap, dep.static_plan(snap.nets(dep.inv)), dep.api_key, probe)
