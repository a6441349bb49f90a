"""Pure checks: a node's facts (and the other nodes') -> `CheckResult`s.

No I/O here; `runner.py` gathers the facts.  A check that depends on a failed one (the image
when the runtime is missing, model.same when the model is missing) is left out for that node
rather than failed again, so one cause shows as one failure.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .. import netinfo
from ..errors import TopologyError
from ..inventory import Node
from ..plan import LABEL_DEPLOYMENT, LABEL_NODE, Link, NodeNet, NodeSpec
from ..runtime import Container
from ..stage.manifest import Manifest
from ..stage.manifest import majority as majority_manifest
from .parse import CrossFacts, NodeFacts, human, image_id, shm_size_bytes
from .report import CheckResult, Status

DISK_WARN_BYTES = 10 * 10**9
SHM_DEFAULT_MIN = 1 << 30  # below this, vLLM's shared-memory broadcast runs out
CLEAN_HINT = ("`orch up` removes them before launching (only the ones no process holds); by "
              "hand: `rm /dev/shm/NAME` once `fuser -v /dev/shm/NAME` lists no user")


def res(node: str, check: str, status: Status, reason: str, fix: str = "") -> CheckResult:
    return CheckResult(node, check, status, reason, fix if status != "pass" else "")


@dataclass(frozen=True)
class NodeCtx:
    """What the checks of one node need to know about the deployment."""

    specs: tuple[NodeSpec, ...]  # every container planned on the node
    inv_node: Node
    runtime: str
    deployment: str
    image: str
    model: str
    ports: tuple[tuple[str, int], ...]  # (label, port) its containers bind: API, rpc, ...
    shm_size: str | None
    ipc_host: bool

    @property
    def name(self) -> str:
        return self.inv_node.name

    @property
    def spec_hashes(self) -> frozenset[str]:
        return frozenset(s.spec_hash for s in self.specs)


def own_containers(ctx: NodeCtx, cs: list[Container]) -> list[Container]:
    return [c for c in cs if c.labels.get(LABEL_DEPLOYMENT) == ctx.deployment
            and c.labels.get(LABEL_NODE) == ctx.name]


def runtime_ok(f: NodeFacts) -> bool:
    info = f.runtime_info
    return (f.runtime_path is not None and info is not None and info.rc == 0
            and bool(info.text.strip()))


def node_checks(ctx: NodeCtx, f: NodeFacts, user: str) -> tuple[list[CheckResult], NodeNet | None]:
    """Every single-node check of one node, and its cluster NIC/IP (None when unresolved)."""
    n, rt = ctx.name, ctx.runtime
    out: list[CheckResult] = []
    add = out.append
    add(res(n, "ssh.root", "pass", "root" if user == "root" else f"passwordless sudo as {user}")
        if f.uid == 0 else
        res(n, "ssh.root", "fail", f"commands on {n} run as uid {f.uid}, not root",
            "log in as root or give the user passwordless sudo (`sudo -n true` must work)"))
    runtime_ok = False
    if f.runtime_path is None:
        add(res(n, "runtime.present", "fail", f"{rt} not found on {n}",
                f"install {rt} on {n}, or set `runtime:` in the inventory to the one it has"))
    else:
        add(res(n, "runtime.present", "pass", f"{rt} at {f.runtime_path}"))
        info = f.runtime_info
        text = info.text.strip() if info else ""
        if info is not None and info.rc == 0 and text:
            runtime_ok = True
            add(res(n, "runtime.daemon", "pass", f"{rt} {text.splitlines()[0]}"))
        else:
            first = text.splitlines()[-1] if text else "no output"
            fix = ("start it: `systemctl start docker` (and `systemctl enable docker`)"
                   if rt == "docker" else "run `podman info` on the node and fix what it reports "
                   "(storage, cgroups, runtime)")
            add(res(n, "runtime.daemon", "fail", f"`{rt} info` fails on {n}: {first[:200]}", fix))
    net = _nic(ctx, f, add)
    if ctx.ports:
        _ports_free(ctx, f, add)
    if runtime_ok:
        iid = image_id(f.image)
        add(res(n, "image.present", "pass", f"{ctx.image} {(iid or '')[:19]}") if iid else
            res(n, "image.present", "fail", f"image {ctx.image} not on {n}",
                f"`{rt} pull {ctx.image}` on {n} (air-gapped: `{rt} save` it elsewhere, "
                f"`{rt} load -i` here)"))
    _model(ctx, f, add)
    _shm(ctx, f, add)
    low = [d for d in f.disks if d.avail_bytes < DISK_WARN_BYTES]
    if f.disks:
        add(res(n, "disk.free", "warn", "; ".join(f"{d.mount} on {n} has {human(d.avail_bytes)} "
                                                  "free" for d in low),
                f"free space (`{rt} image prune`, old logs); image layers and the model cache "
                "need room") if low else
            res(n, "disk.free", "pass", ", ".join(f"{d.mount} {human(d.avail_bytes)} free"
                                                  for d in f.disks)))
    if runtime_ok:
        _stale_containers(ctx, f, add)
    _stale_processes(ctx, f, add)
    free = [s for s in f.shm_files if not s.held]
    add(res(n, "stale.shm", "warn", f"{len(free)} leftover shared-memory segment(s) on {n} "
            f"({human(sum(s.size for s in free))}): "
            + ", ".join(s.path for s in free[:3]) + (" ..." if len(free) > 3 else ""), CLEAN_HINT)
        if free else res(n, "stale.shm", "pass", "no leftover /dev/shm segments"
                         + (f" ({len(f.shm_files)} in use)" if f.shm_files else "")))
    return out, net


def _nic(ctx: NodeCtx, f: NodeFacts, add) -> NodeNet | None:  # type: ignore[no-untyped-def]
    n = ctx.name
    fix = ("set nodes[].nic / ip in the inventory to the interface that carries the cluster "
           f"network (`ip -br addr` on {n}), or leave both out to detect it")
    if f.net is None:
        add(res(n, "net.nic", "fail", f"no network facts from {n}: {f.net_error or 'no output'}",
                fix))
        return None
    try:
        net = netinfo.resolve(ctx.inv_node, f.net)
    except TopologyError as exc:
        add(res(n, "net.nic", "fail", str(exc), fix))
        return None
    iface = f.net.by_name(net.nic)
    if iface is not None and not iface.up:
        add(res(n, "net.nic", "fail", f"NIC {net.nic} on {n} is DOWN",
                f"`ip link set {net.nic} up` on {n} (check cable/switch port)"))
        return net
    add(res(n, "net.nic", "pass", f"{net.nic} {net.ip}"))
    return net


def port_users(ctx: NodeCtx, f: NodeFacts) -> dict[int, str]:
    """The node's planned ports that have a listener: port -> "own" (this deployment's running
    container, matched by pid and cgroup) or a description of the listener."""
    own_ids = {c.id for c in own_containers(ctx, f.containers or []) if c.running}
    own_pids = {p.pid for p in f.procs if own_ids & set(p.container_ids)}
    out: dict[int, str] = {}
    for _, port in ctx.ports:
        ln = next((x for x in f.listeners or [] if x.port == port), None)
        if ln is None:
            continue
        pid = int(ln.process.rsplit(" ", 1)[-1]) if ln.process else None
        if (pid is not None and pid in own_pids) or (pid is None and own_ids):
            out[port] = "own"
        else:
            out[port] = (f"by {ln.process} " if ln.process else "") + f"({ln.addr})"
    return out


def _ports_free(ctx: NodeCtx, f: NodeFacts, add) -> None:  # type: ignore[no-untyped-def]
    n = ctx.name
    if f.listeners is None:
        add(res(n, "ports.free", "warn", f"could not list listening sockets on {n}",
                "install iproute2 (`ss`)"))
        return
    users = port_users(ctx, f)
    busy = [(lbl, p) for lbl, p in ctx.ports if users.get(p, "own") != "own"]
    ours = [f"{lbl} port {p} held by this deployment's running container"
            for lbl, p in ctx.ports if users.get(p) == "own"]
    if busy:
        add(res(n, "ports.free", "fail", "; ".join(f"{lbl} port {p} on {n} is in use {users[p]}"
                                                   for lbl, p in busy),
                f"stop what listens there (`ss -ltnp 'sport = :{busy[0][1]}'` shows it), or "
                "choose free ports with overrides.api_port / overrides.rpc_port"))
    else:
        add(res(n, "ports.free", "pass", "; ".join(ours) or
                " and ".join(f"{lbl} port {p}" for lbl, p in ctx.ports) + f" free on {n}"))


def _model(ctx: NodeCtx, f: NodeFacts, add) -> None:  # type: ignore[no-untyped-def]
    n, m = ctx.name, ctx.model
    if f.model == "not a path":
        add(res(n, "model.present", "pass", f"{m} is a hub id: vLLM downloads it on start"))
    elif f.model == "missing":
        add(res(n, "model.present", "fail", f"{m} does not exist on {n}",
                f"copy the model to {m} on every node (e.g. `rsync -a {m}/ {n}:{m}/`)"))
    elif f.model == "ok":
        add(res(n, "model.present", "pass", f"{m} ({human(f.model_bytes)})"))
    else:
        add(res(n, "model.present", "warn", f"{m} on {n}: {f.model}",
                "check the path is readable by root (`du -sbL` on it)"))


def _shm(ctx: NodeCtx, f: NodeFacts, add) -> None:  # type: ignore[no-untyped-def]
    n = ctx.name
    want = shm_size_bytes(ctx.shm_size)
    if ctx.ipc_host:
        need = want or SHM_DEFAULT_MIN
        have = f.shm.size_bytes if f.shm else None
        if have is None:
            add(res(n, "shm.size", "warn", f"could not read the size of /dev/shm on {n}",
                    "check `df -h /dev/shm`"))
        elif have < need:
            add(res(n, "shm.size", "warn", f"/dev/shm on {n} is {human(have)}, the containers "
                    f"share it (ipc_host) and need {human(need)}",
                    f"`mount -o remount,size={max(1, need >> 30)}G /dev/shm` on {n} "
                    "(and in /etc/fstab)"))
        else:
            add(res(n, "shm.size", "pass", f"/dev/shm {human(have)} shared with the containers"))
    elif want is not None:
        add(res(n, "shm.size", "pass" if want >= SHM_DEFAULT_MIN else "warn",
                f"containers get their own /dev/shm of {ctx.shm_size}",
                "raise container.shm_size in the playbook (vLLM needs at least 1g)"))
    else:
        add(res(n, "shm.size", "warn", "containers get the runtime's default /dev/shm (64 MB): "
                "too small for vLLM", "set container.shm_size (e.g. 16g) or ipc_host: true"))


def _stale_containers(ctx: NodeCtx, f: NodeFacts, add) -> None:  # type: ignore[no-untyped-def]
    n = ctx.name
    if f.containers is None:
        add(res(n, "stale.containers", "warn", f"could not list containers on {n}: "
                f"{f.containers_error[:200]}", f"run `{ctx.runtime} ps -a` on {n}"))
        return
    own = own_containers(ctx, f.containers)
    old = [c for c in own if c.spec_hash not in ctx.spec_hashes]
    others = [c for c in f.containers if c.labels.get(LABEL_DEPLOYMENT) != ctx.deployment]
    msgs = [f"{c.name} ({c.status}) of this deployment has another spec" for c in old]
    deps = sorted({c.labels.get(LABEL_DEPLOYMENT, "?") for c in others})
    if others:
        msgs.append(f"{len(others)} container(s) of other deployment(s) {', '.join(deps)} on {n}: "
                    + ", ".join(f"{c.name} ({c.status})" for c in others[:3])
                    + (" ..." if len(others) > 3 else ""))
    if msgs:
        add(res(n, "stale.containers", "warn", "; ".join(msgs),
                "orch up removes this deployment's old containers itself; remove another "
                "deployment's with `orch down <its inventory>` (they hold devices and ports)"))
    else:
        cur = [c for c in own if c.spec_hash in ctx.spec_hashes]
        add(res(n, "stale.containers", "pass", f"{cur[0].name} is this deployment, same spec "
                f"({cur[0].status})" if cur else "no other orch containers"))


def _stale_processes(ctx: NodeCtx, f: NodeFacts, add) -> None:  # type: ignore[no-untyped-def]
    n = ctx.name
    own_ids = {c.id for c in own_containers(ctx, f.containers or [])}
    foreign = [p for p in f.procs if not own_ids & set(p.container_ids)]
    bare = [p for p in foreign if not p.in_container]
    boxed = [p for p in foreign if p.in_container]
    if bare:
        add(res(n, "stale.processes", "fail",
                f"vLLM running on {n} outside any container: " + "; ".join(
                    f"pid {p.pid} ({p.args[:60]})" for p in bare[:3]),
                f"stop it (`kill {' '.join(str(p.pid) for p in bare)}` on {n}): it holds "
                "accelerators, ports and /dev/shm; orch never kills processes it did not start"))
    elif boxed:
        names = {c.id: c.name for c in f.containers or []}
        where = sorted({names.get(p.container_ids[0], p.container_ids[0][:12])
                        for p in boxed if p.container_ids})
        add(res(n, "stale.processes", "warn",
                f"{len(boxed)} vLLM process(es) on {n} in other containers"
                + (f" ({', '.join(where)})" if where else "") + ": pid "
                + ", ".join(str(p.pid) for p in boxed[:5]),
                f"`{ctx.runtime} ps` on {n}; stop the container that does not belong here"))
    else:
        add(res(n, "stale.processes", "pass", "no vLLM outside this deployment's containers"))


# ----------------------------------------------------------------------- cross-node


def majority(values: Mapping[str, str]) -> str | None:
    """The value most nodes have; None on a tie."""
    top = Counter(values.values()).most_common(2)
    if not top or (len(top) == 2 and top[0][1] == top[1][1]):
        return None
    return top[0][0]


def same_checks(check: str, values: Mapping[str, str], what: str, fix: str,
                status: Status = "fail", show: Callable[[str], str] = lambda v: v[:24],
                ) -> list[CheckResult]:
    """Every node must have the same value (the majority's); `what` names the value."""
    ref = majority(values)
    out = []
    for node, v in values.items():
        if v == ref:
            out.append(res(node, check, "pass", f"same {what} as the other nodes ({show(v)})"
                           if len(values) > 1 else f"{what} {show(v)}"))
        elif ref is None:
            others = ", ".join(f"{k} {show(x)}" for k, x in values.items() if k != node)
            out.append(res(node, check, status, f"{what} {show(v)} on {node}, but {others}", fix))
        else:
            out.append(res(node, check, status, f"{what} {show(v)} on {node}, most nodes have "
                           f"{show(ref)}", fix))
    return out


def ping_checks(nodes: list[str], ips: Mapping[str, str], cross: Mapping[str, CrossFacts],
                ) -> list[CheckResult]:
    """net.ping for every node with cross facts. A node nobody reaches is the one at fault;
    otherwise the node whose pings fail is.  A planned link's TCP connect that was answered
    (connected, or refused) shows its peer reachable too: peers.py pings no peer a node
    connects to (a connect that timed out proves nothing here: ports.reachable reports it)."""
    ok: dict[tuple[str, str], bool] = {}
    how: dict[str, set[str]] = {}
    for x in cross:
        answered = {ip for (ip, _), r in cross[x].connects.items() if r in ("connected", "refused")}
        for y, ip in ips.items():
            if y != x and ip in cross[x].pings:
                r = cross[x].pings[ip]
                ok[x, y] = r.ok
                how.setdefault(x, set()).add(r.how)
            elif y != x and ip in answered:
                ok[x, y] = True
                how.setdefault(x, set()).add("link")
    dead = set()
    for y in ips:
        pingers = [x for (x, t) in ok if t == y]
        if pingers and not any(ok[x, y] for x in pingers):
            own = [ok[y, t] for (s, t) in ok if s == y]
            if len(pingers) >= 2 or (own and not any(own)):
                dead.add(y)
    fix = ("check the cluster network between the nodes: cabling/VLAN, `ip route`, "
           "firewalls (`iptables -S`); vLLM and HCCL/NCCL need every node to reach every other")
    out = []
    for x in nodes:
        if x not in cross:
            continue
        msgs = []
        if x in dead:
            msgs.append(f"{x} ({ips[x]}) is not reachable from "
                        + ", ".join(s for (s, t) in ok if t == x))
        lost = [y for (s, y) in ok if s == x and not ok[s, y] and y not in dead]
        if lost:
            msgs.append(f"{x} cannot reach " + ", ".join(f"{y} ({ips[y]})" for y in lost))
        if "none" in how.get(x, set()):
            out.append(res(x, "net.ping", "warn", f"{x} has neither ping nor bash/python3 "
                           "to test its peers", "install iputils-ping"))
        elif msgs:
            out.append(res(x, "net.ping", "fail", "; ".join(msgs), fix))
        else:
            peers = [t for (s, t) in ok if s == x]
            kinds = how.get(x, set())
            via = " over TCP (no ping on the node)" if "tcp" in kinds and "ping" not in kinds else ""
            out.append(res(x, "net.ping", "pass", f"reaches {', '.join(peers)}{via}"
                           if peers else "no peer with a known cluster IP"))
    return out


def ports_reachable_checks(head: str, head_ip: str | None, ports: list[tuple[str, int]],
                           busy: set[int], cross: Mapping[str, CrossFacts],
                           own: frozenset[int] | set[int] = frozenset()) -> list[CheckResult]:
    """ports.reachable: the head's test listeners (or, for `own` ports, this deployment's
    running vLLM) seen from every other node. When every peer fails the head (its firewall)
    is at fault, else the peers that failed. `busy` ports (someone else's) are not tested."""
    peers = [p for p in cross if p != head]
    if head not in cross or head_ip is None or not peers:
        return []
    out: list[CheckResult] = []
    head_msgs, head_warn, tested = [], [], 0
    peer_msgs: dict[str, list[str]] = {p: [] for p in peers}
    for label, port in ports:
        if port in busy and port not in own:
            head_warn.append(f"{label} port {port} not tested: in use on {head} (ports.free)")
            continue
        lines = (["bound: this deployment's vLLM"] if port in own
                 else cross[head].listens.get(port, []))
        if not lines or not lines[0].startswith("bound"):
            head_warn.append(f"{label} port {port}: no test listener on {head} "
                             f"({(lines or ['no output'])[-1][:120]})")
            continue
        tested += 1
        res_by_peer = {p: cross[p].connects.get((head_ip, port), "not run") for p in peers}
        failed = {p: r for p, r in res_by_peer.items() if r != "connected"}
        if failed and len(failed) == len(peers):
            kinds = sorted(set(failed.values()))
            why = {"timeout": "timed out: a firewall drops it",
                   "refused": "refused: a firewall rejects it"}
            head_msgs.append(f"{label} port {port} on {head} ({head_ip}) not reachable from "
                             f"{', '.join(failed)} ({'; '.join(why.get(k, k) for k in kinds)})")
        else:
            for p, r in failed.items():
                peer_msgs[p].append(f"{p} cannot connect to {head}:{port} ({r})")
    fix = ("open the ports between the nodes (`iptables -S`, firewalld, security groups); "
           "vLLM also uses ephemeral ports between nodes, so allow all TCP within the cluster")
    if head_msgs:
        out.append(res(head, "ports.reachable", "fail", "; ".join(head_msgs + head_warn), fix))
    elif head_warn:
        out.append(res(head, "ports.reachable", "warn", "; ".join(head_warn),
                       "install python3 or perl on the head, or test by hand: `nc -l PORT` "
                       "there and `nc -zv HEAD PORT` from the others"))
    else:
        out.append(res(head, "ports.reachable", "pass", f"{', '.join(f'{lbl} {p}' for lbl, p in ports)}"
                       f" on {head} reachable from {', '.join(peers)}"))
    for p in peers if tested else []:
        if peer_msgs[p]:
            out.append(res(p, "ports.reachable", "fail", "; ".join(peer_msgs[p]), fix))
        else:
            out.append(res(p, "ports.reachable", "pass", f"connects to {head} ({head_ip})"))
    return out


_RANK = {"pass": 0, "warn": 1, "fail": 2}


def merge_rows(rows: list[CheckResult]) -> list[CheckResult]:
    """One row per (node, check): the worst status, the reasons of that status joined."""
    by: dict[tuple[str, str], list[CheckResult]] = {}
    for r in rows:
        by.setdefault((r.node, r.check), []).append(r)
    out = []
    for (node, check), rs in by.items():
        worst = max(rs, key=lambda r: _RANK[r.status]).status
        top = [r for r in rs if r.status == worst]
        out.append(res(node, check, worst, "; ".join(dict.fromkeys(r.reason for r in top)),
                       top[0].fix))
    return out


def link_checks(links: list[Link], ips: Mapping[str, str], busy: Mapping[str, set[int]],
                own: Mapping[str, set[int]], cross: Mapping[str, CrossFacts]) -> list[CheckResult]:
    """ports.reachable along the plan's links: for each destination node, the ports others
    dial there, seen from those others (ports_reachable_checks per destination and set of
    sources), merged into one row per node."""
    want: dict[tuple[str, tuple[str, ...]], list[tuple[str, int]]] = {}
    for dst in dict.fromkeys(lk.dst for lk in links):
        srcs: dict[int, tuple[str, list[str]]] = {}
        for lk in links:
            if lk.dst == dst:
                label, who = srcs.setdefault(lk.port, (lk.label, []))
                if lk.src not in who and lk.src in cross:
                    who.append(lk.src)
        for port, (label, who) in srcs.items():
            if who:
                want.setdefault((dst, tuple(who)), []).append((label, port))
    rows: list[CheckResult] = []
    for (dst, srcs_of), ports in want.items():
        sub = {n: cross[n] for n in (dst, *srcs_of) if n in cross}
        rows += ports_reachable_checks(dst, ips.get(dst), ports, busy.get(dst, set()), sub,
                                       own.get(dst, set()))
    return merge_rows(rows)


def identical_checks(manifests: Mapping[str, Manifest | None | str], model: str) -> list[CheckResult]:
    """model.identical: every node's model directory holds the same files with the same
    hashes (the manifest most nodes have is the reference); a differing node is told which
    files differ.  Nodes without the directory are model.present's failure, not this one's."""
    have = {n: m for n, m in manifests.items() if isinstance(m, Manifest)}
    out = [res(n, "model.identical", "warn", f"no manifest of {model} on {n}: {m}",
               "check that b2sum (coreutils) and find are on the node")
           for n, m in manifests.items() if isinstance(m, str)]
    ref = majority_manifest(have)
    fix = f"`orch stage` copies the files that differ from a node that has them right ({model})"
    for n, m in have.items():
        if ref is None:
            others = ", ".join(f"{k} {v.digest}" for k, v in have.items() if k != n)
            out.append(res(n, "model.identical", "fail", f"manifest {m.digest} on {n}, but {others}: "
                           "no majority to tell which is right", fix + "; pick the source with --from"))
        elif m.digest == ref.digest:
            out.append(res(n, "model.identical", "pass", f"{len(m.files)} files, same sizes and hashes "
                           f"as the other nodes (manifest {m.digest})"))
        else:
            bad = m.differs(ref)
            out.append(res(n, "model.identical", "fail", f"{len(bad)} file(s) of {model} on {n} differ "
                           f"from the other nodes: {', '.join(bad[:5])}" + (" ..." if len(bad) > 5 else ""),
                           fix))
    return out
