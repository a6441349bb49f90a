"""Planning: inventory + playbook + profile (+ each node's NIC/IP) -> per-node container specs.

Pure: this package imports nothing that does I/O (no SSH, no HTTP; tests/unit/test_imports.py
proves it).  Every container name, label and argv element is computed here, so `orch plan`
shows exactly what `orch up` will run, and status/down find containers by the same labels.

    build_plan(inv, pb, prof, nets, digests)    one group, by the playbook's topology:
        dp.plan      topologies single and dp (the seeds' head + headless ranks)
        ray.plan     topology ray (ray start on every node, vllm serve in the head)
        pd.plan      topology pd (prefill and decode instances, a proxy)
    fleet_plan(...)                                    the whole inventory (fleet.py): every
        replica's group and the router in front of them, or the one group of a plain inventory
"""

from __future__ import annotations

from collections.abc import Mapping

from ..inventory import Inventory
from ..playbook import Playbook, Profile
from .common import DERIVED_FLAGS, merged_serve_flags, ordered_nodes, render_flags, resolve_nets, spec_hash
from .container import container_spec
from .fleet import plan_fleet
from .model import (
    LABEL_DEPLOYMENT,
    LABEL_NODE,
    LABEL_ROLE,
    LABEL_SPEC,
    Digests,
    Fleet,
    Link,
    NodeNet,
    NodeSpec,
    Plan,
    Port,
    Role,
    Topology,
)
from .planners import PLANNERS

__all__ = [
    "DERIVED_FLAGS", "Digests", "Fleet", "LABEL_DEPLOYMENT", "LABEL_NODE", "LABEL_ROLE", "LABEL_SPEC", "Link",
    "NodeNet", "NodeSpec", "PLANNERS", "Plan", "Port", "Role", "Topology", "build_plan",
    "container_spec", "fleet_plan", "merged_serve_flags", "ordered_nodes", "render_flags", "resolve_nets",
    "spec_hash",
]


def build_plan(
    inv: Inventory,
    pb: Playbook,
    prof: Profile,
    nets: Mapping[str, NodeNet] | None = None,
    digests: Digests = Digests(),
) -> Plan:
    """Render every node's container spec for the playbook's topology.  `nets` holds detected
    NIC/IP per node name (nodes without are placeholders, listed in `Plan.unresolved`);
    `digests` folds secret values (and, asked for, the model's manifest) into the spec hash."""
    return PLANNERS[pb.topology](inv, pb, prof, nets, digests)


def fleet_plan(
    inv: Inventory,
    pb: Playbook,
    prof: Profile,
    nets: Mapping[str, NodeNet] | None = None,
    digests: Digests = Digests(),
) -> Fleet:
    """What the inventory deploys: its group(s) and, for a fleet, the router (fleet.py)."""
    return plan_fleet(inv, pb, prof, nets, digests)
