"""Human-readable output: plans, status tables, results (rich)."""

from __future__ import annotations

import shlex
import sys

from rich.console import Console
from rich.table import Table

from .plan import Plan
from .status import Status

console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() else 200)


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


def print_plan(plan: Plan) -> None:
    c = console
    c.print(f"[bold]deployment[/] {plan.deployment}  playbook {plan.playbook}  runtime {plan.runtime}")
    c.print(f"image {plan.image}")
    c.print(f"model {plan.model} served as {plan.served_name!r} at {plan.api_url}")
    for w in plan.warnings:
        c.print(f"[yellow]warning:[/] {w}")
    if plan.unresolved:
        c.print(f"[yellow]note:[/] NIC/IP of {', '.join(plan.unresolved)} are detected on the host at "
                "`orch up`; shown as placeholders")
    for n in plan.nodes:
        c.print()
        c.print(f"[bold]# {n.name}[/]: {n.role}, DP ranks {n.rank_start}..{n.rank_start + n.dp_local - 1}, "
                f"ssh {n.host}, NIC {n.nic}, IP {n.ip}, spec {n.spec_hash}")
        if n.secret_env:
            c.print(f"  secrets on stdin (--env-file /dev/stdin): {', '.join(n.secret_env)}")
        c.print(command_lines(n.argv), markup=False, highlight=False, soft_wrap=True)


def _age(s: int | None) -> str:
    if s is None:
        return "-"
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def _sum(n: object, key: str) -> float | None:
    vals = [m[key] for m in getattr(n, "metrics").values() if key in m]
    return sum(vals) if vals else None


def status_table(st: Status) -> Table:
    t = Table(title=f"deployment {st.deployment}", title_justify="left")
    for col in ("node", "role", "ranks", "container", "state", "up", "restarts", "spec", "drift",
                "run/wait", "kv cache", "tokens out"):
        t.add_column(col)
    for n in st.nodes:
        state = n.state if not n.error else f"{n.state}: {n.error[:60]}"
        color = "green" if n.healthy else "red"
        run, wait = _sum(n, "running"), _sum(n, "waiting")
        kv = [m["kv_cache"] for m in n.metrics.values() if "kv_cache" in m]
        gen = _sum(n, "gen_tokens")
        t.add_row(
            n.name, n.role, ",".join(map(str, n.ranks)), n.container or "-", f"[{color}]{state}[/]",
            _age(n.uptime_s), str(n.restarts), (n.spec_hash or "-")[:8], "[red]yes[/]" if n.drift else "no",
            f"{run:.0f}/{wait:.0f}" if run is not None and wait is not None else "-",
            f"{max(kv) * 100:.1f}%" if kv else "-", f"{gen:.0f}" if gen is not None else "-")
    return t


def print_status(st: Status) -> None:
    console.print(status_table(st))
    api = "[green]ready[/]" if st.api_ready else f"[red]not ready[/] ({st.api_reason})"
    console.print(f"API {st.api_url}: {api}; model {st.served_model!r}; vLLM {st.version or '?'}")
    if st.group_ok is not None:
        console.print(f"ranks: {'[green]' if st.group_ok else '[red]'}{st.group_reason}[/]")
    verdict = "[green]healthy[/]" if st.healthy else "[red]unhealthy[/]"
    console.print(f"deployment: {verdict}" + (" [yellow](drift: the inventory changed)[/]" if st.drift else ""))
    cli = [n.name for n in st.nodes if n.containers_via == "cli"]
    note = f"; container state read with the CLI on {', '.join(cli)} (runtime socket not reachable)" if cli else ""
    console.print(f"[dim]nodes reached through {st.via}{note}[/]", highlight=False)
