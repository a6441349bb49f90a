"""The preflight's results: one `CheckResult` per node and check, the `Report`, the table."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from rich.table import Table

Status = Literal["pass", "warn", "fail"]

# Every check, in report order. Which apply depends on the profile kind and the topology.
CHECKS: tuple[str, ...] = (
    "ssh.reachable", "ssh.root", "runtime.present", "runtime.daemon",
    "net.nic", "net.ping", "ports.free", "ports.reachable",
    "image.present", "image.same", "model.present", "model.same", "shm.size", "disk.free",
    "npu.count", "npu.health", "npu.busy", "npu.hbm",
    "hccn.link", "hccn.health", "hccn.ip", "hccn.gateway", "hccn.netdetect", "hccn.tls",
    "hccn.ping", "gpu.count", "gpu.busy", "gpu.driver", "driver.same",
    "stale.containers", "stale.processes", "stale.shm",
)
SKIPPED_REASON = "skipped by --skip-checks"


@dataclass(frozen=True)
class CheckResult:
    node: str
    check: str  # dotted name from CHECKS
    status: Status
    reason: str  # one line; names the node, NPU, port or peer concerned
    fix: str  # what to run or change; "" when status is "pass"


@dataclass
class Report:
    results: list[CheckResult]
    seconds: float

    @property
    def failed(self) -> bool:
        return any(r.status == "fail" for r in self.results)

    def get(self, node: str, check: str) -> CheckResult | None:
        return next((r for r in self.results if r.node == node and r.check == check), None)

    def by_status(self, status: Status) -> list[CheckResult]:
        return [r for r in self.results if r.status == status]

    def to_json(self) -> dict[str, object]:
        nodes: dict[str, dict[str, dict[str, str]]] = {}
        for r in self.results:
            nodes.setdefault(r.node, {})[r.check] = {"status": r.status, "reason": r.reason,
                                                     "fix": r.fix}
        return {"ok": not self.failed, "seconds": round(self.seconds, 2), "nodes": nodes}


def skipped(check: str, skip: Iterable[str]) -> bool:
    """`skip` holds exact names (`ports.free`) or prefixes (`npu`, `stale.`, `hccn.*`)."""
    for s in skip:
        s = s.strip().removesuffix("*").removesuffix(".")
        if s and (check == s or check.startswith(s + ".")):
            return True
    return False


def unknown_skips(skip: Iterable[str]) -> list[str]:
    """Entries of `skip` that match no check (for the CLI to reject typos)."""
    return [s for s in skip if not any(skipped(c, [s]) for c in CHECKS)]


def order(results: Iterable[CheckResult], nodes: list[str]) -> list[CheckResult]:
    rank = {c: i for i, c in enumerate(CHECKS)}
    pos = {n: i for i, n in enumerate(nodes)}
    return sorted(results, key=lambda r: (pos.get(r.node, len(pos)), rank.get(r.check, 999),
                                          r.check))


_STYLE = {"pass": "[green]pass[/]", "warn": "[yellow]warn[/]", "fail": "[bold red]FAIL[/]"}


def print_report(report: Report) -> None:
    """A table (one row per check, one column per node), then one line per failure and per
    warning with its reason and fix, then the verdict."""
    from ..render import console

    nodes = list(dict.fromkeys(r.node for r in report.results))
    checks = [c for c in CHECKS if any(r.check == c for r in report.results)]
    checks += sorted({r.check for r in report.results} - set(checks))
    cell = {(r.node, r.check): r.status for r in report.results}
    t = Table(title="preflight", title_justify="left")
    t.add_column("check")
    for n in nodes:
        t.add_column(n, justify="center")
    for c in checks:
        t.add_row(c, *(_STYLE[cell[(n, c)]] if (n, c) in cell else "[dim]·[/]" for n in nodes))
    console.print(t)
    for status, label in (("fail", "[bold red]FAIL[/]"), ("warn", "[yellow]warn[/]")):
        for r in report.by_status(status):
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
