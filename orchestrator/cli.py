"""The `orch` command line.

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
import json
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Optional, TypeVar

import typer

from . import config, state
from . import bench as bench_mod
from . import logs as logs_mod
from .probe import Api
from .smoke import run_smoke
from .cluster import Deployment, open_session
from .deploy import down as do_down
from .deploy import up as do_up
from .errors import InputError, OrchError
from .log import log, setup
from .secrets import mask
from .render import console, err_console, print_plan, print_status, status_table
from .status import deployment_status

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
    """Run a coroutine; SIGTERM cancels it like Ctrl-C does, so cleanup code runs."""

    async def main() -> T:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        if task is not None:
            loop.add_signal_handler(signal.SIGTERM, task.cancel)
        return await fn()

    return asyncio.run(main())


def resolve_inventory(path: Optional[Path]) -> Path:
    if path is not None:
        return path
    last = state.last_inventory()
    if last is None:
        raise InputError("no inventory given and no earlier `orch up` remembered; pass INVENTORY")
    if not last.is_file():
        raise InputError(f"the inventory of the last `orch up` ({last}) no longer exists; pass INVENTORY")
    return last


@app.command()
def plan(inventory: Path = InventoryArg, json_out: bool = JsonOpt) -> None:
    """Show what `orch up` would run on every node. Contacts nothing.

    NIC/IP not given in the inventory are detected on the hosts at `orch up` and shown here as
    placeholders."""
    dep = Deployment.load(inventory, with_secrets=False)
    p = dep.static_plan()
    if json_out:
        print(json.dumps(p.to_json(), indent=2))
    else:
        print_plan(p)


@app.command()
def up(
    inventory: Path = InventoryArg,
    timeout: float = typer.Option(1800, help="overall deadline in seconds for the group to serve"),
    keep_on_failure: bool = typer.Option(False, help="leave a failed group running for debugging"),
    force: bool = typer.Option(False, help="redeploy even when healthy and unchanged"),
    skip_checks: list[str] = typer.Option(
        [], "--skip-checks", help="skip a preflight check (name or prefix, e.g. ports.free, npu); repeatable"),
    no_checks: bool = typer.Option(False, "--no-checks", help="skip the whole preflight"),
    detailed_exitcode: bool = typer.Option(
        False, "--detailed-exitcode", help="exit 3 (not 0) when something was (re)deployed"),
    json_out: bool = JsonOpt,
    quiet: bool = QuietOpt,
    accept_new_host_keys: bool = AcceptOpt,
) -> None:
    """Deploy (or repair) the inventory's deployment and wait until it serves.

    Connects to every node, resolves NICs/IPs, removes this deployment's old containers,
    starts the head then the headless ranks, and waits for /v1/models and one completion
    while watching every rank. A rank that exits fails the run at once with its log.
    When everything already runs as planned and answers, it does nothing."""
    setup(quiet)
    check_skips(skip_checks)
    dep = Deployment.load(inventory)
    name = dep.inv.deployment

    async def go() -> int:
        s = await open_session(dep, accept_new=accept_new_host_keys)
        try:
            res = await do_up(s, timeout_s=timeout, keep_on_failure=keep_on_failure, force=force,
                              checks=not no_checks, skip_checks=frozenset(skip_checks))
        finally:
            s.close()
        state.remember_inventory(inventory)
        state.append_history(name, {"action": "up", "changed": res.changed, "reason": res.reason,
                                    "seconds": round(res.seconds, 1), "result": "serving"})
        if json_out:
            print(json.dumps({"changed": res.changed, "reason": res.reason, "seconds": round(res.seconds, 1),
                              "api_url": res.plan.api_url, "answer": res.answer}))
        elif not quiet:
            verb = "deployed" if res.changed else "nothing to do"
            console.print(f"{verb}: {res.plan.deployment} serves {res.plan.served_name!r} at "
                          f"{res.plan.api_url} ({res.reason}; {res.seconds:.1f}s)")
        return EXIT_CHANGED if (res.changed and detailed_exitcode) else EXIT_OK

    with state.DeploymentLock(name):
        try:
            code = run_async(go)
        except OrchError as exc:
            state.append_history(name, {"action": "up", "result": "failed", "error": str(exc)[:500]})
            raise
        except (KeyboardInterrupt, asyncio.CancelledError):
            state.append_history(name, {"action": "up", "result": "interrupted"})
            print("orch: interrupted; what this run started was removed", file=sys.stderr)
            raise typer.Exit(EXIT_INTERRUPTED) from None
    raise typer.Exit(code)


def check_skips(skip: list[str]) -> None:
    from .preflight import CHECKS, unknown_skips

    bad = unknown_skips(skip)
    if bad:
        raise InputError(f"--skip-checks {', '.join(bad)}: no such check; checks: {', '.join(CHECKS)}")


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
    from .preflight import print_report, run_checks

    setup(quiet=True)
    check_skips(skip_checks)
    dep = Deployment.load(inventory)

    async def go() -> int:
        s = await open_session(dep, require_all=False, accept_new=accept_new_host_keys)
        try:
            p = await s.plan(tolerant=True)
            report = await run_checks(s, p, frozenset(skip_checks))
        finally:
            s.close()
        if json_out:
            print(json.dumps(report.to_json(), indent=2))
        else:
            print_report(report)
        return EXIT_FAILED if report.failed else EXIT_OK

    raise typer.Exit(run_async(go))


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
    whole-group check (every DP rank must finish a real request). Exit 0 only when healthy.

    A background keeper then holds the SSH connections for `ssh.persist` seconds (inventory,
    default 120; 0 = never), so the next status reuses them; `orch down` stops it."""
    from . import keeper

    setup(quiet=True)
    path = resolve_inventory(inventory)
    dep = Deployment.load(path)
    keep = not (fresh or watch or accept_new_host_keys) and keeper.usable(dep)

    async def watch_loop(every: float) -> None:
        from rich.live import Live

        s = await open_session(dep, require_all=False, accept_new=accept_new_host_keys)
        try:
            with Live(console=console, auto_refresh=False) as live:
                while True:
                    st = await deployment_status(dep, await s.snapshot(kept=True), requests)
                    live.update(status_table(st), refresh=True)
                    await asyncio.sleep(every)
        finally:
            s.close()

    async def go() -> int:
        if watch:
            await watch_loop(watch)
        snap = await keeper.snapshot(dep) if keep else None
        if snap is None:
            s = await open_session(dep, require_all=False, accept_new=accept_new_host_keys)
            try:
                snap = await s.snapshot()
            finally:
                s.close()
            if keep and snap.looks:  # a keeper of no connection would only retry and leave
                keeper.spawn(dep)
        st = await deployment_status(dep, snap, requests)
        if json_out:
            print(json.dumps(st.to_json(), indent=2))
        else:
            print_status(st)
        return EXIT_OK if st.healthy else EXIT_FAILED

    try:
        raise typer.Exit(run_async(go))
    except KeyboardInterrupt:
        if not watch:
            raise
        raise typer.Exit(EXIT_OK) from None


@app.command()
def down(inventory: Optional[Path] = OptInventoryArg, quiet: bool = QuietOpt,
         accept_new_host_keys: bool = AcceptOpt) -> None:
    """Stop and remove this deployment's containers on every node, and its keeper of SSH
    connections. Safe to repeat."""
    from . import keeper

    setup(quiet)
    path = resolve_inventory(inventory)
    dep = Deployment.load(path)

    async def go() -> int:
        stopped = keeper.stop(dep.inv.deployment)
        if stopped:
            log.info("stopped the keeper of SSH connections", pids=stopped)
        s = await open_session(dep, require_all=False, accept_new=accept_new_host_keys)
        try:
            with state.DeploymentLock(dep.inv.deployment):
                removed = await do_down(s)
        finally:
            s.close()
        total = sum(len(v) for v in removed.values())
        if total == 0 and not s.unreachable:
            console.print(f"nothing to remove: no container of {dep.inv.deployment} on any node")
        for node, names in removed.items():
            if names:
                console.print(f"{node}: removed {', '.join(names)}")
        for node, err in s.unreachable.items():
            err_console.print(f"[red]{node}: not reached, nothing removed there:[/] {mask(str(err))}",
                              highlight=False)
        return EXIT_FAILED if s.unreachable else EXIT_OK

    raise typer.Exit(run_async(go))


@app.command()
def logs(
    node: Optional[str] = typer.Argument(None, help="only this node's rank"),
    inventory: Optional[Path] = typer.Option(None, "--inventory", "-i", help="default: the last `orch up`'s"),
    follow: bool = typer.Option(False, "--follow", "-f", help="keep printing new lines"),
    since: Optional[str] = typer.Option(None, help="only lines since, e.g. 10m or 2026-11-24T10:00:00"),
    tail: int = typer.Option(100, help="lines per rank (-1: all)"),
    accept_new_host_keys: bool = AcceptOpt,
) -> None:
    """Logs of every rank, prefixed by node and merged in time."""
    setup(quiet=True)
    dep = Deployment.load(resolve_inventory(inventory))
    names = [node] if node else None
    if node and node not in {n.name for n in dep.inv.nodes}:
        raise InputError(f"node {node!r} is not in the inventory ({', '.join(n.name for n in dep.inv.nodes)})")
    width = max(len(n.name) for n in dep.inv.nodes)

    def emit(name: str, text: str) -> None:
        print(f"{name:<{width}} | {mask(text)}", flush=True)

    async def go() -> int:
        s = await open_session(dep, require_all=False, accept_new=accept_new_host_keys)
        for bad, err in s.unreachable.items():
            emit(bad, f"[orch] unreachable: {err}")
        try:
            if follow:
                await logs_mod.follow(s, names, tail, emit)
            else:
                for _, name, text in await logs_mod.collect(s, names, tail, since):
                    emit(name, text)
        finally:
            s.close()
        return EXIT_OK

    raise typer.Exit(run_async(go))


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
    dep = Deployment.load(resolve_inventory(inventory))

    async def go() -> int:
        s = await open_session(dep, accept_new=accept_new_host_keys)
        try:
            p = await s.plan()
        finally:
            s.close()
        async with Api(p.api_url, dep.api_key, timeout=60) as api:
            results = await run_smoke(api, p.served_name, p.model, vision, max_tokens)
        if json_out:
            print(json.dumps([r.__dict__ for r in results], indent=2))
        else:
            for r in results:
                mark = "[green]ok[/]  " if r.ok else "[red]FAIL[/]"
                console.print(f"{mark} {r.check:<11} {r.seconds:5.2f}s  "
                              f"{(repr(r.answer) if r.ok else r.error)[:300]}")
        return EXIT_OK if all(r.ok for r in results) else EXIT_FAILED

    raise typer.Exit(run_async(go))


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
    dep = Deployment.load(resolve_inventory(inventory))

    async def go() -> int:
        s = await open_session(dep, accept_new=accept_new_host_keys)
        try:
            p = await s.plan()
            result, path = await bench_mod.run_in_head(s, p, preset, num_prompts, timeout)
        finally:
            s.close()
        figs = bench_mod.figures(result)
        ref = bench_mod.references(p.playbook, preset)
        if json_out:
            print(json.dumps({"preset": preset, "result_file": str(path), "figures": figs, "reference": ref}, indent=2))
        else:
            from rich.table import Table

            t = Table(title=f"vllm bench serve, preset {preset}", title_justify="left")
            t.add_column("figure")
            t.add_column("measured", justify="right")
            t.add_column("seed reference", justify="right")
            t.add_column("ratio", justify="right")
            for k, v in figs.items():
                rv = (ref or {}).get(k)
                t.add_row(k, f"{v:.2f}", f"{rv:.2f}" if rv else "-", f"{v / rv:.2f}" if rv else "-")
            console.print(t)
            console.print(f"result: {path}")
        return EXIT_OK if result.get("failed", 0) == 0 else EXIT_FAILED

    raise typer.Exit(run_async(go))


@app.command()
def playbooks() -> None:
    """List the playbooks orch knows."""
    for path, pb in config.list_playbooks():
        console.print(f"[bold]{pb.name}[/]  ({pb.profile}, {pb.topology})  {pb.description}")
        console.print(f"    {path}", highlight=False)


try:
    from .lab.cli import lab_app

    app.add_typer(lab_app, name="lab", help="A local multi-host lab (network namespaces) to try orch on.")
except ImportError:  # pragma: no cover - the lab is optional
    pass


def main() -> None:
    try:
        app()
    except OrchError as exc:
        print(f"orch: error: {mask(str(exc))}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("orch: interrupted; what this run started was removed", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
