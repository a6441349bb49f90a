"""What each command does, between the CLI (arguments, rendering, exit codes) and the
machinery (cluster, deploy, preflight, status, stage): the deployment lock, the run
history, the keeper of SSH connections, and opening and closing the session with the nodes.
Nothing here prints."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import bench as bench_mod
from . import keeper, state
from . import logs as logs_mod
from .cluster import Deployment, Session, connected
from .deploy import UpOptions, UpResult
from .deploy import down as deploy_down
from .deploy import up as deploy_up
from .errors import InputError, OrchError
from .log import log
from .preflight import CHECKS, Report, run_checks, unknown_skips
from .probe import Api
from .smoke import SmokeResult, run_smoke
from .snapshot import Snapshot
from .stage.images import ImageResult, stage_image
from .stage.scripts import RSYNC_PORT
from .stage.weights import Progress, WeightsResult, stage_weights
from .status import Status, deployment_status


@dataclass(frozen=True)
class StageOptions:
    source: str | None = None  # the node to copy from (default: the first that has it)
    weights: bool = True
    image: bool = True
    port: int = RSYNC_PORT  # the source's temporary rsync daemon
    bwlimit_mb: int = 0  # MB/s per target (0: no limit)


@dataclass
class StageResult:
    image: ImageResult | None = None
    weights: WeightsResult | None = None

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {}
        if self.image is not None:
            i = self.image
            out["image"] = {"image": i.image, "source": i.source, "copied": i.copied,
                            "present": i.present, "bytes": i.bytes, "seconds": round(i.seconds, 2)}
        if self.weights is not None:
            w = self.weights
            out["weights"] = {
                "source": w.source, "manifest": w.reference.digest, "files": len(w.reference.files),
                "bytes": w.reference.bytes, "identical": w.identical, "seconds": round(w.seconds, 2),
                "copies": [{"node": c.node, "copied": c.fetch, "linked": len(c.keep),
                            "removed": c.extra, "bytes": c.bytes, "seconds": round(c.seconds, 2)}
                           for c in w.copies]}
        return out


def resolve_inventory(path: Path | None) -> Path:
    """The inventory given, else the one of the last `orch up`."""
    if path is not None:
        return path
    last = state.last_inventory()
    if last is None:
        raise InputError("no inventory given and no earlier `orch up` remembered; pass INVENTORY")
    if not last.is_file():
        raise InputError(f"the inventory of the last `orch up` ({last}) no longer exists; pass INVENTORY")
    return last


def check_skips(skip: list[str]) -> None:
    bad = unknown_skips(skip)
    if bad:
        raise InputError(f"--skip-checks {', '.join(bad)}: no such check; checks: {', '.join(CHECKS)}")


async def stage_on(s: Session, opts: StageOptions, image_progress: Progress,
                   weights_progress: Progress) -> StageResult:
    out = StageResult()
    if opts.image:
        out.image = await stage_image(s, source=opts.source, progress=image_progress)
    if opts.weights and s.dep.inv.model.path.startswith("/"):
        out.weights = await stage_weights(s, source=opts.source, port=opts.port,
                                          bwlimit_kb=opts.bwlimit_mb * 1000, progress=weights_progress)
    return out


async def stage(dep: Deployment, opts: StageOptions, image_progress: Progress,
                weights_progress: Progress, *, accept_new: bool = False) -> StageResult:
    """The image and the model directory present and identical on every node."""
    name = dep.inv.deployment
    with state.DeploymentLock(name):
        async with connected(dep, accept_new=accept_new) as s:
            res = await stage_on(s, opts, image_progress, weights_progress)
    state.append_history(name, {"action": "stage", "result": "done",
                                "image_copied": res.image.copied if res.image else [],
                                "model_copied": [c.node for c in res.weights.copies] if res.weights else []})
    return res


async def up(dep: Deployment, opts: UpOptions, *, accept_new: bool = False,
             stage_first: tuple[StageOptions, Progress, Progress] | None = None) -> UpResult:
    """Deploy or repair under the deployment's lock (staging the image and weights first, when
    asked); the result goes into the history."""
    name = dep.inv.deployment
    with state.DeploymentLock(name):
        try:
            async with connected(dep, accept_new=accept_new) as s:
                if stage_first is not None:
                    await stage_on(s, *stage_first)
                res = await deploy_up(s, opts)
        except OrchError as exc:
            state.append_history(name, {"action": "up", "result": "failed", "error": str(exc)[:500]})
            raise
        except (KeyboardInterrupt, asyncio.CancelledError):
            state.append_history(name, {"action": "up", "result": "interrupted"})
            raise
    state.remember_inventory(dep.inventory_path)
    state.append_history(name, {"action": "up", "changed": res.changed, "reason": res.reason,
                                "seconds": round(res.seconds, 1), "result": "serving",
                                "deployed": res.deployed})
    return res


async def down(dep: Deployment, *, accept_new: bool = False
               ) -> tuple[dict[str, list[str]], dict[str, BaseException]]:
    """Stop the keeper, remove every container of the deployment; (removed per node, the
    nodes not reached)."""
    stopped = keeper.stop(dep.inv.deployment)
    if stopped:
        log.info("stopped the keeper of SSH connections", pids=stopped)
    async with connected(dep, require_all=False, accept_new=accept_new) as s:
        with state.DeploymentLock(dep.inv.deployment):
            removed = await deploy_down(s)
        return removed, dict(s.unreachable)


async def check(dep: Deployment, skip: frozenset[str], *, accept_new: bool = False) -> Report:
    async with connected(dep, require_all=False, accept_new=accept_new) as s:
        # planned without the nodes' facts: the preflight's gather reads them (one exec per
        # node fewer) and plans again with them
        return await run_checks(s, dep.plan(), skip, replan=True)


async def snapshot(dep: Deployment, *, fresh: bool = False, accept_new: bool = False) -> Snapshot:
    """One look at every node: through this deployment's keeper when one lives (and may be
    used), else over fresh connections, after which a keeper is left for `ssh.persist` s."""
    keep = not (fresh or accept_new) and keeper.usable(dep)
    snap = await keeper.snapshot(dep) if keep else None
    if snap is None:
        async with connected(dep, require_all=False, accept_new=accept_new) as s:
            snap = await s.snapshot()
        if keep and snap.looks:  # a keeper of no connection would only retry and leave
            keeper.spawn(dep)
    return snap


async def status(dep: Deployment, *, probe: bool = True, fresh: bool = False,
                 accept_new: bool = False) -> Status:
    return await deployment_status(dep, await snapshot(dep, fresh=fresh, accept_new=accept_new),
                                   probe)


async def watch_status(dep: Deployment, every: float, show: Callable[[Status], None], *,
                       probe: bool = True, accept_new: bool = False) -> None:
    """Status every `every` seconds over kept connections, until cancelled."""
    async with connected(dep, require_all=False, accept_new=accept_new) as s:
        while True:
            show(await deployment_status(dep, await s.snapshot(kept=True), probe))
            await asyncio.sleep(every)


async def logs(dep: Deployment, nodes: list[str] | None, *, follow: bool, tail: int,
               since: str | None, emit: Callable[[str, str], None], accept_new: bool = False) -> None:
    async with connected(dep, require_all=False, accept_new=accept_new) as s:
        for bad, err in s.unreachable.items():
            emit(bad, f"[orch] unreachable: {err}")
        if follow:
            await logs_mod.follow(s, nodes, tail, emit)
        else:
            for _, name, text in await logs_mod.collect(s, nodes, tail, since):
                emit(name, text)


async def smoke(dep: Deployment, vision: bool | None, max_tokens: int, *,
                accept_new: bool = False) -> list[SmokeResult]:
    async with connected(dep, accept_new=accept_new) as s:
        fleet = await s.plan()
    g = fleet.groups[0]
    async with Api(fleet.api_url, dep.api_key, timeout=60) as api:
        return await run_smoke(api, fleet.served_name, g.model, vision, max_tokens)


async def bench(dep: Deployment, preset: str, num_prompts: int | None, timeout: float, *,
                accept_new: bool = False) -> tuple[dict[str, object], Path]:
    async with connected(dep, accept_new=accept_new) as s:
        fleet = await s.plan()
        return await bench_mod.run_in_head(s, fleet, preset, num_prompts, timeout)
