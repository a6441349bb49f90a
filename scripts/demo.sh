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
step "a chat completion through the head (the lab's tiny model, trained by the lab in a few seconds to know a few answers)"
.venv/bin/python - <<'PY'
import re, time
import httpx

BASE = "http://10.77.0.11:8000"


def finished_per_rank() -> dict[int, float]:
    text = httpx.get(f"{BASE}/metrics", trust_env=False, timeout=10).text
    out: dict[int, float] = {}
    for labels, value in re.findall(r'^vllm:request_success_total\{([^}]*)\} (\S+)', text, re.M):
        rank = re.search(r'engine="(\d+)"', labels)
        if rank:
            out[int(rank[1])] = out.get(int(rank[1]), 0.0) + float(value)
    return out


before = finished_per_rank()
r = httpx.post(f"{BASE}/v1/chat/completions", trust_env=False, timeout=60,
               json={"model": "tiny", "max_tokens": 12, "temperature": 0,
                     "messages": [{"role": "user", "content": "Say hello to the operators."}]})
r.raise_for_status()
answer = r.json()["choices"][0]["message"]["content"]
ranks: list[int] = []
for _ in range(20):  # the per-rank counters move as the engines report
    after = finished_per_rank()
    ranks = [e for e, n in sorted(after.items()) if n > before.get(e, 0.0)]
    if ranks:
        break
    time.sleep(0.25)
ids = httpx.post(f"{BASE}/tokenize", trust_env=False, timeout=10,
                 json={"model": "tiny", "prompt": answer, "add_special_tokens": False}).json()["tokens"]
print(f"answer:    {answer!r}")
print(f"token ids: {ids}")
print(f"served by: DP rank {', '.join(map(str, ranks)) or '? (no per-rank counter moved)'} "
      "(rank 0 runs on h0, the head; rank 1 on h1, headless)")
PY
step "done in $((SECONDS - start))s. Try: .venv/bin/orch status; .venv/bin/orch logs -f; scripts/demo.sh --down"
