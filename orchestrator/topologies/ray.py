"""The Ray topology (seed 001: "Multi-node Deployment with Ray"): one vLLM instance whose
tensor x pipeline ranks are Ray actors spread over the nodes.

    plan:  node 0 container: ray start --head --block --port P --node-ip-address IP0 ...
           node i container: ray start --block --address IP0:P --node-ip-address IPi ...
           node 0 also carries the `vllm serve ... --distributed-executor-backend ray` argv
           (in its spec hash), run later inside its container
    up:    remove old containers; start the head; wait for its GCS; start the workers; wait
           until `ray status` counts every node (a worker that exits fails at once, named);
           `exec -d` vllm serve in the head's container with its output sent to the
           container's own log, and `ray stop` after it exits, so a dead vllm serve stops the
           head's container and the usual rank watching (deploy.wait_ready) sees it; then
           wait for the API and one completion.

Ray and vLLM must agree on every node's IP: `--node-ip-address` is the node's cluster IP,
the same one the profile's NIC env gives VLLM_HOST_IP.
"""

from __future__ import annotations

import asyncio
import re
import time

from .. import flags as vflags
from ..capacity import check_capacity
from ..cluster import Session
from ..deploy import Launches, UpResult, current_state, preflight, remove_all, wait_ready
from ..errors import DeployError, RankExited, TopologyError
from ..health import group_probe
from ..inventory import Inventory
from ..log import log
from ..plan import NodeNet, NodeSpec, Plan, _node_spec, merged_serve_flags, render_flags
from ..playbook import Playbook, Profile
from ..probe import Api
from . import api_warnings, node_env, resolve_nets

# Flags orch sets itself in this topology, besides plan.DERIVED_FLAGS.
RAY_DERIVED = frozenset({"--distributed-executor-backend", "--pipeline-parallel-size", "-pp"})
# Runs in the head's container: vllm serve with its output in the container's log; when it
# exits, `ray stop` ends `ray start --block` (the container's PID 1), so the container stops.
SERVE_SCRIPT = ('"$@" >/proc/1/fd/1 2>/proc/1/fd/2; rc=$?; '
                'echo "orch: vllm serve exited with status $rc; stopping ray" >/proc/1/fd/2; '
                'ray stop --force >/dev/null 2>&1')
_NODE_LINE = re.compile(r"^\s*\d+\s+node_[0-9a-f]+", re.M)


def plan_ray(inv: Inventory, pb: Playbook, prof: Profile, nets: dict[str, NodeNet] | None,
             secret_digest: str | None) -> Plan:
    assert pb.ray is not None
    o = inv.overrides
    nodes, resolved, unresolved = resolve_nets(inv, nets)
    n = len(nodes)
    if n < pb.min_nodes or (pb.max_nodes is not None and n > pb.max_nodes):
        most = f"-{pb.max_nodes}" if pb.max_nodes else "+"
        raise TopologyError(f"playbook {pb.name!r} needs {pb.min_nodes}{most} node(s), "
                            f"the inventory lists {n}")
    dp = o.data_parallel or pb.parallel.data
    if dp != 1 or o.data_parallel_local or pb.parallel.data_local:
        raise TopologyError("topology ray runs one vLLM instance: "
                            "data parallel belongs to topology dp")
    tp = o.tensor_parallel or pb.parallel.tensor
    pp = pb.parallel.pipeline
    world = tp * pp
    if prof.kind != "cpu":
        have = sum(nd.devices if nd.devices is not None else prof.devices for nd in nodes)
        if world > have:
            raise TopologyError(f"tensor {tp} x pipeline {pp} = {world} {prof.kind} devices, "
                                f"but the {n} nodes have {have} ({prof.name})")
    api_port = o.api_port or pb.ports.api
    if api_port == pb.ray.port:
        raise TopologyError(f"the API port and Ray's GCS port are both {api_port}")
    flags = merged_serve_flags(inv, pb)
    bad = sorted(f for f in flags if f in RAY_DERIVED)
    if bad:
        raise TopologyError(f"{', '.join(bad)}: set by orch in topology ray (parallel.pipeline)")
    served = inv.model.served_name or inv.model.path
    bind_host = o.host or pb.host
    serve = ["vllm", "serve", inv.model.path, "--host", bind_host, "--port", str(api_port),
             "--tensor-parallel-size", str(tp), "--pipeline-parallel-size", str(pp),
             "--distributed-executor-backend", "ray", "--served-model-name", served]
    if pb.parallel.expert:
        serve.append("--enable-expert-parallel")
    serve += render_flags(flags)
    vflags.check_flags(serve, pb.vllm_version, f"playbook {pb.name!r}")
    per_node = -(-world // n)
    warnings = api_warnings(bind_host, flags, inv)
    used = [max(0, min(per_node, world - i * per_node)) for i in range(n)]
    warnings += check_capacity(pb, prof, flags, used, 1)
    head_ip = resolved[0].ip
    specs: list[NodeSpec] = []
    for i, (node, net) in enumerate(zip(nodes, resolved)):
        env = node_env(inv, prof, node, net, {"RAY_USAGE_STATS_ENABLED": "0"}, pb.env)
        start = ["ray", "start", "--block", "--node-ip-address", net.ip, "--disable-usage-stats"]
        if i == 0:
            start[2:2] = ["--head", "--port", str(pb.ray.port)]
        else:
            start[2:2] = ["--address", f"{head_ip}:{pb.ray.port}"]
        start += pb.ray.start_args + (pb.ray.head_args if i == 0 else [])
        head = i == 0
        specs.append(_node_spec(inv, pb, prof, node, "ray-head" if head else "ray-worker", i,
                                int(head), net, serve if head else [], env, secret_digest,
                                used[i], api_port, command=start))
    warnings += vflags.env_warnings(specs[0].env, pb.vllm_version)
    return Plan(deployment=inv.deployment, playbook=pb.name, runtime=inv.runtime, image=inv.image,
                model=inv.model.path, served_name=served,
                api_host=nodes[0].host if nodes[0].name in unresolved else head_ip,
                api_port=api_port, nodes=specs, unresolved=unresolved, warnings=warnings)


def count_nodes(status_text: str) -> int:
    """Active nodes in `ray status` output (lines like ` 1 node_3f2a...` under Active:)."""
    if "Active:" not in status_text:
        return 0
    active = status_text.split("Active:", 1)[1].split("Pending:", 1)[0]
    return len(_NODE_LINE.findall(active))


def serve_exec_argv(runtime: str, container: str, serve: list[str]) -> list[str]:
    return [runtime, "exec", "-d", container, "sh", "-c", SERVE_SCRIPT, "sh", *serve]


async def _exited(s: Session, plan: Plan, specs: list[NodeSpec]) -> None:
    from ..deploy import watch_ranks

    sub = Plan(**{**plan.__dict__, "nodes": specs})
    failures = await watch_ranks(s, sub)
    if failures:
        raise RankExited(failures)


async def ray_status(s: Session, plan: Plan) -> tuple[bool, str]:
    h = s.hosts[plan.head.name]
    r = await h.run([plan.runtime, "exec", plan.head.container, "ray", "status"], check=False,
                    merge=True, timeout=60)
    return r.ok, r.stdout


async def wait_joined(s: Session, plan: Plan, deadline: float, started: list[NodeSpec]) -> float:
    """Until `ray status` in the head counts every node of the plan; the containers in
    `started` are watched meanwhile.  Returns the seconds waited."""
    t0 = time.monotonic()
    want = len(plan.nodes)
    seen, last = -1, ""
    while True:
        await _exited(s, plan, started)
        ok, out = await ray_status(s, plan)
        got = count_nodes(out) if ok else 0
        if got != seen:
            log.info("ray nodes joined", joined=got, of=want)
            seen = got
        last = out.strip().splitlines()[-1][-160:] if out.strip() else ""
        if got >= want and len(started) == want:
            return time.monotonic() - t0
        if got >= 1 and len(started) < want:
            return time.monotonic() - t0  # the head is up: time to start the workers
        if time.monotonic() >= deadline:
            what = "the Ray head" if len(started) < want else f"all {want} nodes"
            raise DeployError(f"{what} did not join within {time.monotonic() - t0:.0f}s "
                              f"({got} of {want} active in `ray status`; last: {last})")
        await asyncio.sleep(2.0)


async def up_ray(s: Session, *, timeout_s: float = 1800, keep_on_failure: bool = False,
                 force: bool = False, checks: bool = True,
                 skip_checks: frozenset[str] = frozenset()) -> UpResult:
    api_key = s.dep.api_key
    t0 = time.monotonic()
    deadline = t0 + timeout_s
    plan = await s.plan()
    assert s.dep.playbook.ray is not None
    join_s = s.dep.playbook.ray.join_timeout_s
    why = "forced"
    if not force:
        same, why = await current_state(s, plan)
        if same:
            async with Api(plan.api_url, api_key) as api:
                st = await api.state(plan.served_name)
                g = await group_probe(api, plan.served_name, 1) if st.ready else None
                if g is not None and g.ok:
                    return UpResult(False, f"healthy and unchanged ({g.reason})", plan,
                                    time.monotonic() - t0)
                why = f"API not ready: {st.reason}" if g is None else f"unhealthy: {g.reason}"
        log.info("deploying", reason=why, topology="ray")
    if checks:
        await preflight(s, plan, skip_checks)
    for node, names in (await remove_all(s)).items():
        if names:
            log.info("removed old containers", node=node, containers=names)
    started: dict[str, str] = {}
    async with Launches(s, plan, keep_on_failure) as launches:
        started[plan.head.name] = await launches.start(plan.head)
        await wait_joined(s, plan, min(deadline, time.monotonic() + join_s), [plan.head])
        rest = plan.nodes[1:]
        started.update(zip([n.name for n in rest], await launches.start_all(rest)))
        waited = await wait_joined(s, plan, min(deadline, time.monotonic() + join_s), plan.nodes)
        log.info("ray cluster complete", nodes=len(plan.nodes),
                 seconds=round(time.monotonic() - t0, 1), join_wait_s=round(waited, 1))
        h = s.hosts[plan.head.name]
        await h.run(serve_exec_argv(plan.runtime, plan.head.container, plan.head.serve_argv),
                    timeout=60)
        log.info("vllm serve started in the head's container", node=plan.head.name)
        answer = await wait_ready(s, plan, deadline, api_key)
    log.info("serving", url=plan.api_url, model=plan.served_name,
             seconds=round(time.monotonic() - t0, 1))
    return UpResult(True, why, plan, time.monotonic() - t0, started, answer)
