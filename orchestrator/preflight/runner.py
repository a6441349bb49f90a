"""run_checks and clean_stale: the SSH side of the preflight.

Two rounds, every node at once in each:
    1. gather (+ the Ascend probe, on a second channel of the same connection); the network
       facts the session read while planning are reused, not gathered again
    2. cross, bounded per node (peers.py): pings to the group's head and ring neighbours,
       short test listeners on the ports the plan's links dial and the connects along those
       links, hccn_tool pings between NPUs of the same peers.  The nodes that listen start
       first; a node that only connects starts once its peers' listeners are bound (each
       listener says so at once on its script's output), so no connect waits on a listener
       that is still starting and the round costs one try per link
All decisions are made by the pure functions of `verdicts.py` / `accel.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections.abc import Awaitable, Iterable
from typing import Any

from .. import netinfo
from ..cluster import MANIFEST_TIMEOUT, Session
from ..errors import CommandError, ConnectError, StageError, TopologyError
from ..hw import ProbeOutput, split_probe_output
from ..hw.ascend_probe import AscendProbe, ascend_probe_script, parse_ascend_probe
from ..log import log
from ..plan import Fleet, NodeNet
from ..remote import Result
from ..runtime import Look
from ..stage.manifest import CACHE_DIR, MANIFEST_SCRIPT, Manifest, parse_manifest
from . import scripts
from .accel import ascend_checks, gpu_checks, hccn_ping_plan
from .parse import CrossFacts, NodeFacts, fill_from_api, fill_runtime, image_id, parse_cross, parse_gather
from .peers import CrossPlan, cross_plan, fleet_peers
from .report import CHECKS, SKIPPED_REASON, CheckResult, Report, order, skipped
from .verdicts import (
    NodeCtx,
    identical_checks,
    link_checks,
    node_checks,
    ping_checks,
    port_users,
    res,
    runtime_ok,
    same_checks,
)

ASCEND_CHECKS = tuple(c for c in CHECKS if c.startswith(("npu.", "hccn."))) + ("driver.same",)
GPU_CHECKS = ("gpu.count", "gpu.busy", "gpu.driver", "driver.same")
GATHER_TIMEOUT = 90
PROBE_TIMEOUT = 180
CROSS_TIMEOUT = 40  # pings and connects are bounded by scripts.*_DEADLINE; this is the margin
HCCN_PING_TIMEOUT = 35  # per peer, each NPU's pings run one after the other
READY_WAIT = 10  # seconds a connecting node waits for its peers' listeners before it starts anyway
READY_MARK = b"==== ready "


def applicable(kind: str, multi: bool, has_ports: bool, model_is_path: bool) -> list[str]:
    """The checks a reachable node gets (for --skip-checks rows)."""
    out = [c for c in CHECKS[:15] if c not in ("net.ping", "ports.reachable", "ports.free",
                                               "image.same", "model.same", "model.identical")]
    if multi:
        out += ["net.ping", "ports.reachable", "image.same"] + (
            ["model.same", "model.identical"] if model_is_path else [])
    if has_ports:
        out.append("ports.free")
    if kind == "ascend":
        out += [c for c in ASCEND_CHECKS if multi or c != "hccn.ping"]
    elif kind in ("nvidia", "rocm"):
        out += list(GPU_CHECKS)
    return out + ["stale.containers", "stale.processes", "stale.shm"]


def _user(h: Any) -> str:
    if not getattr(h, "sudo", False):
        return "root"
    return getattr(getattr(h, "target", None), "user", None) or "a non-root user"


def _why(exc: BaseException) -> str:
    if isinstance(exc, CommandError):  # its message holds the whole script: keep the outcome
        tail = (exc.output.strip().splitlines() or [""])[-1][:200]
        return tail if exc.rc is None else f"exit {exc.rc}: {tail}"
    if isinstance(exc, ConnectError):
        return exc.message.splitlines()[0]
    return f"{type(exc).__name__}: {exc}"


async def _runtime_look(s: Session, h: Any, gargs: list[str]) -> Look | str:
    """The runtime's answers through its API; where the socket turns out to be unreachable,
    the `runtime` script's output (the CLI's sections) instead."""
    look = await s.runtime_look(h, gargs[1])
    if look is not None:
        return look
    r = await h.run(["sh", "-c", scripts.runtime_script(), "sh", *gargs], check=False,
                    timeout=GATHER_TIMEOUT)
    return str(r.stdout)


async def _run_listening(h: Any, argv: list[str], want: int, ready: asyncio.Event,
                         timeout: float) -> Result:
    """The cross script of a node that opens `want` listeners; `ready` is set once all are
    bound (or failed to bind), or the script ended."""
    try:
        p = await h.start(argv)
        buf = b""
        try:
            async with asyncio.timeout(timeout):
                while chunk := await p.read():
                    buf += chunk
                    if not ready.is_set() and buf.count(READY_MARK) >= want:
                        ready.set()
                rc = await p.wait()
        except TimeoutError as exc:
            raise CommandError(h.name, argv[:3], None, f"timed out after {timeout:.0f}s") from exc
        finally:
            p.close()
    finally:
        ready.set()
    return Result(rc, buf.decode(errors="replace"), "")


async def _run_cross(h: Any, argv: list[str], timeout: float, cp: CrossPlan,
                     ready: dict[str, asyncio.Event]) -> Result:
    """An exec that carries the node's cross ops: a node that listens is read as it runs (its
    peers wait for its `ready`); a node that only connects starts once the nodes it dials
    are listening, or after READY_WAIT (a listener that never says so only delays it)."""
    if h.name in ready:
        return await _run_listening(h, argv, cp.listening[h.name], ready[h.name], timeout)
    waits = [ready[d].wait() for d in cp.dials.get(h.name, ()) if d in ready]
    if waits:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*waits), READY_WAIT)
    r: Result = await h.run(argv, check=False, timeout=timeout)
    return r


def _plan_ips(fleet: Fleet, reachable: Iterable[str]) -> dict[str, str] | None:
    """Every reachable node's cluster IP as the plan has it (the inventory's, or found from
    the facts the session read while planning); None while one is still a placeholder."""
    want = set(reachable)
    out: dict[str, str] = {}
    for sp in fleet.nodes:
        if sp.name in want:
            try:
                out[sp.name] = str(ipaddress.ip_address(sp.ip))
            except ValueError:
                return None
    return out


async def run_checks(s: Session, fleet: Fleet, skip: frozenset[str] = frozenset(), *,
                     replan: bool = False) -> Report:
    """Every check on every node of `fleet`.  `replan`: `fleet` was planned without the
    nodes' facts (`orch check`): the gather reads them and the plan is made again with them
    (and with the model's manifest digest when the inventory folds it into the spec hash)."""
    t0 = time.monotonic()
    dep = s.dep
    kind = dep.profile.kind
    names = fleet.node_names()
    multi = len(names) > 1
    inv_nodes = {n.name: n for n in dep.inv.nodes}
    out: list[CheckResult] = []
    for n, exc in s.unreachable.items():
        out.append(res(n, "ssh.reachable", "fail", _why(exc),
                       "check the node is up, the address/port/user/key in the inventory, and "
                       "`ssh` to it by hand"))
    for n in names:
        if n not in s.hosts and n not in s.unreachable:
            out.append(res(n, "ssh.reachable", "fail", f"no SSH session to {n}",
                           "open the session with every node of the plan"))
    want_probe = kind == "ascend" and not all(skipped(c, skip) for c in ASCEND_CHECKS)
    seen = dict(s.facts_seen)  # network facts the session read already: not gathered again
    model = dep.inv.model.path
    digest_wanted = replan and dep.inv.model.digest_in_spec
    want_manifest = model.startswith("/") and (
        (multi and not skipped("model.identical", skip)) or digest_wanted)
    mscript = (MANIFEST_SCRIPT, CACHE_DIR) if want_manifest else ()
    ports = {n: sorted({p.number for sp in fleet.on(n) for p in sp.listens}) for n in names}
    do_ports = multi and not skipped("ports.reachable", skip)
    do_ping = multi and not skipped("net.ping", skip)
    want_hccn = want_probe and multi and not skipped("hccn.ping", skip)
    # One round trip when the cross ops are known before the gather (every IP is in the plan,
    # no hccn pings, which need the probe's NPU addresses): the cross ops run in the gather's
    # exec.  Made again from the gathered facts afterwards; where they differ, round 2 runs.
    known = _plan_ips(fleet, s.hosts) if (do_ports or do_ping) and not want_hccn else None
    pre = cross_plan(fleet, names, s.hosts, known, ports=do_ports, ping=do_ping) if known else None
    ready1 = {n: asyncio.Event() for n in (pre.listening if pre else {})}

    async def round1(h: Any) -> tuple[Any, Any, Any]:
        # the runtime's API (a channel to its socket, no process on the node) beside the
        # gather; the CLI's sections only where the socket cannot be reached
        api = s.runtime_api_possible(h)
        gargs = scripts.gather_args(dep.inv.runtime, dep.inv.image, model, ports[h.name], mscript)
        timeout = MANIFEST_TIMEOUT if want_manifest else GATHER_TIMEOUT
        ops = pre.ops.get(h.name) if pre else None
        if pre and ops:
            script = scripts.check_script(kind, with_net=h.name not in seen, runtime_cli=not api)
            main = _run_cross(h, ["sh", "-c", script, "sh", *gargs, *ops],
                              max(timeout, CROSS_TIMEOUT), pre, ready1)
        else:
            gather = scripts.gather_script(kind, with_net=h.name not in seen, runtime_cli=not api)
            main = h.run(["sh", "-c", gather, "sh", *gargs], check=False, timeout=timeout)
        jobs: list[Awaitable[Any]] = [main]
        if api:
            jobs.append(_runtime_look(s, h, gargs))
        if want_probe:
            node = inv_nodes[h.name]
            ndev = node.devices if node.devices is not None else dep.profile.devices
            jobs.append(h.sh(ascend_probe_script(ndev), check=False, timeout=PROBE_TIMEOUT))
        got = await asyncio.gather(*jobs, return_exceptions=True)
        for x in got:  # a dropped connection: each() reconnects and runs the round again
            if isinstance(x, ConnectError) and x.transient:
                raise x
        return got[0], got[1] if api else None, got[-1] if want_probe else None

    facts: dict[str, NodeFacts] = {}
    probes: dict[str, AscendProbe | None] = {}
    probe_errors: dict[str, str] = {}
    manifests: dict[str, Manifest | None | str] = {}  # str: why there is none
    cross1: dict[str, CrossFacts] = {}  # the cross ops' results where round 1 carried them
    for n, r in (await s.each(round1, names)).items():
        g, look, p = (r, None, None) if isinstance(r, BaseException) else r
        h = s.hosts[n]
        if isinstance(g, BaseException):
            why = (f"connected to {n}, but the checks did not finish ({_why(g)})"
                   if isinstance(g, CommandError) else f"{n}: {_why(g)}")
            out.append(res(n, "ssh.reachable", "fail", why,
                           "check the node and its SSH connection (a hung NFS mount stalls "
                           "`df`/`du`); rerun"))
            continue
        if "==== id ====" not in g.stdout:
            err = (g.stderr or g.stdout).strip().splitlines()
            out.append(res(n, "ssh.reachable", "pass", f"ssh to {h.target.host}"
                           if hasattr(h, "target") else "connected"))
            sudo = getattr(h, "sudo", False) and "sudo" in g.stderr
            out.append(res(n, "ssh.root", "fail", f"{'sudo -n' if sudo else 'sh'} failed on {n}: "
                           f"{(err or ['no output'])[-1][:200]}",
                           "log in as root or give the user passwordless sudo "
                           "(`sudo -n true` must work)"))
            continue
        out.append(res(n, "ssh.reachable", "pass", f"ssh to {h.target.host}"
                       if hasattr(h, "target") else "connected"))
        secs = split_probe_output(g.stdout)
        facts[n] = f = parse_gather(secs, seen.get(n))
        if pre and n in pre.ops:
            cross1[n] = parse_cross(secs)
        if isinstance(look, BaseException):
            why = _why(look)
            f.runtime_info = ProbeOutput(f"cannot ask the runtime: {why}", 1)
            f.containers, f.containers_error = None, why
        elif isinstance(look, str):  # the runtime script's output (the CLI's sections)
            fill_runtime(f, look)
        elif look is not None:
            fill_from_api(f, look)
        if want_manifest:
            try:
                manifests[n] = parse_manifest(n, f.manifest) if f.manifest is not None else (
                    "no result")
            except StageError as exc:
                manifests[n] = str(exc)
            if f.model == "ok" and isinstance(m := manifests[n], Manifest):
                f.model_bytes = m.bytes  # the gather sized the model by its manifest, not du
        if want_probe:
            if isinstance(p, BaseException) or p is None:
                probe_errors[n] = _why(p) if p is not None else "no result"
            else:
                probes[n] = parse_ascend_probe(p.stdout)

    # nets resolved on the hosts; the plan re-rendered with them when it had placeholders
    nets: dict[str, NodeNet] = {}
    for n, f in facts.items():
        if f.net is not None:
            try:
                nets[n] = netinfo.resolve(inv_nodes[n], f.net)
            except TopologyError:
                pass
    eff = fleet
    if replan or fleet.unresolved:
        digest = None
        if digest_wanted:  # the first node (inventory order) that has the model: the reference
            digest = next((m.digest for n in inv_nodes
                           if isinstance(m := manifests.get(n), Manifest)), None)
        try:
            eff = dep.plan(nets, digest)
        except TopologyError:
            eff = fleet
    by_node = {n: eff.on(n) for n in names}
    c = dep.playbook.container
    ctxs: dict[str, NodeCtx] = {}
    for n, f in facts.items():
        listens = tuple(dict.fromkeys((p.label, p.number) for sp in by_node[n] for p in sp.listens))
        ctxs[n] = NodeCtx(specs=tuple(by_node[n]), inv_node=inv_nodes[n], runtime=dep.inv.runtime,
                          deployment=eff.deployment, image=dep.inv.image,
                          model=dep.inv.model.path, ports=listens, shm_size=c.shm_size,
                          ipc_host=c.ipc_host)
        rs, _ = node_checks(ctxs[n], f, _user(s.hosts[n]))
        out += rs

    # cross-node values
    image = dep.inv.image
    ids = {n: i for n, f in facts.items() if runtime_ok(f) and (i := image_id(f.image))}
    if multi:
        out += same_checks("image.same", ids, "image ID",
                           f"pull the same tag on every node ({image}); a tag pulled at "
                           "different times can be a different image: pin it by digest")
        sizes = {n: str(f.model_bytes) for n, f in facts.items()
                 if f.model == "ok" and f.model_bytes is not None}
        out += same_checks(
            "model.same", sizes, "model size",
            f"copy the model again to the nodes that differ (`orch stage`, or `rsync -a "
            f"--delete {model}/ NODE:{model}/`); a partial copy fails at load time",
            show=lambda v: f"{v} bytes")
        if want_manifest and not skipped("model.identical", skip):
            out += identical_checks({n: m for n, m in manifests.items() if n in facts}, model)

    # round 2: probes bounded per node (peers.py), connects along the plan's links; not run
    # where round 1 carried exactly these ops already
    ips = {n: nets[n].ip for n in facts if n in nets}
    users = {n: port_users(ctxs[n], facts[n]) for n in facts if ctxs[n].ports}
    busy = {n: set(u) for n, u in users.items()}
    own = {n: {p for p, who in u.items() if who == "own"} for n, u in users.items()}
    hccn_plan = (hccn_ping_plan({n: p for n, p in probes.items() if p is not None},
                                fleet_peers(eff, names)) if want_hccn else {})
    cross: dict[str, CrossFacts] = {}
    hccn_text: dict[str, str] = {}
    # round 1's ops stand when the plan made from the facts asks for the same (before the
    # gather no port was known taken: the verdicts leave the results on busy ports out)
    cp: CrossPlan | None = None
    if pre is not None:
        again = cross_plan(eff, names, facts, ips, ports=do_ports, ping=do_ping)
        if again.ops == {n: a for n, a in pre.ops.items() if n in facts}:
            cp, cross = again, dict(cross1)
    carried = cp is not None
    if cp is None:
        cp = cross_plan(eff, names, facts, ips, ports=do_ports, ping=do_ping, busy=busy, own=own,
                        hccn=hccn_plan)
    if cp.ops and not carried:
        cscript = scripts.cross_script()
        ready = {n: asyncio.Event() for n in cp.listening}

        async def round2(h: Any) -> Any:
            per_dev = max((len(v) for v in hccn_plan.get(h.name, {}).values()), default=0)
            return await _run_cross(h, ["sh", "-c", cscript, "sh", *cp.ops[h.name]],
                                    CROSS_TIMEOUT + HCCN_PING_TIMEOUT * per_dev, cp, ready)

        for n, r in (await s.each(round2, list(cp.ops))).items():
            if isinstance(r, BaseException):
                # one failure for the node, on the first cross-node check it was to get
                name = ("net.ping" if do_ping else "ports.reachable" if do_ports else "hccn.ping")
                out.append(res(n, name, "fail", f"the cross-node checks did not finish on {n}: "
                               f"{_why(r)}", "rerun; if it hangs again, check the node's "
                               "network and that `ping`/`bash` there return"))
                continue
            cross[n] = parse_cross(r.stdout)
            hccn_text[n] = cross[n].hccn
    tested = cp.tested
    if do_ping:
        out += ping_checks(names, ips, {n: cf for n, cf in cross.items() if cf.pings or cf.connects})
    if do_ports:
        out += link_checks(tested, ips, busy, own, cross)
    if kind == "ascend" and want_probe:
        out += ascend_checks(by_node, {n: probes.get(n) for n in facts if n not in probe_errors},
                             hccn_text, probe_errors)
    elif kind in ("nvidia", "rocm"):
        out += gpu_checks(kind, by_node, {n: f.gpu for n, f in facts.items()})

    out = _apply_skips(out, skip, facts, kind, multi, {n for n in facts if ctxs[n].ports},
                       model.startswith("/"))
    return Report(order(out, names + sorted(set(s.unreachable) - set(names))),
                  time.monotonic() - t0)


def _apply_skips(out: list[CheckResult], skip: Iterable[str], facts: dict[str, NodeFacts],
                 kind: str, multi: bool, with_ports: set[str], model_is_path: bool
                 ) -> list[CheckResult]:
    skip = list(skip)
    if not skip:
        return out
    kept = [r for r in out if not skipped(r.check, skip)]
    rows = {(r.node, r.check) for r in out if skipped(r.check, skip)}
    for n in facts:
        for c in applicable(kind, multi, n in with_ports, model_is_path):
            if skipped(c, skip):
                rows.add((n, c))
    return kept + [res(n, c, "warn", SKIPPED_REASON, "") for n, c in sorted(rows)]


async def clean_stale(s: Session, fleet: Fleet) -> dict[str, list[str]]:
    """Remove /dev/shm/vllm-* and /dev/shm/psm_* segments that no process holds (fuser, or a
    scan of /proc/*/maps and fds) and that are older than a minute. Never kills anything.
    Returns the removed paths per node (nodes that could not be reached are left out)."""
    script = scripts.clean_script()
    names = fleet.node_names()
    removed: dict[str, list[str]] = {}

    async def clean(h: Any) -> Any:
        return await h.sh(script, check=False, timeout=60)

    for n, r in (await s.each(clean, names)).items():
        if isinstance(r, BaseException):
            log.warning("clean-stale failed", node=n, error=_why(r))
            continue
        removed[n] = [ln.split(" ", 1)[1] for ln in r.stdout.splitlines()
                      if ln.startswith("removed ")]
    return removed
