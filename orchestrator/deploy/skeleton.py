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

import time
from dataclasses import dataclass, field

from .. import state
from ..cluster import Session
from ..errors import PreflightFailed
from ..log import log
from ..plan import Fleet, Plan
from ..preflight import clean_stale, run_checks
from .containers import collect_tails, look, remove, spec_match
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


@dataclass(frozen=True)
class Todo:
    plan: Plan
    why: str
    existing: int  # containers of the group found now


async def what_to_deploy(s: Session, fleet: Fleet, force: bool) -> tuple[list[Todo], str]:
    """The groups to (re)deploy, and why the others are fine."""
    found = await look(s, fleet.node_names())
    todo: list[Todo] = []
    fine: list[str] = []
    for g in fleet.groups:
        st = spec_match(g.nodes, found)
        if force:
            todo.append(Todo(g, "forced", st.existing))
        elif not st.ok:
            todo.append(Todo(g, st.reason, st.existing))
        else:
            ok, why = await launcher_for(g).healthy(g, s.dep.api_key)
            if ok:
                fine.append(why)
            else:
                todo.append(Todo(g, why, st.existing))
    return todo, "; ".join(fine)


async def up(s: Session, opts: UpOptions = UpOptions()) -> UpResult:
    t0 = time.monotonic()
    deadline = t0 + opts.timeout_s
    fleet = await s.plan()
    for w in fleet.warnings + [w for g in fleet.groups for w in g.warnings]:
        log.warning("plan", warning=w)
    todo, fine = await what_to_deploy(s, fleet, opts.force)
    if not todo:
        return UpResult(False, f"healthy and unchanged ({fine})", fleet, time.monotonic() - t0)
    if opts.checks:
        await preflight(s, fleet, opts.skip_checks)
    started: dict[str, str] = {}
    answer = None
    for t in todo:
        log.info("deploying", reason=t.why, topology=t.plan.topology,
                 **({"group": t.plan.name} if fleet.is_fleet else {}))
        got, answer = await deploy_group(s, t.plan, opts, deadline,
                                         save_tails=t.existing > 0 and t.why != "forced")
        started.update(got)
    log.info("serving", url=fleet.api_url, model=fleet.served_name,
             seconds=round(time.monotonic() - t0, 1))
    return UpResult(True, "; ".join(t.why for t in todo), fleet, time.monotonic() - t0, started,
                    answer, [t.plan.name for t in todo])


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
    for node, gone in (await remove(s, names)).items():
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
