"""`orch up` and `orch down`: the one pipeline every topology goes through.

    plan        the fleet, with every node's NIC/IP resolved on the host
    healthy?    per group: do its containers run the planned specs, and does it serve
                (launchers.py says what serving means for its topology)?  All yes: nothing
                to do (the cron no-op)
    preflight   the checks of `orch check`, refusing to launch on a failure; stale /dev/shm
    per group that needs it:
      save      the replaced containers' log tails (the first failure's log matters)
      remove    the group's old containers
      launch    in the topology's order (launchers.py), inside `Launches`: a failure or an
                interrupt removes what this run started
      wait      the one readiness loop (ready.py), every container watched
    report      what was (re)deployed, where it serves
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from .. import state
from ..cluster import Session
from ..errors import DeployError, PreflightFailed, RolloutHalted
from ..log import log
from ..plan import Fleet, Plan
from ..preflight import clean_stale, run_checks
from .containers import collect_tails, group_select, look, remove, router_select, spec_match
from .fleet import Todo, batches, deploy_router, put_back, router_workers, sync_workers, take_out
from .launch import Launches
from .launchers import launcher_for
from .ready import wait_ready


@dataclass(frozen=True)
class UpOptions:
    timeout_s: float = 1800  # overall deadline for everything to serve
    keep_on_failure: bool = False  # leave a failed group running for debugging
    force: bool = False  # redeploy even when healthy and unchanged
    checks: bool = True  # run the preflight before launching
    skip_checks: frozenset[str] = frozenset()
    max_unavailable: int | None = None  # fleets: replicas replaced at once (None: the inventory's)


@dataclass
class UpResult:
    changed: bool
    reason: str
    fleet: Fleet
    seconds: float
    containers: dict[str, str] = field(default_factory=dict)
    answer: str | None = None  # the proof completion's text
    deployed: list[str] = field(default_factory=list)  # the groups (re)deployed

    @property
    def api_url(self) -> str:
        return self.fleet.api_url


async def what_to_deploy(s: Session, fleet: Fleet, force: bool
                         ) -> tuple[list[Todo], list[str], str | None]:
    """The groups to (re)deploy (with why, and whether they serve now), why the others are
    fine, and why the router's container must be replaced (None: it runs as planned)."""
    found = await look(s, fleet.node_names())
    todo: list[Todo] = []
    fine: list[str] = []
    for g in fleet.groups:
        launcher = launcher_for(g)
        st = spec_match(g.nodes, found)
        if force:
            todo.append(Todo(g, "forced", st.existing, (await launcher.ready(g, s.dep.api_key))[0]))
        elif not st.ok:
            serving = st.existing > 0 and (await launcher.ready(g, s.dep.api_key))[0]
            todo.append(Todo(g, st.reason, st.existing, serving))
        else:
            ok, why = await launcher.healthy(g, s.dep.api_key)
            if ok:
                fine.append(why)
            else:
                todo.append(Todo(g, why, st.existing, False))
    router_why = None
    if fleet.router is not None:
        rs = spec_match([fleet.router], found, router_select)
        if force or not rs.ok:
            router_why = "forced" if force else rs.reason
    return todo, fine, router_why


def _why(t: Todo) -> str:
    return f"{t.plan.name}: {t.why}" if t.plan.replica is not None else t.why


async def up(s: Session, opts: UpOptions = UpOptions()) -> UpResult:
    t0 = time.monotonic()
    deadline = t0 + opts.timeout_s
    fleet = await s.plan()
    for w in fleet.warnings + [w for g in fleet.groups for w in g.warnings]:
        log.warning("plan", warning=w)
    groups, fine, router_why = await what_to_deploy(s, fleet, opts.force)
    # what the router routes to until its turn comes: the fine groups and the ones that still
    # serve the old spec (a dead or unhealthy group is taken out at once)
    changing = {t.plan.name: t for t in groups}
    serving = [g for g in fleet.groups if g.name not in changing or changing[g.name].serving]
    if not groups and router_why is None and fleet.router is not None:
        workers = await router_workers(fleet)
        if workers is not None and sorted(workers) == sorted(g.api_url for g in serving):
            return UpResult(False, f"healthy and unchanged ({'; '.join(fine)})", fleet,
                            time.monotonic() - t0)
        added, removed = await sync_workers(fleet, serving)
        return UpResult(True, f"router workers synced (added {added}, removed {removed})", fleet,
                        time.monotonic() - t0)
    if not groups and router_why is None:
        return UpResult(False, f"healthy and unchanged ({'; '.join(fine)})", fleet,
                        time.monotonic() - t0)
    if opts.checks:
        await preflight(s, fleet, opts.skip_checks)
    reasons = [] if router_why is None else [f"router: {router_why}"]
    if router_why is not None:
        log.info("deploying", reason=router_why, group="router")
        await deploy_router(s, fleet, opts.keep_on_failure, deadline)
    if fleet.router is not None:
        await sync_workers(fleet, serving)
    started: dict[str, str] = {}
    answer = None
    done: list[str] = [] if router_why is None else ["router"]
    max_un = opts.max_unavailable or s.dep.inv.update.max_unavailable
    for batch in batches(groups, max_un):
        for t in batch:
            log.info("deploying", reason=t.why, topology=t.plan.topology,
                     **({"group": t.plan.name} if fleet.is_fleet else {}))
            await take_out(fleet, t.plan)
        results = await asyncio.gather(
            *(replace_group(s, fleet, t, opts, deadline) for t in batch), return_exceptions=True)
        failed = [(t, r) for t, r in zip(batch, results) if isinstance(r, BaseException)]
        for t, r in zip(batch, results):
            if not isinstance(r, BaseException):
                got, answer = r
                started.update(got)
                done.append(t.plan.name)
        if failed:
            await halt(fleet, failed)
    log.info("serving", url=fleet.api_url, model=fleet.served_name,
             seconds=round(time.monotonic() - t0, 1))
    return UpResult(True, "; ".join(reasons + [_why(t) for t in groups]), fleet,
                    time.monotonic() - t0, started, answer, done)


async def halt(fleet: Fleet, failed: list[tuple[Todo, BaseException]]) -> None:
    """A group failed: a plain deployment's error as it is; for a fleet, which replica failed
    (its error names the node) and what the router still routes to.  The rollout stops: the
    replicas not replaced yet keep serving the old spec."""
    for _, exc in failed:
        if not isinstance(exc, Exception):
            raise exc  # cancelled (Ctrl-C): the launches cleaned up after themselves
    if fleet.router is None:
        raise failed[0][1]
    lines = [f"{t.plan.name} on {', '.join(t.plan.node_names())} failed: {exc}" for t, exc in failed]
    workers = await router_workers(fleet)
    names = {g.api_url: g.name for g in fleet.groups}
    still = "not reached" if workers is None else ", ".join(names.get(u, u) for u in workers) or "nothing"
    lines.append(f"the router still routes to: {still}; the rollout stopped there")
    raise RolloutHalted("\n".join(lines)) from failed[0][1]


async def replace_group(s: Session, fleet: Fleet, t: Todo, opts: UpOptions, deadline: float
                        ) -> tuple[dict[str, str], str]:
    """Replace one group and, in a fleet, prove it (the health check's real requests) and put
    it back into the router."""
    got = await deploy_group(s, t.plan, opts, deadline,
                             save_tails=t.existing > 0 and t.why != "forced")
    if fleet.router is not None:
        ok, why = await launcher_for(t.plan).healthy(t.plan, s.dep.api_key)
        if not ok:
            raise DeployError(f"{t.plan.name} answered but is not healthy: {why}")
        await put_back(fleet, t.plan)
    return got


async def deploy_group(s: Session, plan: Plan, opts: UpOptions, deadline: float, *,
                       save_tails: bool) -> tuple[dict[str, str], str]:
    """Replace one group: save the old containers' tails, remove them, launch, wait."""
    launcher = launcher_for(plan)
    names = plan.node_names()
    if save_tails:
        tails = await collect_tails(s, names)
        if tails:
            log.info("saved the replaced containers' log tails",
                     path=str(state.save_log_tails(plan.deployment, tails, kind="replaced")))
    for node, gone in (await remove(s, names, group_select)).items():
        if gone:
            log.info("removed old containers", node=node, containers=gone)
    if plan.setup_dirs:
        await s.each(lambda h: h.run(["mkdir", "-p", *plan.setup_dirs], timeout=30), names)
    async with Launches(s, plan.deployment, names, opts.keep_on_failure) as launches:
        started = await launcher.launch(s, plan, launches, deadline)
        answer = await wait_ready(s, plan, launcher, deadline, s.dep.api_key)
    return started, answer


async def preflight(s: Session, fleet: Fleet, skip: frozenset[str]) -> None:
    """The same checks as `orch check`; refuse to launch on a failure; clear stale /dev/shm."""
    report = await run_checks(s, fleet, skip)
    failed = sorted({f"{r.node}: {r.check}" for r in report.results if r.status == "fail"})
    if failed:
        raise PreflightFailed(
            f"preflight failed, nothing was launched ({'; '.join(failed)}); fix it, or skip a "
            "check with --skip-checks NAME", report)
    log.info("preflight passed", seconds=round(report.seconds, 1),
             warnings=sum(r.status == "warn" for r in report.results))
    for node, gone in (await clean_stale(s, fleet)).items():
        if gone:
            log.info("removed stale shared memory", node=node, files=gone)


async def down(s: Session) -> dict[str, list[str]]:
    """Remove every container of this deployment on every reachable node."""
    return await remove(s)
