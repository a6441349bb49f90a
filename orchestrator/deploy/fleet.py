"""A fleet's router and its worker list, and the order in which groups are replaced.

    deploy_router   (re)start the router's container when it is missing or drifted, wait
                    until it answers; it starts with no worker
    sync_workers    the router routes to exactly the replicas that serve: add the missing,
                    remove the ones not planned or not serving
    batches         groups that serve nothing go first, all at once (there is no capacity
                    to keep); serving groups that must change go `max_unavailable` at a time,
                    each taken out of the router before it is replaced and put back once it
                    is proven
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from ..cluster import Session
from ..errors import DeployError, NotReady, ProbeError, RankExited
from ..log import log
from ..plan import Fleet, Plan
from ..probe import RouterApi
from ..retry import poll
from .containers import remove, router_select
from .launch import Launches
from .launchers import POLL_S
from .watch import watch

ROUTER_READY_S = 120.0


@dataclass(frozen=True)
class Todo:
    plan: Plan
    why: str
    existing: int  # containers of the group found now
    serving: bool  # its API answers now (it is capacity worth keeping while replacing others)


def batches(todo: Sequence[Todo], max_unavailable: int) -> list[list[Todo]]:
    """The order of replacement: every group that serves nothing at once, then the serving
    ones `max_unavailable` at a time."""
    down = [t for t in todo if not t.serving]
    up = [t for t in todo if t.serving]
    out = [down] if down else []
    return out + [up[i:i + max_unavailable] for i in range(0, len(up), max_unavailable)]


async def deploy_router(s: Session, fleet: Fleet, keep_on_failure: bool, deadline: float) -> None:
    """Replace the router's container (missing, stopped or drifted); wait until it answers.
    It starts with no worker: sync_workers gives it the serving replicas."""
    r = fleet.router
    assert r is not None
    for node, gone in (await remove(s, [r.name], router_select)).items():
        if gone:
            log.info("removed the old router", node=node, containers=gone)
    async with Launches(s, fleet.deployment, [r.name], keep_on_failure, router_select) as launches:
        await launches.start(r)
        await wait_router(s, fleet, deadline)
    log.info("router serving", node=r.name, url=r.api_url)


async def router_workers(fleet: Fleet) -> list[str] | None:
    """What the router routes to now; None when it does not answer."""
    assert fleet.router is not None and fleet.router.api_url is not None
    async with RouterApi(fleet.router.api_url) as api:
        try:
            return await api.workers()
        except ProbeError:
            return None


async def sync_workers(fleet: Fleet, serving: Sequence[Plan]) -> tuple[list[str], list[str]]:
    """Make the router route to exactly the serving groups' APIs; (added, removed)."""
    assert fleet.router is not None and fleet.router.api_url is not None
    want = [g.api_url for g in serving]
    async with RouterApi(fleet.router.api_url) as api:
        have = await api.workers()
        added = [u for u in want if u not in have]
        removed = [u for u in have if u not in want]
        for u in removed:
            await api.remove(u)
        for u in added:
            await api.add(u)
    if added or removed:
        log.info("router workers", added=added, removed=removed, now=want)
    return added, removed


async def take_out(fleet: Fleet, plan: Plan) -> None:
    if fleet.router is None:
        return
    assert fleet.router.api_url is not None
    async with RouterApi(fleet.router.api_url) as api:
        try:
            if plan.api_url in await api.workers():
                await api.remove(plan.api_url)
                log.info("took the replica out of the router", replica=plan.replica, url=plan.api_url)
        except ProbeError as exc:  # a router that does not answer routes nothing there either
            log.warning("router not reached while taking a replica out", error=exc.reason)


async def put_back(fleet: Fleet, plan: Plan) -> None:
    if fleet.router is None:
        return
    assert fleet.router.api_url is not None
    async with RouterApi(fleet.router.api_url) as api:
        await api.add(plan.api_url)
        if plan.api_url not in await api.workers():
            raise DeployError(f"the router at {fleet.router.api_url} did not take {plan.api_url}")
    log.info("put the replica back into the router", replica=plan.replica, url=plan.api_url)


async def wait_router(s: Session, fleet: Fleet, deadline: float) -> None:
    """Until the router's container runs and its API answers."""
    r = fleet.router
    assert r is not None and r.api_url is not None
    try:
        async for attempt in poll(until=min(deadline, time.monotonic() + ROUTER_READY_S), every=POLL_S / 4):
            with attempt:
                failures = await watch(s, [r])
                if failures:
                    raise RankExited(failures)
                async with RouterApi(r.api_url, timeout=5) as api:
                    try:
                        await api.workers()
                    except ProbeError as exc:
                        raise NotReady(exc.reason) from exc
    except NotReady as exc:
        raise DeployError(f"the router on {r.name} does not answer at {r.api_url}: {exc.reason}") from exc
