"""Preflight: prove the nodes can run the plan before anything is launched.

    report = await run_checks(session, plan, skip=frozenset({"hccn.ping"}))
    print_report(report); report.failed; report.to_json()
    removed = await clean_stale(session, plan)     # unheld /dev/shm/vllm-*, psm_* only

Every node at once, two SSH round trips each (gather, then the cross-node pings, test
listeners and NPU pings).  Checks are named (`report.CHECKS`); each result is pass, warn or
fail with a one-line reason and a fix.  See docs/preflight.md.
"""

from __future__ import annotations

from .report import CHECKS, CheckResult, Report, print_report, skipped, unknown_skips
from .runner import clean_stale, run_checks

__all__ = ["CHECKS", "CheckResult", "Report", "clean_stale", "print_report", "run_checks",
           "skipped", "unknown_skips"]
