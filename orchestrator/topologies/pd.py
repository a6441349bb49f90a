"""Prefill/decode disaggregation, the launch side (seed 001 "Three Node A3 - PD
disaggregation"); the per-node argv and --kv-transfer-config come from orchestrator/pd.py.

    plan:  inventory nodes in order: the prefill instances' nodes, the decode instances'
           nodes, and optionally one more node for the proxy (else the proxy runs on the
           first prefill node, beside its vLLM).  One container per vLLM node (role prefill
           or decode; headless nodes inside an instance as in topology dp) and one proxy
           container (role proxy): orch's own proxy (orchestrator/pdproxy.py, sent inline
           to the image's python) or the playbook's proxy_command.
    up:    remove old containers; create shared_dirs; start every instance (its head, then
           its headless nodes), prefill before decode; start the proxy; ready when
           1. the proxy's GET /healthcheck counts every prefill and decode instance,
           2. GET /health is 200 on every instance head (non-headless node),
           3. a completion through the proxy answers;
           meanwhile every container is watched: one that stops fails the run at once,
           named, with its log.
"""

from __future__ import annotations

import asyncio
import base64
import time
import zlib
from pathlib import Path

import httpx

from ..cluster import Session
from ..deploy import Launches, UpResult, collect_tails, preflight, remove_all
from ..errors import DeployError, RankExited, RankFailure, ReadinessTimeout, TopologyError
from ..inventory import Inventory
from ..log import log
from ..pd import plan_pd
from ..plan import NodeNet, NodeSpec, Plan, _node_spec
from ..playbook import Playbook, Profile
from ..probe import Api, ProbeError
from . import api_warnings, node_env, resolve_nets

POLL_S = 2.0
READY_PROMPT = "The capital of France is"
PROGRESS_S = 15.0
PROXY_SOURCE = Path(__file__).resolve().parent.parent / "pdproxy.py"


def proxy_boot() -> str:
    """A `python3 -c` program that runs orch's proxy: its source, compressed, inline (so no
    file has to be copied to the node, and a new proxy version changes the spec hash)."""
    blob = base64.b64encode(zlib.compress(PROXY_SOURCE.read_bytes(), 9)).decode()
    return f"import base64,zlib;exec(zlib.decompress(base64.b64decode('{blob}')))"


def plan_pd_deployment(inv: Inventory, pb: Playbook, prof: Profile, nets: dict[str, NodeNet] | None,
                       secret_digest: str | None) -> Plan:
    pdp = pb.pd
    assert pdp is not None
    nodes, resolved, unresolved = resolve_nets(inv, nets)
    need = pdp.nodes_needed
    if len(nodes) not in (need, need + 1):
        raise TopologyError(
            f"PD playbook {pb.name!r} needs {need} nodes ({pdp.prefill.instances} prefill x "
            f"{pdp.prefill.nodes} + {pdp.decode.instances} decode x {pdp.decode.nodes}), plus "
            f"optionally one for the proxy; the inventory lists {len(nodes)}")
    if inv.overrides.args or inv.overrides.tensor_parallel or inv.overrides.data_parallel:
        raise TopologyError("PD playbooks take no overrides.args/tensor/data parallel: "
                            "edit the playbook's prefill/decode groups")
    served = inv.model.served_name or inv.model.path
    pdplan = plan_pd(pdp, prof, inv.model.path, served,
                     [(n.name, net) for n, net in zip(nodes[:need], resolved[:need])])
    shared = [f"{d}:{d}" for d in pdp.shared_dirs]
    run_extra = [a for m in shared for a in ("-v", m)]
    specs: list[NodeSpec] = []
    first_decode = pdp.prefill.instances
    for pn, node, net in zip(pdplan.nodes, nodes, resolved):
        g = pdp.prefill if pn.role == "prefill" else pdp.decode
        env = node_env(inv, prof, node, net, pn.env)
        cmd = None
        if pn.path_prepend:  # the seed's `export LD_LIBRARY_PATH=<dir>:$LD_LIBRARY_PATH`
            script = "; ".join(f'export {k}="{v}${{{k}:+:${k}}}"'
                               for k, v in pn.path_prepend.items())
            cmd = ["sh", "-c", script + '; exec "$@"', "sh", *pn.serve_argv]
        rank = 0 if pn.head else g.data_local * (nodes.index(node) - _instance_start(pdplan, pn))
        local = g.data_local if (pn.role == "decode" and pn.instance == first_decode) else 0
        specs.append(_node_spec(inv, pb, prof, node, pn.role, rank, local, net, pn.serve_argv, env,
                                secret_digest, g.tensor * g.data_local, g.api_port, command=cmd,
                                extra_run=run_extra))
    p_node, p_net = (nodes[need], resolved[need]) if len(nodes) > need else (nodes[0], resolved[0])
    flags = pdplan.proxy_argv[len(pdp.proxy_command):]
    if pdp.proxy == "orch":
        command = ["python3", "-c", proxy_boot(), "--host", pdp.host, *flags]
    else:
        command = list(pdplan.proxy_argv)
    specs.append(_node_spec(inv, pb, prof, p_node, "proxy", 0, 0, p_net, [], {}, secret_digest, 0,
                            pdp.proxy_port, command=command))
    warnings = api_warnings(pdp.host, pdp.serve, inv)
    if p_node.name == nodes[0].name:
        warnings.append(f"the proxy shares node {p_node.name} with a prefill instance: "
                        "`orch status` counts it as an extra container there")
    return Plan(deployment=inv.deployment, playbook=pb.name, runtime=inv.runtime, image=inv.image,
                model=inv.model.path, served_name=served,
                api_host=p_node.host if p_node.name in unresolved else p_net.ip,
                api_port=pdp.proxy_port, nodes=specs, unresolved=unresolved, warnings=warnings)


def _instance_start(pdplan, pn) -> int:  # type: ignore[no-untyped-def]
    return next(i for i, n in enumerate(pdplan.nodes) if n.instance == pn.instance)


def is_head(spec: NodeSpec) -> bool:
    """A prefill/decode node that serves an API (not --headless)."""
    return spec.role in ("prefill", "decode") and "--headless" not in spec.serve_argv


def api_port(spec: NodeSpec) -> int:
    argv = spec.serve_argv
    return int(argv[argv.index("--port") + 1])


async def watch(s: Session, plan: Plan) -> list[RankFailure]:
    """Every spec's container (found by its spec hash on its node) must be running."""
    by_node: dict[str, list[NodeSpec]] = {}
    for spec in plan.nodes:
        by_node.setdefault(spec.name, []).append(spec)

    async def one(h):  # type: ignore[no-untyped-def]
        cs = await s.containers(h)
        out = []
        for spec in by_node[h.name]:
            mine = [c for c in cs if c.spec_hash == spec.spec_hash]
            if mine and mine[0].running:
                continue
            st = f"{mine[0].status} (exit code {mine[0].exit_code})" if mine else "gone"
            tail = await s.log_tail(h, mine[0].id) if mine else ""
            out.append(RankFailure(f"{h.name} ({spec.role})", st, tail))
        return out

    failures: list[RankFailure] = []
    for name, r in (await s.each(one, list(by_node))).items():
        if isinstance(r, BaseException):
            failures.append(RankFailure(name, f"unreachable: {r}", ""))
        else:
            failures += r
    return failures


async def current_state_pd(s: Session, plan: Plan) -> tuple[bool, str]:
    found = await s.each(s.containers)
    for spec in plan.nodes:
        cs = found.get(spec.name)
        if isinstance(cs, BaseException):
            return False, f"{spec.name}: {cs}"
        mine = [c for c in cs or [] if c.spec_hash == spec.spec_hash and c.running]
        if not mine:
            return False, f"{spec.name}: no running {spec.role} container of the planned spec"
    total = sum(len(v) for v in found.values() if isinstance(v, list))
    if total != len(plan.nodes):
        return False, f"{total} containers of this deployment, {len(plan.nodes)} planned"
    return True, "ok"


async def readiness(plan: Plan, api_key: str | None, client: httpx.AsyncClient) -> tuple[bool, str]:
    """Steps 1 and 2 of readiness: (ready, reason)."""
    pdp_counts = (sum(1 for n in plan.nodes if is_head(n) and n.role == "prefill"),
                  sum(1 for n in plan.nodes if is_head(n) and n.role == "decode"))
    try:
        r = await client.get(f"{plan.api_url}/healthcheck")
        body = r.json() if r.status_code == 200 else {}
    except (httpx.HTTPError, ValueError) as exc:
        return False, f"proxy {plan.api_url}/healthcheck: {type(exc).__name__}"
    got = (body.get("prefill_instances"), body.get("decode_instances"))
    if r.status_code != 200 or got != pdp_counts:
        return False, f"proxy healthcheck answered {r.status_code} {body} (want {pdp_counts})"
    for spec in plan.nodes:
        if not is_head(spec):
            continue
        url = f"http://{spec.ip}:{api_port(spec)}/health"
        try:
            code = (await client.get(url)).status_code
        except httpx.HTTPError as exc:
            return False, f"{spec.role} instance on {spec.name}: {url}: {type(exc).__name__}"
        if code != 200:
            return False, f"{spec.role} instance on {spec.name}: {url} answered {code}"
    return True, "ok"


async def wait_pd_ready(s: Session, plan: Plan, deadline: float, api_key: str | None) -> str:
    t0 = time.monotonic()
    next_note = t0 + PROGRESS_S
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with httpx.AsyncClient(timeout=10, trust_env=False, headers=headers) as client:
        while True:
            failures = await watch(s, plan)
            if failures:
                raise RankExited(failures)
            ok, reason = await readiness(plan, api_key, client)
            if ok:
                log.info("proxy and every instance ready", waited_s=round(time.monotonic() - t0, 1))
                async with Api(plan.api_url, api_key) as api:
                    try:
                        # several tokens: vLLM's ExampleConnector (the lab's) breaks the decode
                        # instance on a one-token prompt (a negative KV block count)
                        return await api.complete(plan.served_name, prompt=READY_PROMPT,
                                                  timeout=max(10.0, deadline - time.monotonic()))
                    except ProbeError as exc:
                        raise DeployError(f"every instance is healthy but a completion through the "
                                          f"proxy failed: {exc.reason}") from exc
            now = time.monotonic()
            if now >= deadline:
                raise ReadinessTimeout(f"not ready after {now - t0:.0f}s (last: {reason}); every "
                                       "container was still running - see `orch logs`")
            if now >= next_note:
                next_note = now + PROGRESS_S
                log.info("waiting", elapsed_s=round(now - t0), last=reason)
            await asyncio.sleep(POLL_S)


async def up_pd(s: Session, *, timeout_s: float = 1800, keep_on_failure: bool = False,
                force: bool = False, checks: bool = True,
                skip_checks: frozenset[str] = frozenset()) -> UpResult:
    api_key = s.dep.api_key
    t0 = time.monotonic()
    deadline = t0 + timeout_s
    plan = await s.plan()
    pdp = s.dep.playbook.pd
    assert pdp is not None
    for w in plan.warnings:
        log.warning("plan", warning=w)
    why = "forced"
    if not force:
        same, why = await current_state_pd(s, plan)
        if same:
            async with httpx.AsyncClient(timeout=10, trust_env=False) as client:
                ok, reason = await readiness(plan, api_key, client)
            if ok:
                return UpResult(False, "healthy and unchanged", plan, time.monotonic() - t0)
            why = f"not ready: {reason}"
        log.info("deploying", reason=why, topology="pd")
    if checks:
        await preflight(s, plan, skip_checks)
    if why != "forced":
        tails = await collect_tails(s, plan)
        if tails:
            from .. import state

            state.save_log_tails(plan.deployment, tails, kind="replaced")
    for node, names in (await remove_all(s)).items():
        if names:
            log.info("removed old containers", node=node, containers=names)
    if pdp.shared_dirs:
        await s.each(lambda h: h.run(["mkdir", "-p", *pdp.shared_dirs], timeout=30))
    started: dict[str, str] = {}
    async with Launches(s, plan, keep_on_failure) as launches:
        # instance by instance, prefill first: each instance's head, then its headless nodes
        order = sorted(plan.nodes, key=lambda n: n.role == "proxy")  # prefill, decode, proxy
        for spec in order:
            started[f"{spec.name}/{spec.role}"] = await launches.start(spec)
        answer = await wait_pd_ready(s, plan, deadline, api_key)
    log.info("serving", url=plan.api_url, model=plan.served_name,
             seconds=round(time.monotonic() - t0, 1))
    return UpResult(True, why, plan, time.monotonic() - t0, started, answer)
