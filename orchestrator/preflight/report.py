"""The preflight's results: one `CheckResult` per node and check, the `Report`, the table."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Status = Literal["pass", "warn", "fail"]

# Every check, in report order. Which apply depends on the profile kind and the topology.
CHECKS: tuple[str, ...] = (
    "ssh.reachable", "ssh.root", "runtime.present", "runtime.daemon",
    "net.nic", "net.ping", "ports.free", "ports.reachable",
    "image.present", "image.same", "model.present", "model.same", "model.identical", "shm.size",
    "disk.free",
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
