"""Deploying: the one `up` pipeline (skeleton.py) with a launcher per topology
(launchers.py), the one readiness loop (ready.py), the one rank watcher (watch.py), the
guarded launch block (launch.py) and the plan-vs-nodes view of containers (containers.py)."""

from .skeleton import UpOptions, UpResult, down, up

__all__ = ["UpOptions", "UpResult", "down", "up"]
