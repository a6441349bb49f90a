"""One planner per topology: (inventory, playbook, profile, NICs/IPs, secret digest) -> Plan."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from ..inventory import Inventory
from ..playbook import Playbook, Profile
from . import dp, pd, ray
from .model import Digests, NodeNet, Plan

Planner = Callable[[Inventory, Playbook, Profile, Mapping[str, NodeNet] | None, Digests], Plan]
PLANNERS: dict[str, Planner] = {"single": dp.plan, "dp": dp.plan, "ray": ray.plan, "pd": pd.plan}
