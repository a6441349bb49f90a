"""Everything orch prints: plans, status tables, preflight reports, results (rich), JSON
documents, and the one-line errors of the CLI.  Logs (progress) go through log.py."""

from __future__ import annotations

import json
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, DownloadColumn, TaskID, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.progress import Progress as RichProgress
from rich.table import Table

from .log import log
from .plan import Fleet, Plan
from .preflight.report import CHECKS, SKIPPED_REASON, Report
from .secrets import mask
from .status import GroupStatus, NodeStatus, Status

if TYPE_CHECKING:
    from .deploy import UpResult
    from .playbook import Playbook
    from .service import StageResult
    from .smoke import SmokeResult

console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() else 200)


def print_json(doc: object) -> None:
    print(json.dumps(doc, indent=2), flush=True)


def print_error(message: str) -> None:
    print(f"orch: error: {mask(message)}", file=sys.stderr, flush=True)


def print_interrupted() -> None:
    print("orch: interrupted; what this run started was removed", file=sys.stderr, flush=True)


# --- plan --------------------------------------------------------------------------------

def command_lines(argv: list[str]) -> str:
    """A command as a shell would take it: quoted once, one option (with its value) per line."""
    groups: list[list[str]] = []
    for a in argv:
        last = groups[-1] if groups else None
        if last and not a.startswith("-") and (
            (last[0].startswith("-") and len(last) == 1) or not last[0].startswith("-")
        ):
            last.append(a)
        else:
            groups.append([a])
    return " \\\n    ".join(" ".join(shlex.quote(x) for x in g) for g in groups)


def _ranks(r: tuple[int, ...]) -> str:
    if not r:
        return "no DP rank"
    return f"DP ranks {r[0]}..{r[-1]}"


def print_group(plan: Plan) -> None:
    c = console
    for w in plan.warnings:
        c.print(f"[yellow]warning:[/] {w}")
    for n in plan.nodes:
        c.print()
        c.print(f"[bold]# {n.name}[/]: {n.role}, {_ranks(n.ranks)}, ssh {n.host}, NIC {n.nic}, "
                f"IP {n.ip}, spec {n.spec_hash}")
        if n.secret_env:
            c.print(f"  secrets on stdin (--env-file /dev/stdin): {', '.join(n.secret_env)}")
        c.print(command_lines(n.argv), markup=False, highlight=False, soft_wrap=True)


def print_plan(fleet: Fleet) -> None:
    c = console
    g0 = fleet.groups[0]
    c.print(f"[bold]deployment[/] {fleet.deployment}  playbook {g0.playbook}  runtime {g0.runtime}")
    c.print(f"image {g0.image}")
    c.print(f"model {g0.model} served as {g0.served_name!r} at {fleet.api_url}")
    for w in fleet.warnings:
        c.print(f"[yellow]warning:[/] {w}")
    if fleet.unresolved:
        c.print(f"[yellow]note:[/] NIC/IP of {', '.join(fleet.unresolved)} are detected on the "
                "host at `orch up`; shown as placeholders")
    for g in fleet.groups:
        if fleet.is_fleet:
            c.print()
            c.print(f"[bold]## replica {g.replica}[/]: {g.topology} on "
                    f"{', '.join(g.node_names())}, API {g.api_url}")
        print_group(g)
    if fleet.router is not None:
        r = fleet.router
        c.print()
        c.print(f"[bold]## router[/] on {r.name}: {r.api_url} in front of "
                f"{', '.join(g.api_url for g in fleet.groups)}, spec {r.spec_hash}")
        c.print(command_lines(r.argv), markup=False, highlight=False, soft_wrap=True)


# --- status ------------------------------------------------------------------------------

def _age(s: int | None) -> str:
    if s is None:
        return "-"
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def _sum(n: NodeStatus, key: str) -> float | None:
    vals = [m[key] for m in n.metrics.values() if key in m]
    return sum(vals) if vals else None


def status_table(st: Status) -> Table:
    t = Table(title=f"deployment {st.deployment}", title_justify="left")
    fleet = len(st.groups) > 1 or st.router is not None
    cols = (["replica"] if fleet else []) + [
        "node", "role", "ranks", "container", "state", "up", "restarts", "spec", "drift",
        "run/wait", "kv cache", "tokens out"]
    for col in cols:
        t.add_column(col)
    for n in st.nodes:
        state = n.state if not n.error else f"{n.state}: {n.error[:60]}"
        color = "green" if n.healthy else "red"
        run, wait = _sum(n, "running"), _sum(n, "waiting")
        kv = [m["kv_cache"] for m in n.metrics.values() if "kv_cache" in m]
        gen = _sum(n, "gen_tokens")
        row = [
            n.name, n.role, ",".join(map(str, n.ranks)), n.container or "-", f"[{color}]{state}[/]",
            _age(n.uptime_s), str(n.restarts), (n.spec_hash or "-")[:8], "[red]yes[/]" if n.drift else "no",
            f"{run:.0f}/{wait:.0f}" if run is not None and wait is not None else "-",
            f"{max(kv) * 100:.1f}%" if kv else "-", f"{gen:.0f}" if gen is not None else "-"]
        t.add_row(*(([str(n.replica) if n.replica is not None else "-"] if fleet else []) + row))
    return t


def _group_line(g: GroupStatus, label: str) -> None:
    api = "[green]ready[/]" if g.api_ready else f"[red]not ready[/] ({g.api_reason})"
    console.print(f"{label}API {g.api_url}: {api}; vLLM {g.version or '?'}", highlight=False)
    if g.group_ok is not None:
        console.print(f"{label}ranks: {'[green]' if g.group_ok else '[red]'}{g.group_reason}[/]",
                      highlight=False)


def print_status(st: Status) -> None:
    console.print(status_table(st))
    if len(st.groups) == 1 and st.router is None:
        _group_line(st.groups[0], "")
        console.print(f"model {st.served_model!r}")
    else:
        for g in st.groups:
            verdict = "[green]healthy[/]" if g.healthy else "[red]unhealthy[/]"
            console.print(f"replica {g.replica}: {verdict}")
            _group_line(g, "  ")
    if st.router is not None:
        r = st.router
        ans = "[green]answers[/]" if r.answers else f"[red]does not answer[/] ({r.reason})"
        console.print(f"router {r.url}: {ans}; routes to {', '.join(r.workers) or 'nothing'}"
                      + ("" if sorted(r.workers) == sorted(r.expected) else
                         f" [red](healthy replicas: {', '.join(r.expected) or 'none'})[/]"),
                      highlight=False)
    verdict = "[green]healthy[/]" if st.healthy else "[red]unhealthy[/]"
    console.print(f"deployment: {verdict}" + (" [yellow](drift: the inventory changed)[/]" if st.drift else ""))
    cli = [n.name for n in st.nodes if n.containers_via == "cli"]
    note = f"; container state read with the CLI on {', '.join(cli)} (runtime socket not reachable)" if cli else ""
    console.print(f"[dim]nodes reached through {st.via}{note}[/]", highlight=False)


@contextmanager
def live_status() -> Iterator[Live]:
    with Live(console=console, auto_refresh=False) as live:
        yield live


def update_live(live: Live, st: Status) -> None:
    live.update(status_table(st), refresh=True)


# --- preflight ---------------------------------------------------------------------------

_STYLE = {"pass": "[green]pass[/]", "warn": "[yellow]warn[/]", "fail": "[bold red]FAIL[/]"}


_NAMES_SHOWN = 8  # nodes named per status in the summary table; the rest are counted


def _names(ns: list[str]) -> str:
    more = len(ns) - _NAMES_SHOWN
    return ", ".join(ns[:_NAMES_SHOWN]) + (f" and {more} more" if more > 0 else "")


def print_report(report: Report) -> None:
    """A table (one row per check, one column per node; when the nodes do not fit the width,
    one row per check that counts the nodes per status and names those that did not pass),
    then one line per failure and per warning with its reason and fix, then the verdict."""
    nodes = list(dict.fromkeys(r.node for r in report.results))
    present = {r.check for r in report.results}
    checks = [c for c in CHECKS if c in present]
    checks += sorted(present - set(checks))
    cell = {(r.node, r.check): r.status for r in report.results}
    t = Table(title="preflight", title_justify="left")
    t.add_column("check")
    width = max(len(c) for c in checks) + 4 + sum(max(len(n), 4) + 3 for n in nodes) if checks else 0
    if width <= console.width:
        for n in nodes:
            t.add_column(n, justify="center")
        for c in checks:
            t.add_row(c, *(_STYLE[cell[(n, c)]] if (n, c) in cell else "[dim]·[/]" for n in nodes))
    else:
        t.add_column(f"{len(nodes)} nodes")
        for c in checks:
            by: dict[str, list[str]] = {}
            for n in nodes:
                if (n, c) in cell:
                    by.setdefault(cell[(n, c)], []).append(n)
            parts = [f"{_STYLE[st]} {len(by[st])}" + (f" ({_names(by[st])})" if st != "pass" else "")
                     for st in ("fail", "warn", "pass") if st in by]
            if missing := len(nodes) - sum(len(v) for v in by.values()):  # not run there
                parts.append(f"[dim]· {missing}[/]")
            t.add_row(c, "  ".join(parts))
    console.print(t)
    for status, label in (("fail", "[bold red]FAIL[/]"), ("warn", "[yellow]warn[/]")):
        for r in report.by_status(status):  # type: ignore[arg-type]
            if r.reason == SKIPPED_REASON:
                continue
            console.print(f"{label} {r.node} {r.check}: ", end="")
            console.print(r.reason, markup=False, highlight=False, end="")
            if r.fix:
                console.print("  [dim]fix:[/] ", end="")
                console.print(r.fix, markup=False, highlight=False, end="")
            console.print()
    skips = sorted({r.check for r in report.results if r.reason == SKIPPED_REASON})
    if skips:
        console.print(f"[dim]skipped: {', '.join(skips)}[/]")
    n_fail, n_warn = len(report.by_status("fail")), len(report.by_status("warn"))
    verdict = "[bold red]failed[/]" if report.failed else "[green]ok[/]"
    console.print(f"preflight {verdict}: {n_fail} failed, {n_warn} warnings, "
                  f"{len(nodes)} nodes in {report.seconds:.1f}s")


# --- results of the other commands -------------------------------------------------------

def print_up(res: UpResult) -> None:
    verb = "deployed" if res.changed else "nothing to do"
    what = f" ({', '.join(res.deployed)})" if res.deployed and res.fleet.is_fleet else ""
    console.print(f"{verb}{what}: {res.fleet.deployment} serves {res.fleet.served_name!r} at "
                  f"{res.api_url} ({res.reason}; {res.seconds:.1f}s)", highlight=False)


def print_down(deployment: str, removed: dict[str, list[str]],
               unreachable: dict[str, BaseException]) -> None:
    if sum(len(v) for v in removed.values()) == 0 and not unreachable:
        console.print(f"nothing to remove: no container of {deployment} on any node")
    for node, names in removed.items():
        if names:
            console.print(f"{node}: removed {', '.join(names)}")
    for node, err in unreachable.items():
        err_console.print(f"[red]{node}: not reached, nothing removed there:[/] {mask(str(err))}",
                          highlight=False)


def print_smoke(results: list[SmokeResult]) -> None:
    for r in results:
        mark = "[green]ok[/]  " if r.ok else "[red]FAIL[/]"
        console.print(f"{mark} {r.check:<11} {r.seconds:5.2f}s  "
                      f"{(repr(r.answer) if r.ok else r.error)[:300]}")


def print_bench(preset: str, figs: dict[str, float], ref: dict[str, float] | None, path: Path) -> None:
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


def print_playbooks(books: list[tuple[Path, Playbook]]) -> None:
    for path, pb in books:
        console.print(f"[bold]{pb.name}[/]  ({pb.profile}, {pb.topology})  {pb.description}")
        console.print(f"    {path}", highlight=False)


def emit_log_line(width: int, node: str, text: str) -> None:
    """One line of `orch logs`: the node, then the rank's line (secrets masked)."""
    print(f"{node:<{width}} | {mask(text)}", flush=True)


# --- staging -----------------------------------------------------------------------------

@contextmanager
def transfer_progress(what: str) -> Iterator[Callable[[str, int, int], None]]:
    """A progress bar per node on a terminal; elsewhere (cron, CI) a log line per node every
    10 s and at the end.  Yields update(node, bytes done, bytes total)."""
    if err_console.is_terminal:
        cols = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                TransferSpeedColumn(), TimeRemainingColumn())
        with RichProgress(*cols, console=err_console, transient=False) as bars:
            tasks: dict[str, TaskID] = {}

            def update(node: str, done: int, total: int) -> None:
                if node not in tasks:
                    tasks[node] = bars.add_task(f"{what} {node}", total=total)
                bars.update(tasks[node], completed=done, total=total)

            yield update
        return
    last: dict[str, float] = {}

    def log_update(node: str, done: int, total: int) -> None:
        now = time.monotonic()
        if done >= total or now - last.get(node, 0.0) >= 10:
            last[node] = now
            log.info("copying", what=what, node=node, done_mb=round(done / 1e6, 1),
                     total_mb=round(total / 1e6, 1), pct=round(100 * done / total, 1) if total else 100)

    yield log_update


def print_stage(res: StageResult) -> None:
    if res.image is not None:
        i = res.image
        if i.copied:
            console.print(f"image {i.image}: copied from {i.source} to {', '.join(i.copied)} "
                          f"({i.bytes / 1e9:.2f} GB in {i.seconds:.1f}s)", highlight=False)
        else:
            console.print(f"image {i.image}: present on every node", highlight=False)
    if res.weights is not None:
        w = res.weights
        console.print(f"model {w.reference.bytes / 1e9:.2f} GB in {len(w.reference.files)} files, "
                      f"source {w.source}, manifest {w.reference.digest}", highlight=False)
        for c in w.copies:
            mbs = c.bytes / 1e6 / c.seconds if c.seconds else 0.0
            console.print(f"  {c.node}: copied {len(c.fetch)} file(s), {c.bytes / 1e9:.2f} GB, "
                          f"{c.seconds:.1f}s ({mbs:.0f} MB/s); {len(c.keep)} already right",
                          highlight=False)
        for n in w.identical:
            console.print(f"  {n}: identical", highlight=False)
