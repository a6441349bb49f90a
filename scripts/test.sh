#!/usr/bin/env bash
# The whole test suite, as root on Debian 12: unit tests, then the lab tests (real network
# namespaces, real sshd, real podman and docker, real vLLM on CPU).  First run builds the lab
# image (about 5-8 minutes); later runs reuse /var/lib/orch-lab/cache.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $EUID -ne 0 ]]; then echo "test.sh: run as root (the lab creates network namespaces)" >&2; exit 1; fi
scripts/install-lab-deps.sh
scripts/bootstrap.sh
export PYTHONUNBUFFERED=1 ORCH_FAST_RETRY=1
set +e
.venv/bin/python -m pytest -p no:cacheprovider -ra "$@"
rc=$?
set -e
if [[ $rc -eq 5 ]]; then echo "test.sh: pytest ran no test - that is a failure" >&2; exit 1; fi
exit $rc
