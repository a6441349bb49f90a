"""`orch up` and `orch down`: launch the whole group (head, then headless ranks), watch every
rank while waiting for the API, and never leave a half-started group behind."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from . import state
from .cluster import Session
from .errors import DeployError, PreflightFailed, RankExited, RankFailure, ReadinessTimeout
from .log import log
from .plan import NodeSpec, Plan
from .health import group_probe
from .probe import Api, ProbeError
from .remote import Host

POLL_S = 2.0
PROGRESS_S = 15.0


@dataclass
class UpResult:
    changed: bool
    reason: str
    plan: Plan
    seconds: float
    containers: dict[str, str] = field(default_factory=dict)
    answer: str | None = None


async def current_state(s: Session, plan: Plan) -> tuple[bool, str]:
    """(True, 'ok') when every rank runs the planned spec; else (False, why)."""
    found = await s.each(s.containers)
    for spec in plan.nodes:
        cs = found.get(spec.name)
        if isinstance(cs, BaseException):
            return False, f"{spec.name}: {cs}"
        if not cs:
            return False, f"{spec.name}: no container"
        running = [c for c in cs if c.running]
        if not running:
            return False, f"{spec.name}: container {cs[0].name} is {cs[0].status}"
        if len(cs) > 1:
            return False, f"{spec.name}: {len(cs)} containers of this deployment"
        if running[0].spec_hash != spec.spec_hash:
            return False, f"{spec.name}: runs spec {running[0].spec_hash}, inventory wants {spec.spec_hash} (drift)"
    return True, "ok"


async def launch(s: Session, spec: NodeSpec) -> str:
    h = s.hosts[spec.name]
    log.info("launching", node=spec.name, role=spec.role, container=spec.container)
    env_file = s.dep.secrets.env_file() if (spec.secret_env and s.dep.secrets) else None
    r = await h.run(spec.argv, timeout=300, input=env_file)
    return r.stdout.strip()


class Launches:
    """The launch steps of one `up`, with the group's cleanup guaranteed.

    A `run -d` is never cut in half: each launch is shielded from cancellation, and when the
    block fails or is interrupted (Ctrl-C, SIGTERM) the cleanup first waits for launches in
    flight, so no container appears after it; then it saves log tails and removes the group
    (unless keep).  The exception is re-raised."""

    def __init__(self, s: Session, plan: Plan, keep: bool) -> None:
        self.s, self.plan, self.keep = s, plan, keep
        self._futures: list[asyncio.Future[str]] = []

    async def start(self, spec: NodeSpec) -> str:
        fut = asyncio.ensure_future(launch(self.s, spec))
        self._futures.append(fut)
        return await asyncio.shield(fut)

    async def start_all(self, specs: list[NodeSpec]) -> list[str]:
        futs = [asyncio.ensure_future(launch(self.s, n)) for n in specs]
        self._futures += futs
        return list(await asyncio.shield(asyncio.gather(*futs)))

    async def __aenter__(self) -> Launches:
        return self

    async def __aexit__(self, et: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        if exc is None:
            return False
        pending = [f for f in self._futures if not f.done()]
        if pending:
            await asyncio.wait(pending, timeout=120)
        await asyncio.shield(_fail_cleanup(self.s, self.plan, self.keep, exc))
        return False


async def watch_ranks(s: Session, plan: Plan) -> list[RankFailure]:
    """Inspect every rank's container once; failures (with log tails) for the ones not running."""

    async def one(h: Host) -> RankFailure | None:
        spec = plan.node(h.name)
        cs = [c for c in await s.containers(h) if c.spec_hash == spec.spec_hash]
        if cs and cs[0].running:
            return None
        st = f"{cs[0].status} (exit code {cs[0].exit_code})" if cs else "gone"
        tail = await s.log_tail(h, cs[0].id) if cs else ""
        return RankFailure(h.name, st, tail)

    out = []
    for name, r in (await s.each(one, [n.name for n in plan.nodes])).items():
        if isinstance(r, BaseException):
            out.append(RankFailure(name, f"unreachable: {r}", ""))
        elif r is not None:
            out.append(r)
    return out


async def last_lines(s: Session, plan: Plan) -> dict[str, str]:
    async def one(h: Host) -> str:
        text = await s.log_tail(h, plan.node(h.name).container, 3)
        lines = [ln for ln in text.splitlines() if ln.strip()]
        return lines[-1][-140:] if lines else ""

    return {k: (v if isinstance(v, str) else "?") for k, v in (await s.each(one)).items()}


async def wait_ready(s: Session, plan: Plan, deadline: float, api_key: str | None = None) -> str:
    """Poll the head's API until it serves the model and answers a completion, while watching
    every rank: a rank whose container stops fails the wait at once (named, with its log)."""
    t0 = time.monotonic()
    next_note = t0 + PROGRESS_S
    reason = "not started"
    async with Api(plan.api_url, api_key) as api:
        while True:
            failures = await watch_ranks(s, plan)
            if failures:
                raise RankExited(failures)
            st = await api.state(plan.served_name)
            reason = st.reason
            if st.ready:
                log.info("api ready", url=plan.api_url, model=plan.served_name, version=st.version,
                         waited_s=round(time.monotonic() - t0, 1))
                try:
                    return await api.complete(plan.served_name, timeout=max(10.0, deadline - time.monotonic()))
                except ProbeError as exc:
                    raise DeployError(f"the API lists the model but a completion failed: {exc.reason}") from exc
            now = time.monotonic()
            if now >= deadline:
                raise ReadinessTimeout(
                    f"{plan.api_url} not ready after {now - t0:.0f}s (last: {reason}); "
                    "every rank's container was still running - see `orch logs`"
                )
            if now >= next_note:
                next_note = now + PROGRESS_S
                for node, line in (await last_lines(s, plan)).items():
                    log.info("waiting", node=node, elapsed_s=round(now - t0), last_log=line)
            await asyncio.sleep(POLL_S)


async def collect_tails(s: Session, plan: Plan, lines: int = 200) -> dict[str, str]:
    """The last log lines of every container of this deployment that exists."""

    async def one(h: Host) -> str:
        texts = [f"=== {c.name} ({c.status})\n" + await s.log_tail(h, c.id, lines)
                 for c in await s.containers(h)]
        return "\n".join(texts)

    return {k: v for k, v in (await s.each(one)).items() if isinstance(v, str) and v}


async def remove_all(s: Session) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, r in (await s.each(s.remove)).items():
        if isinstance(r, BaseException):
            log.error("remove failed", node=name, error=str(r))
        else:
            out[name] = r
    return out


async def up(
    s: Session,
    *,
    timeout_s: float = 1800,
    keep_on_failure: bool = False,
    force: bool = False,
    checks: bool = True,
    skip_checks: frozenset[str] = frozenset(),
) -> UpResult:
    if s.dep.playbook.topology in ("ray", "pd"):  # orchestrator/topologies/
        from .topologies import up_topology

        return await up_topology(s, timeout_s=timeout_s, keep_on_failure=keep_on_failure, force=force,
                                 checks=checks, skip_checks=skip_checks)
    api_key = s.dep.api_key
    t0 = time.monotonic()
    deadline = t0 + timeout_s
    plan = await s.plan()
    for w in plan.warnings:
        log.warning("plan", warning=w)
    if not force:
        same, why = await current_state(s, plan)
        if same:
            async with Api(plan.api_url, api_key) as api:
                st = await api.state(plan.served_name)
                if st.ready:
                    g = await group_probe(api, plan.served_name, plan.dp_size)
                    if g.ok:
                        return UpResult(False, f"healthy and unchanged ({g.reason})", plan,
                                        time.monotonic() - t0)
                    why = f"group unhealthy: {g.reason}"
                else:
                    why = f"API not ready: {st.reason}"
        log.info("deploying", reason=why)
    else:
        why = "forced"
    if checks:
        await preflight(s, plan, skip_checks)
    if why != "forced" and not why.endswith(": no container"):
        # keep the replaced ranks' last words: the first failure's log is the one that matters
        tails = await collect_tails(s, plan)
        if tails:
            log.info("saved the replaced containers' log tails",
                     path=str(state.save_log_tails(plan.deployment, tails, kind="replaced")))
    removed = await remove_all(s)
    for node, names in removed.items():
        if names:
            log.info("removed old containers", node=node, containers=names)
    started: dict[str, str] = {}
    async with Launches(s, plan, keep_on_failure) as launches:
        started[plan.head.name] = await launches.start(plan.head)
        rest = plan.nodes[1:]
        started.update(zip([n.name for n in rest], await launches.start_all(rest)))
        answer = await wait_ready(s, plan, deadline, api_key)
    log.info("serving", url=plan.api_url, model=plan.served_name, seconds=round(time.monotonic() - t0, 1))
    return UpResult(True, why, plan, time.monotonic() - t0, started, answer)


async def preflight(s: Session, plan: Plan, skip: frozenset[str]) -> None:
    """The same checks as `orch check`; refuse to launch on a failure; clear stale /dev/shm."""
    from .preflight import clean_stale, print_report, run_checks

    report = await run_checks(s, plan, skip)
    failed = sorted({f"{r.node}: {r.check}" for r in report.results if r.status == "fail"})
    if failed:
        print_report(report)
        raise PreflightFailed(
            f"preflight failed, nothing was launched ({'; '.join(failed)}); fix it, or skip a "
            "check with --skip-checks NAME")
    log.info("preflight passed", seconds=round(report.seconds, 1),
             warnings=sum(r.status == "warn" for r in report.results))
    for node, gone in (await clean_stale(s, plan)).items():
        if gone:
            log.info("removed stale shared memory", node=node, files=gone)


async def _fail_cleanup(s: Session, plan: Plan, keep: bool, exc: BaseException) -> None:
    try:
        tails = await collect_tails(s, plan)
        if tails:
            where = state.save_log_tails(plan.deployment, tails)
            log.warning("saved log tails", path=str(where))
        if keep:
            log.warning("leaving the failed group running (--keep-on-failure)")
            return
        removed = await remove_all(s)
        log.warning("removed the failed group", containers={k: v for k, v in removed.items() if v},
                    cause=type(exc).__name__)
    except Exception as cleanup_exc:  # cleanup must not hide the original failure
        log.error("cleanup after failure failed", error=str(cleanup_exc))


async def down(s: Session) -> dict[str, list[str]]:
    return await remove_all(s)
