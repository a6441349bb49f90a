"""A node's network facts (interfaces, the address SSH came in on) and the choice of the
cluster NIC/IP from them.  Parsing and choosing are pure; `FACTS_SCRIPT` is run remotely."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .errors import TopologyError
from .inventory import Node
from .plan import NodeNet

# Fixed text, no inventory values: prints the SSH server address, then the IPv4 addresses and
# the default route from one `ip` (its batch mode: one JSON document per line, in order).
FACTS_SCRIPT = """echo "ssh=$SSH_CONNECTION"; echo "==== addr route"
ip -j -4 -force -batch - <<'ORCH_IP'
addr show
route show default
ORCH_IP"""


@dataclass(frozen=True)
class Iface:
    name: str
    up: bool
    ipv4: tuple[str, ...]


@dataclass(frozen=True)
class NetFacts:
    ssh_server_ip: str | None
    ifaces: tuple[Iface, ...]
    default_dev: str | None

    def by_name(self, nic: str) -> Iface | None:
        return next((i for i in self.ifaces if i.name == nic), None)

    def by_ip(self, ip: str) -> Iface | None:
        return next((i for i in self.ifaces if ip in i.ipv4), None)


def _addr_route(sections: dict[str, list[str]]) -> tuple[list[Any], list[Any]]:
    """The addresses and the default route: FACTS_SCRIPT's `addr route` section (one JSON
    document per line; an `ip` without -j prints none, and its message is the error), or the
    `addr` and `route` sections of older orch versions."""
    if "addr route" not in sections:
        return (json.loads("\n".join(sections.get("addr", [])) or "[]"),
                json.loads("\n".join(sections.get("route", [])) or "[]"))
    lines = sections["addr route"]
    docs = [ln for ln in lines if ln.startswith("[")]
    if not docs and any(ln.strip() for ln in lines):
        raise ValueError(" ".join(ln.strip() for ln in lines if ln.strip())[:200])
    return (json.loads(docs[0]) if docs else [], json.loads(docs[1]) if len(docs) > 1 else [])


def parse_facts(text: str) -> NetFacts:
    ssh_ip = None
    sections: dict[str, list[str]] = {"": []}
    cur = ""
    for line in text.splitlines():
        if line.startswith("ssh="):
            parts = line[4:].split()
            ssh_ip = parts[2] if len(parts) >= 3 else None
        elif line.startswith("==== "):
            cur = line[5:].strip()
            sections[cur] = []
        else:
            sections.setdefault(cur, []).append(line)
    addr, routes = _addr_route(sections)
    ifaces = []
    for i in addr:
        v4 = tuple(a["local"] for a in i.get("addr_info", []) if a.get("family") == "inet")
        up = "UP" in (i.get("flags") or []) or i.get("operstate") == "UP"
        ifaces.append(Iface(i.get("ifname", ""), up, v4))
    dev = routes[0].get("dev") if routes else None
    return NetFacts(ssh_ip, tuple(ifaces), dev)


def resolve(node: Node, facts: NetFacts) -> NodeNet:
    """Pick (and check) the cluster NIC and IP of a node.

    Given both: both must exist and belong together.  Given one: the other is looked up.
    Given none: the interface that carries the SSH connection, else the default route's.
    """
    where = f"node {node.name} ({node.host})"
    names = ", ".join(f"{i.name} {'/'.join(i.ipv4) or '-'}" for i in facts.ifaces if i.name != "lo")
    if node.nic:
        iface = facts.by_name(node.nic)
        if iface is None:
            raise TopologyError(f"{where}: NIC {node.nic} does not exist; the host has: {names}")
        if node.ip:
            if node.ip not in iface.ipv4:
                raise TopologyError(
                    f"{where}: NIC {node.nic} does not carry {node.ip} "
                    f"(it has {', '.join(iface.ipv4) or 'no IPv4'})"
                )
            return NodeNet(node.nic, node.ip)
        if not iface.ipv4:
            raise TopologyError(f"{where}: NIC {node.nic} has no IPv4 address")
        return NodeNet(node.nic, iface.ipv4[0])
    if node.ip:
        iface = facts.by_ip(node.ip)
        if iface is None:
            raise TopologyError(f"{where}: no interface carries {node.ip}; the host has: {names}")
        return NodeNet(iface.name, node.ip)
    if facts.ssh_server_ip:
        iface = facts.by_ip(facts.ssh_server_ip)
        if iface is not None and iface.name != "lo":
            return NodeNet(iface.name, facts.ssh_server_ip)
    if facts.default_dev:
        iface = facts.by_name(facts.default_dev)
        if iface is not None and iface.ipv4:
            return NodeNet(iface.name, iface.ipv4[0])
    raise TopologyError(
        f"{where}: cannot tell which NIC carries cluster traffic; set nic and ip in the "
        f"inventory (the host has: {names})"
    )
