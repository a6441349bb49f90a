"""One look at every node of a deployment: its network facts and this deployment's
containers, both taken at once on every node.  `orch status` reads a snapshot, whether it was
taken over fresh connections (cluster.Session.snapshot) or by a keeper over kept ones
(keeper.py).  What travels is raw (the facts script's text, the runtime's inspect objects);
parsing happens here, on the reading side.  Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from . import netinfo, runtime
from .errors import OrchError
from .inventory import Inventory
from .plan import NodeNet


@dataclass
class NodeLook:
    """What one node showed: each part is either the data or why it is missing."""

    facts: str | None = None  # netinfo.FACTS_SCRIPT's output
    facts_error: str | None = None
    containers: list[dict[str, Any]] | None = None  # inspect objects
    containers_error: str | None = None
    containers_via: str | None = None  # "api" (the runtime's socket) or "cli"


@dataclass
class Snapshot:
    looks: dict[str, NodeLook] = field(default_factory=dict)  # reachable nodes
    unreachable: dict[str, str] = field(default_factory=dict)  # node -> why
    via: str = "fresh SSH connections"  # how it was taken, for the operator
    model_digest: str | None = None  # the model's manifest digest (model.digest_in_spec only)

    def nets(self, inv: Inventory) -> dict[str, NodeNet]:
        """Every node's cluster NIC/IP from its facts; nodes without usable facts are left out
        (the plan then shows what the inventory says, and status the drift)."""
        out = {}
        for node in inv.nodes:
            look = self.looks.get(node.name)
            if look is None or look.facts is None:
                continue
            try:
                out[node.name] = netinfo.resolve(node, netinfo.parse_facts(look.facts))
            except (OrchError, ValueError):
                continue
        return out

    def containers(self, node: str) -> list[runtime.Container] | str:
        """The node's containers of this deployment, or why they are unknown."""
        look = self.looks[node]
        if look.containers is None:
            return look.containers_error or "not looked at"
        return runtime.parse_objects(look.containers)

    def to_json(self) -> dict[str, Any]:
        return {"looks": {k: asdict(v) for k, v in self.looks.items()},
                "unreachable": self.unreachable, "via": self.via, "model_digest": self.model_digest}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Snapshot:
        return cls({k: NodeLook(**v) for k, v in d["looks"].items()}, dict(d["unreachable"]),
                   str(d["via"]), d.get("model_digest"))
