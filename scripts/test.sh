#!/usr/bin/env bash
# The whole test suite, as root on Debian 12: lint (ruff, mypy), unit tests, then the lab
# tests (real network namespaces, real sshd, real podman and docker, real vLLM on CPU).  The
# first run builds the lab image (about 5-8 minutes); later runs reuse /var/lib/orch-lab/cache.
#   scripts/test.sh              everything (root)
#   scripts/test.sh unit [ARGS]  lint and the unit tests only: no root, no lab
#   scripts/test.sh lint         ruff and mypy only
#   scripts/test.sh ARGS...      pytest ARGS (root), e.g. scripts/test.sh tests/lab/test_pd_lab.py
set -euo pipefail
cd "$(dirname "$0")/.."
mode=all
case "${1:-}" in
  unit|lint) mode=$1; shift ;;
esac

pytest_run() {
  set +e
  PYTHONUNBUFFERED=1 ORCH_FAST_RETRY=1 .venv/bin/python -m pytest -p no:cacheprovider -ra "$@"
  local rc=$?
  set -e
  if [[ $rc -eq 5 ]]; then echo "test.sh: pytest ran no test - that is a failure" >&2; return 1; fi
  return $rc
}

lint() {
  echo "[test.sh] ruff"
  .venv/bin/ruff check orchestrator tests benchmarks
  echo "[test.sh] mypy (strict on the planner)"
  .venv/bin/mypy orchestrator
}

if [[ $mode != all || $# -gt 0 ]]; then
  [[ -x .venv/bin/python ]] || scripts/bootstrap.sh
fi
case $mode in
  lint) scripts/bootstrap.sh; lint; exit 0 ;;
  unit) scripts/bootstrap.sh; lint; pytest_run -m "not lab" tests/unit "$@"; exit $? ;;
esac
if [[ $EUID -ne 0 ]]; then
  echo "test.sh: run as root (the lab creates network namespaces); scripts/test.sh unit runs the unit tests without root" >&2
  exit 1
fi
scripts/install-lab-deps.sh
scripts/bootstrap.sh
if [[ $# -eq 0 ]]; then lint; fi
pytest_run "$@"
