"""orch: deploy vLLM / vLLM-Ascend inference servers across several machines over SSH.

Data flow: inventory + playbook (validated models) -> plan (pure: per-node argv, env,
labels) -> remote side effects (SSH, container runtime) -> readiness (HTTP probes).
"""

import warnings

__version__ = "0.1.0"

# cryptography (51 here) warns, at asyncssh's import, that DSA keys are deprecated: asyncssh merely
# knows the type (orch never uses DSA), and the warning would open every orch command's output
warnings.filterwarnings("ignore", message="DSA is deprecated", module="asyncssh")
