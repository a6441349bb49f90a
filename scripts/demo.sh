#!/usr/bin/env bash
# The demo: a local lab of 3 hosts, a 2-node data-parallel vLLM deployment on it through
# orch, its status, and one chat completion answered.  As root on Debian 12.
#   scripts/demo.sh            set up and run the demo (leaves it running)
#   scripts/demo.sh --down     remove the deployment and the lab
# ORCH_DEMO_RUNTIME=docker uses docker instead of podman.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNTIME="${ORCH_DEMO_RUNTIME:-podman}"
INV=/var/lib/orch-lab/inventory.yaml
start=$SECONDS
step() { printf '\n==> [%4ds] %s\n' "$((SECONDS - start))" "$*"; }
if [[ $EUID -ne 0 ]]; then echo "demo.sh: run as root (the lab creates network namespaces)" >&2; exit 1; fi

if [[ "${1:-}" == "--down" ]]; then
  [[ -f $INV ]] && .venv/bin/orch down "$INV" || true
  .venv/bin/orch lab down
  exit 0
fi

step "installing system packages (apt)"
scripts/install-lab-deps.sh
step "installing orch into .venv (pip)"
scripts/bootstrap.sh
step "creating the lab: 3 hosts on $RUNTIME (first run builds the vLLM CPU image: ~5-8 min)"
.venv/bin/orch lab up --hosts 3 --runtime "$RUNTIME"
step "orch plan (what will run where)"
.venv/bin/orch plan "$INV"
step "orch up: head on h0, headless rank on h1; waiting for a served completion"
.venv/bin/orch up "$INV"
step "orch status"
.venv/bin/orch status "$INV" || true
step "a chat completion through the head (tiny model with random weights: the words are noise)"
.venv/bin/python - <<'PY'
import httpx
r = httpx.post("http://10.77.0.11:8000/v1/chat/completions", trust_env=False, timeout=60,
               json={"model": "tiny", "max_tokens": 12,
                     "messages": [{"role": "user", "content": "Say hello to the operators."}]})
r.raise_for_status()
d = r.json()
print("answer:", repr(d["choices"][0]["message"]["content"]))
print("usage: ", d["usage"])
PY
step "done in $((SECONDS - start))s. Try: .venv/bin/orch status; .venv/bin/orch logs -f; scripts/demo.sh --down"
