"""orch: deploy vLLM / vLLM-Ascend inference servers across several machines over SSH.

Data flow: inventory + playbook (validated models) -> plan (pure: per-node argv, env,
labels) -> remote side effects (SSH, container runtime) -> readiness (HTTP probes).
"""

__version__ = "0.1.0"
