#!/usr/bin/env bash
# Create .venv with orch and its test tools (pip; Python >= 3.11). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "bootstrap.sh: orch needs Python >= 3.11 ($PY is $("$PY" --version 2>&1))" >&2; exit 1; }
if [[ ! -x .venv/bin/python ]]; then
  "$PY" -m venv .venv || { apt-get install -y -qq python3-venv >/dev/null && "$PY" -m venv .venv; }
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]' 2>&1 \
  | grep -v -e '^WARNING: Location' -e 'is ignored: it is neither' || true
.venv/bin/orch --help >/dev/null
echo "[bootstrap] .venv ready: $(.venv/bin/python --version), orch $(.venv/bin/python -c 'import orchestrator; print(orchestrator.__version__)')"
