from __future__ import annotations

import json

import pytest

from orchestrator.errors import TopologyError
from orchestrator.inventory import Node
from orchestrator.netinfo import parse_facts, resolve
from orchestrator.plan import NodeNet

ADDR = [
    {"ifname": "lo", "flags": ["LOOPBACK", "UP"], "addr_info": [{"family": "inet", "local": "127.0.0.1"}]},
    {"ifname": "enp189s0f0", "flags": ["UP"], "addr_info": [{"family": "inet", "local": "10.1.0.5"}]},
    {"ifname": "eth9", "flags": ["UP"], "addr_info": [{"family": "inet", "local": "172.16.0.5"}]},
]


def facts(ssh_ip: str | None = "10.1.0.5", default: str | None = "eth9"):
    route = [{"dst": "default", "dev": default}] if default else []
    text = (f"ssh=192.0.2.1 50000 {ssh_ip} 22\n" if ssh_ip else "ssh=\n") + "==== addr\n" + json.dumps(ADDR) + \
        "\n==== route\n" + json.dumps(route) + "\n"
    return parse_facts(text)


def node(**kw):
    return Node(name="n0", host="n0.example", **kw)


def test_detects_the_interface_carrying_ssh():
    assert resolve(node(), facts()) == NodeNet("enp189s0f0", "10.1.0.5")


def test_falls_back_to_the_default_route():
    assert resolve(node(), facts(ssh_ip=None)) == NodeNet("eth9", "172.16.0.5")


def test_given_nic_finds_its_ip_and_given_ip_finds_its_nic():
    assert resolve(node(nic="eth9"), facts()) == NodeNet("eth9", "172.16.0.5")
    assert resolve(node(ip="172.16.0.5"), facts()) == NodeNet("eth9", "172.16.0.5")


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"nic": "ens1"}, "NIC ens1 does not exist; the host has: enp189s0f0 10.1.0.5, eth9 172.16.0.5"),
        ({"nic": "eth9", "ip": "10.1.0.5"}, "NIC eth9 does not carry 10.1.0.5 (it has 172.16.0.5)"),
        ({"ip": "10.9.9.9"}, "no interface carries 10.9.9.9"),
    ],
)
def test_wrong_nic_or_ip_is_refused(kw, needle):
    with pytest.raises(TopologyError) as e:
        resolve(node(**kw), facts())
    assert needle in str(e.value) and "node n0 (n0.example)" in str(e.value)


def test_undetectable_asks_for_nic_and_ip():
    with pytest.raises(TopologyError, match="set nic and ip"):
        resolve(node(), facts(ssh_ip="127.0.0.1", default=None))


def test_facts_from_one_ip_batch_and_the_older_two_sections():
    """FACTS_SCRIPT prints the addresses and the default route from one `ip -batch` (a JSON
    document per line); a keeper of an older orch still answers with two sections."""
    route = [{"dst": "default", "dev": "eth9"}]
    new = parse_facts("ssh=192.0.2.1 50000 10.1.0.5 22\n==== addr route\n"
                      + json.dumps(ADDR) + "\n" + json.dumps(route) + "\n")
    old = facts()
    assert new == old and new.default_dev == "eth9" and len(new.ifaces) == 3
    no_route = parse_facts("ssh=\n==== addr route\n" + json.dumps(ADDR) + "\n[]\n")
    assert no_route.default_dev is None and no_route.by_ip("172.16.0.5") is not None
    with pytest.raises(ValueError, match='Option "-j" is unknown'):  # an iproute2 without JSON
        parse_facts('ssh=\n==== addr route\nOption "-j" is unknown, try "ip -help".\n')


def test_facts_script_runs_one_ip(tmp_path):
    import shutil
    import subprocess

    from orchestrator.netinfo import FACTS_SCRIPT
    if not shutil.which("ip"):
        pytest.skip("needs ip")
    b = tmp_path / "bin"
    b.mkdir()
    (b / "ip").write_text(f'#!/bin/sh\necho ip >> {tmp_path / "ran"}\nexec {shutil.which("ip")} "$@"\n')
    (b / "ip").chmod(0o755)
    out = subprocess.run(["sh", "-c", FACTS_SCRIPT], capture_output=True, text=True, timeout=30,
                         env={"PATH": f"{b}:/usr/bin:/bin:/usr/sbin:/sbin"}).stdout
    f = parse_facts(out)
    assert any(i.name == "lo" and "127.0.0.1" in i.ipv4 for i in f.ifaces)
    assert (tmp_path / "ran").read_text().split() == ["ip"]
