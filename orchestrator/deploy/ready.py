"""The one readiness loop: until the group's API is ready (the topology says what ready
means), every container of the group is watched, so a rank that stops fails the wait at
once, named, with its log; then one real completion proves it."""

from __future__ import annotations

import time

from ..cluster import Session
from ..errors import DeployError, NotReady, RankExited, ReadinessTimeout
from ..log import log
from ..plan import Plan
from ..probe import Api, ProbeError
from ..retry import RetryCallState, poll
from .launchers import POLL_S, Launcher
from .watch import last_lines, watch

PROGRESS_S = 15.0
# several tokens: vLLM's ExampleConnector (the lab's PD connector) breaks the decode
# instance on a one-token prompt (a negative KV block count)
READY_PROMPT = "The capital of France is"


async def wait_ready(s: Session, plan: Plan, launcher: Launcher, deadline: float,
                     api_key: str | None) -> str:
    """Poll until ready (or a container stops, or the deadline); the proof's answer."""
    t0 = time.monotonic()
    next_note = [t0 + PROGRESS_S]

    async def progress(_: RetryCallState) -> None:
        now = time.monotonic()
        if now >= next_note[0]:
            next_note[0] = now + PROGRESS_S
            for node, line in (await last_lines(s, plan.nodes)).items():
                log.info("waiting", node=node, elapsed_s=round(now - t0), last_log=line)

    try:
        async for attempt in poll(until=deadline, every=POLL_S, on_wait=progress):
            with attempt:
                failures = await watch(s, plan.nodes)
                if failures:
                    raise RankExited(failures)
                ok, reason = await launcher.ready(plan, api_key)
                if not ok:
                    raise NotReady(reason)
    except NotReady as exc:
        raise ReadinessTimeout(
            f"{plan.api_url} not ready after {time.monotonic() - t0:.0f}s (last: {exc.reason}); "
            "every container was still running - see `orch logs`") from exc
    log.info("api ready", url=plan.api_url, model=plan.served_name,
             waited_s=round(time.monotonic() - t0, 1))
    return await prove(plan, api_key, deadline)


async def prove(plan: Plan, api_key: str | None, deadline: float) -> str:
    """One completion through the group's API; its text."""
    async with Api(plan.api_url, api_key) as api:
        try:
            return await api.complete(plan.served_name, prompt=READY_PROMPT,
                                      timeout=max(10.0, deadline - time.monotonic()))
        except ProbeError as exc:
            raise DeployError(f"{plan.api_url} lists the model but a completion failed: "
                              f"{exc.reason}") from exc
