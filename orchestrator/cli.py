"""The `orch` command line: arguments in, `service` does the work, `render` prints.

Exit codes (docs/cli.md):
  0  success: deployed / healthy / removed
  1  failed: a rank died, the deadline passed, the deployment is unhealthy, a node is unreachable
  2  bad input: inventory, playbook or topology invalid - nothing was touched
  3  `orch up --detailed-exitcode` only: the deployment was (re)deployed and now serves
  4  another orch run holds this deployment's lock
  130 interrupted (Ctrl-C / SIGTERM); what this run started was removed
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Optional, TypeVar

import typer

from . import bench as bench_mod
from . import config, render, service
from .cluster import Deployment
from .deploy import UpOptions
from .errors import InputError, OrchError, PreflightFailed
from .log import setup
from .stage.scripts import RSYNC_PORT

T = TypeVar("T")

EXIT_OK, EXIT_FAILED, EXIT_INPUT, EXIT_CHANGED, EXIT_LOCKED, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Deploy vLLM / vLLM-Ascend across several machines over SSH and keep it running.\n\n"
    "Exit codes: 0 ok, 1 failed/unhealthy, 2 bad input (nothing touched), "
    "3 changed (up --detailed-exitcode), 4 locked, 130 interrupted.",
)

InventoryArg = typer.Argument(..., help="inventory YAML file (see inventory.example.yaml)")
OptInventoryArg = typer.Argument(None, help="inventory YAML file; default: the one of the last `orch up`")
JsonOpt = typer.Option(False, "--json", help="print a JSON document on stdout")
QuietOpt = typer.Option(False, "--quiet", "-q", help="only warnings and errors on stderr")
AcceptOpt = typer.Option(
    False, "--accept-new-host-keys",
    help="trust an unknown SSH host key on first use and record it in orch's known_hosts "
    "(a CHANGED key is always refused)")


def run_async(fn: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine; SIGTERM cancels it like Ctrl-C does, so cleanup code runs.

    The result is handed over outside the task: when asyncio.run restores the SIGINT
    handler it formats the repr of its own handler, which names the main task and so its
    result (at 64 nodes a check report's repr took ~40 ms)."""
    out: list[T] = []

    async def main() -> None:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        if task is not None:
            loop.add_signal_handler(signal.SIGTERM, task.cancel)
        out.append(await fn())

    asyncio.run(main())
    return out[0]


def load(path: Optional[Path]) -> Deployment:
    return Deployment.load(service.resolve_inventory(path))


@app.command()
def plan(inventory: Path = InventoryArg, json_out: bool = JsonOpt) -> None:
    """Show what `orch up` would run on every node. Contacts nothing.

    NIC/IP not given in the inventory are detected on the hosts at `orch up` and shown here as
    placeholders. Secrets are read as `orch up` reads them (they fold into the container
    names); where they cannot be read here, a warning says the names differ."""
    fleet = Deployment.load(inventory, secrets_optional=True).plan()
    if json_out:
        render.print_json(fleet.to_json())
    else:
        render.print_plan(fleet)


@app.command()
def up(
    inventory: Path = InventoryArg,
    timeout: float = typer.Option(1800, help="overall deadline in seconds for the group to serve"),
    keep_on_failure: bool = typer.Option(False, help="leave a failed group running for debugging"),
    force: bool = typer.Option(False, help="redeploy even when healthy and unchanged"),
    skip_checks: list[str] = typer.Option(
        [], "--skip-checks", help="skip a preflight check (name or prefix, e.g. ports.free, npu); repeatable"),
    no_checks: bool = typer.Option(False, "--no-checks", help="skip the whole preflight"),
    max_unavailable: Optional[int] = typer.Option(
        None, min=1, help="fleets: replicas replaced at the same time (default: the inventory's "
        "update.max_unavailable, 1)"),
    detailed_exitcode: bool = typer.Option(
        False, "--detailed-exitcode", help="exit 3 (not 0) when something was (re)deployed"),
    stage_first: bool = typer.Option(
        False, "--stage", help="first make the image and the model directory present and "
        "identical on every node (as `orch stage`)"),
    json_out: bool = JsonOpt,
    quiet: bool = QuietOpt,
    accept_new_host_keys: bool = AcceptOpt,
) -> None:
    """Deploy (or repair) the inventory's deployment and wait until it serves.

    Connects to every node, resolves NICs/IPs, removes this deployment's old containers,
    starts the head then the headless ranks, and waits for /v1/models and one completion
    while watching every rank. A rank that exits fails the run at once with its log.
    When everything already runs as planned and answers, it does nothing.

    A fleet (replicas behind vllm-router): the router first; a dead or unhealthy replica is
    taken out of the router, replaced alone, proven and put back; a changed spec rolls
    --max-unavailable replicas at a time and stops, the others still serving, when a new one
    fails."""
    setup(quiet)
    service.check_skips(skip_checks)
    dep = Deployment.load(inventory)
    opts = UpOptions(timeout_s=timeout, keep_on_failure=keep_on_failure, force=force,
                     checks=not no_checks, skip_checks=frozenset(skip_checks),
                     max_unavailable=max_unavailable)
    try:
        with render.transfer_progress("image") as ip, render.transfer_progress("model") as wp:
            res = run_async(lambda: service.up(
                dep, opts, accept_new=accept_new_host_keys,
                stage_first=(service.StageOptions(), ip, wp) if stage_first else None))
    except PreflightFailed as exc:
        if exc.report is not None:
            render.print_report(exc.report)  # type: ignore[arg-type]
        raise
    except (KeyboardInterrupt, asyncio.CancelledError):
        render.print_interrupted()
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if json_out:
        render.print_json({"changed": res.changed, "reason": res.reason,
                           "seconds": round(res.seconds, 1), "api_url": res.api_url,
                           "answer": res.answer, "deployed": res.deployed})
    elif not quiet:
        render.print_up(res)
    raise typer.Exit(EXIT_CHANGED if (res.changed and detailed_exitcode) else EXIT_OK)


@app.command()
def stage(
    inventory: Path = InventoryArg,
    source: Optional[str] = typer.Option(
        None, "--from", help="the node to copy from (default: the first node, in inventory "
        "order, that has the model directory / the image)"),
    weights: bool = typer.Option(True, help="copy the model directory"),
    image: bool = typer.Option(True, help="copy the image to nodes that lack it"),
    port: int = typer.Option(RSYNC_PORT, min=1, max=65535,
                             help="port of the source's temporary rsync daemon"),
    bwlimit: int = typer.Option(0, min=0, help="MB/s per target node (0: no limit)"),
    json_out: bool = JsonOpt,
    accept_new_host_keys: bool = AcceptOpt,
) -> None:
    """Make the model directory and the image present and identical on every node.

    Weights: every file's size and BLAKE2b hash is compared (manifests, cached per node);
    what a node lacks or has different is copied node-to-node over the cluster network with
    rsync (a temporary rsync daemon on the source; the targets pull in parallel) into a
    staging copy beside the final path, verified, then swapped in: the final path is never a
    partial copy, and an interrupted copy resumes at the next run. Free space is checked first.
    Image: `save | load` streamed from a node that has it (no registry needed)."""
    setup(quiet=json_out)
    dep = Deployment.load(inventory)
    names = [n.name for n in dep.inv.nodes]
    if source is not None and source not in names:
        raise InputError(f"--from {source}: not a node of the inventory ({', '.join(names)})")
    opts = service.StageOptions(source=source, weights=weights, image=image, port=port,
                                bwlimit_mb=bwlimit)
    try:
        with render.transfer_progress("image") as ip, render.transfer_progress("model") as wp:
            res = run_async(lambda: service.stage(dep, opts, ip, wp, accept_new=accept_new_host_keys))
    except (KeyboardInterrupt, asyncio.CancelledError):
        render.print_error("interrupted: the final paths are untouched; `orch stage` again resumes")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if json_out:
        render.print_json(res.to_json())
    else:
        render.print_stage(res)
    raise typer.Exit(EXIT_OK)


@app.command()
def check(
    inventory: Path = InventoryArg,
    skip_checks: list[str] = typer.Option([], "--skip-checks", help="skip a check (name or prefix); repeatable"),
    json_out: bool = JsonOpt,
    accept_new_host_keys: bool = AcceptOpt,
) -> None:
    """Preflight: prove the nodes can run the deployment before anything starts. All nodes at
    once: SSH and root, runtime, NIC/IP, ping, API/RPC ports free and reachable, NPUs/GPUs and
    links, image/driver/model the same everywhere, shm/disk, stale state. Exit 0 when nothing
    fails (warnings allowed). Changes nothing."""
    setup(quiet=True)
    service.check_skips(skip_checks)
    dep = Deployment.load(inventory)
    report = run_async(lambda: service.check(dep, frozenset(skip_checks),
                                             accept_new=accept_new_host_keys))
    if json_out:
        render.print_json(report.to_json())
    else:
        render.print_report(report)
    raise typer.Exit(EXIT_FAILED if report.failed else EXIT_OK)


@app.command()
def status(
    inventory: Optional[Path] = OptInventoryArg,
    json_out: bool = JsonOpt,
    requests: bool = typer.Option(True, help="prove every rank serves with a few tiny real requests"),
    watch: Optional[float] = typer.Option(None, help="refresh every SECONDS until Ctrl-C"),
    fresh: bool = typer.Option(
        False, "--fresh", help="connect anew: neither use nor leave a keeper of SSH connections"),
    accept_new_host_keys: bool = AcceptOpt,
) -> None:
    """Per node: container state, uptime, restarts, drift (spec hash vs the inventory) and
    per-rank metrics (running/waiting requests, KV cache, tokens); the API's readiness; and a
    whole-group check (every DP rank must finish a real request). For a fleet: each replica's
    health and the router's view. Exit 0 only when healthy.

    A background keeper then holds the SSH connections for `ssh.persist` seconds (inventory,
    default 120; 0 = never), so the next status reuses them; `orch down` stops it."""
    setup(quiet=True)
    dep = load(inventory)
    if watch:
        with render.live_status() as live:
            try:
                run_async(lambda: service.watch_status(
                    dep, watch, lambda st: render.update_live(live, st), probe=requests,
                    accept_new=accept_new_host_keys))
            except (KeyboardInterrupt, asyncio.CancelledError):
                raise typer.Exit(EXIT_OK) from None
    st = run_async(lambda: service.status(dep, probe=requests, fresh=fresh,
                                          accept_new=accept_new_host_keys))
    if json_out:
        render.print_json(st.to_json())
    else:
        render.print_status(st)
    raise typer.Exit(EXIT_OK if st.healthy else EXIT_FAILED)


@app.command()
def down(inventory: Optional[Path] = OptInventoryArg, quiet: bool = QuietOpt,
         accept_new_host_keys: bool = AcceptOpt) -> None:
    """Stop and remove this deployment's containers on every node (a fleet's router too), and
    its keeper of SSH connections. Safe to repeat."""
    setup(quiet)
    dep = load(inventory)
    removed, unreachable = run_async(lambda: service.down(dep, accept_new=accept_new_host_keys))
    render.print_down(dep.inv.deployment, removed, unreachable)
    raise typer.Exit(EXIT_FAILED if unreachable else EXIT_OK)


@app.command()
def logs(
    node: Optional[str] = typer.Argument(None, help="only this node's containers"),
    inventory: Optional[Path] = typer.Option(None, "--inventory", "-i", help="default: the last `orch up`'s"),
    follow: bool = typer.Option(False, "--follow", "-f", help="keep printing new lines"),
    since: Optional[str] = typer.Option(None, help="only lines since, e.g. 10m or 2026-11-24T10:00:00"),
    tail: int = typer.Option(100, help="lines per container (-1: all)"),
    accept_new_host_keys: bool = AcceptOpt,
) -> None:
    """Logs of every rank, prefixed by node and merged in time."""
    setup(quiet=True)
    dep = load(inventory)
    names = [n.name for n in dep.inv.nodes]
    if node and node not in names:
        raise InputError(f"node {node!r} is not in the inventory ({', '.join(names)})")
    width = max(len(n) for n in names)

    def emit(name: str, text: str) -> None:
        render.emit_log_line(width, name, text)

    try:
        run_async(lambda: service.logs(dep, [node] if node else None, follow=follow, tail=tail,
                                       since=since, emit=emit, accept_new=accept_new_host_keys))
    except (KeyboardInterrupt, asyncio.CancelledError):
        raise typer.Exit(EXIT_OK) from None
    raise typer.Exit(EXIT_OK)


@app.command()
def smoke(
    inventory: Optional[Path] = OptInventoryArg,
    vision: Optional[bool] = typer.Option(None, help="also send an image (default: when the model is a VL model)"),
    max_tokens: int = typer.Option(32, help="tokens per answer"),
    json_out: bool = JsonOpt,
    accept_new_host_keys: bool = AcceptOpt,
) -> None:
    """Functional check through the API: a completion, a chat, and for vision-language models a
    chat with an image (made locally, sent as a data URL). Shows the answers."""
    setup(quiet=True)
    dep = load(inventory)
    results = run_async(lambda: service.smoke(dep, vision, max_tokens,
                                              accept_new=accept_new_host_keys))
    if json_out:
        render.print_json([r.__dict__ for r in results])
    else:
        render.print_smoke(results)
    raise typer.Exit(EXIT_OK if all(r.ok for r in results) else EXIT_FAILED)


@app.command()
def bench(
    inventory: Optional[Path] = OptInventoryArg,
    preset: str = typer.Option("seed-random-200", help="seed-random-200 | seed-perf-3584 | lab-tiny"),
    num_prompts: Optional[int] = typer.Option(None, help="override the preset's prompt count"),
    timeout: float = typer.Option(3600, help="deadline for the benchmark in seconds"),
    json_out: bool = JsonOpt,
    accept_new_host_keys: bool = AcceptOpt,
) -> None:
    """Run `vllm bench serve` inside the head's container; keep the result JSON in the state
    directory; print TTFT / TPOT / throughput next to the seed's reference figures."""
    setup(quiet=True)
    dep = load(inventory)
    result, path = run_async(lambda: service.bench(dep, preset, num_prompts, timeout,
                                                   accept_new=accept_new_host_keys))
    figs = bench_mod.figures(result)
    ref = bench_mod.references(dep.playbook.name, preset)
    if json_out:
        render.print_json({"preset": preset, "result_file": str(path), "figures": figs,
                           "reference": ref})
    else:
        render.print_bench(preset, figs, ref, path)
    raise typer.Exit(EXIT_OK if result.get("failed", 0) == 0 else EXIT_FAILED)


@app.command()
def playbooks() -> None:
    """List the playbooks orch knows (playbooks/, its pd/ subfolder, $ORCH_PLAYBOOK_PATH and the
    playbooks/ folder beside an inventory)."""
    render.print_playbooks(config.list_playbooks())


try:
    from .lab.cli import lab_app

    app.add_typer(lab_app, name="lab", help="A local multi-host lab (network namespaces) to try orch on.")
except ImportError:  # pragma: no cover - the lab is optional
    pass


def main() -> None:
    try:
        app()
    except OrchError as exc:
        render.print_error(str(exc))
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, asyncio.CancelledError):
        render.print_interrupted()
        sys.exit(EXIT_INTERRUPTED)
