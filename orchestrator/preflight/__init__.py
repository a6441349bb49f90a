"""Preflight: prove the nodes can run the plan before anything is launched.

    report = await run_checks(session, fleet, skip=frozenset({"hccn.ping"}))
    report.failed; report.to_json()                # render.print_report(report) shows it
    removed = await clean_stale(session, fleet)    # unheld /dev/shm/vllm-*, psm_* only

Every node at once, two SSH round trips each (gather, then the cross-node pings, test
listeners and NPU pings, bounded per node: peers.py).  Checks are named (`report.CHECKS`); each result is pass, warn or
fail with a one-line reason and a fix.  See docs/preflight.md.
"""

from __future__ import annotations

from .report import CHECKS, CheckResult, Report, skipped, unknown_skips
from .runner import clean_stale, run_checks

__all__ = ["CHECKS", "CheckResult", "Report", "clean_stale", "run_checks", "skipped",
           "unknown_skips"]
