"""What each topology supplies to the one `up` skeleton (skeleton.py): the order of its
launches, when its API is ready, and when a running group counts as healthy.

    Launcher       single / dp: the head, then every headless node at once; ready when the
                   head's API lists the model; healthy when every DP rank serves a request
    RayLauncher    ray: the head's `ray start`, its GCS up, the workers, all nodes in
                   `ray status`, then `vllm serve` exec'd in the head; ready/healthy as dp
    PdLauncher     pd: every instance (head, then its headless nodes), prefill before decode,
                   then the proxy; ready when the proxy serves the model (vllm-router) or
                   counts every instance (the seed's proxy: /healthcheck) and every instance
                   head's /health is 200; healthy = ready
"""

from __future__ import annotations

import re
import time

from ..cluster import Session
from ..errors import DeployError, NotReady, RankExited
from ..health import group_probe
from ..log import log
from ..plan import NodeSpec, Plan
from ..plan.ray import serve_exec_argv
from ..probe import Api, ProbeError
from ..retry import poll
from .launch import Launches
from .watch import watch

POLL_S = 2.0
_NODE_LINE = re.compile(r"^\s*\d+\s+node_[0-9a-f]+", re.M)


class Launcher:
    """Topologies single and dp, and the defaults of the others."""

    async def launch(self, s: Session, plan: Plan, launches: Launches, deadline: float
                     ) -> dict[str, str]:
        started = {plan.head.name: await launches.start(plan.head)}
        rest = plan.nodes[1:]
        started.update(zip([n.name for n in rest], await launches.start_all(rest)))
        return started

    async def ready(self, plan: Plan, api_key: str | None) -> tuple[bool, str]:
        """Whether the group's API serves the model yet, and why not."""
        async with Api(plan.api_url, api_key) as api:
            st = await api.state(plan.served_name)
        return st.ready, st.reason

    async def healthy(self, plan: Plan, api_key: str | None) -> tuple[bool, str]:
        """For a group whose containers all run as planned: does it really serve?"""
        async with Api(plan.api_url, api_key) as api:
            st = await api.state(plan.served_name)
            if not st.ready:
                return False, f"API not ready: {st.reason}"
            g = await group_probe(api, plan.served_name, plan.dp_size)
        return g.ok, g.reason if g.ok else f"group unhealthy: {g.reason}"


def count_ray_nodes(status_text: str) -> int:
    """Active nodes in `ray status` output (lines like ` 1 node_3f2a...` under Active:)."""
    if "Active:" not in status_text:
        return 0
    active = status_text.split("Active:", 1)[1].split("Pending:", 1)[0]
    return len(_NODE_LINE.findall(active))


class RayLauncher(Launcher):
    async def launch(self, s: Session, plan: Plan, launches: Launches, deadline: float
                     ) -> dict[str, str]:
        assert s.dep.playbook.ray is not None
        join_s = s.dep.playbook.ray.join_timeout_s
        t0 = time.monotonic()
        started = {plan.head.name: await launches.start(plan.head)}
        await self.wait_joined(s, plan, min(deadline, time.monotonic() + join_s), [plan.head])
        rest = plan.nodes[1:]
        started.update(zip([n.name for n in rest], await launches.start_all(rest)))
        waited = await self.wait_joined(s, plan, min(deadline, time.monotonic() + join_s),
                                        plan.nodes)
        log.info("ray cluster complete", nodes=len(plan.nodes),
                 seconds=round(time.monotonic() - t0, 1), join_wait_s=round(waited, 1))
        h = s.hosts[plan.head.name]
        await h.run(serve_exec_argv(plan.runtime, plan.head.container, plan.head.serve_argv),
                    timeout=60)
        log.info("vllm serve started in the head's container", node=plan.head.name)
        return started

    async def wait_joined(self, s: Session, plan: Plan, until: float,
                          started: list[NodeSpec]) -> float:
        """Until `ray status` in the head counts the head (only the head started) or every
        node; the started containers are watched meanwhile.  Returns the seconds waited."""
        t0 = time.monotonic()
        want = len(plan.nodes) if len(started) == len(plan.nodes) else 1
        seen = -1
        try:
            async for attempt in poll(until=until, every=POLL_S):
                with attempt:
                    failures = await watch(s, started)
                    if failures:
                        raise RankExited(failures)
                    h = s.hosts[plan.head.name]
                    r = await h.run([plan.runtime, "exec", plan.head.container, "ray", "status"],
                                    check=False, merge=True, timeout=60)
                    got = count_ray_nodes(r.stdout) if r.ok else 0
                    if got != seen:
                        log.info("ray nodes joined", joined=got, of=len(plan.nodes))
                        seen = got
                    if got < want:
                        last = r.stdout.strip().splitlines()[-1][-160:] if r.stdout.strip() else ""
                        raise NotReady(f"{got} of {len(plan.nodes)} active in `ray status`; "
                                       f"last: {last}")
        except NotReady as exc:
            what = "the Ray head" if want == 1 else f"all {want} nodes"
            raise DeployError(f"{what} did not join within {time.monotonic() - t0:.0f}s "
                              f"({exc.reason})") from exc
        return time.monotonic() - t0


class PdLauncher(Launcher):
    async def launch(self, s: Session, plan: Plan, launches: Launches, deadline: float
                     ) -> dict[str, str]:
        # instance by instance, prefill first: each instance's head, then its headless nodes
        started: dict[str, str] = {}
        for spec in sorted(plan.nodes, key=lambda n: n.role == "proxy"):
            started[f"{spec.name}/{spec.role}"] = await launches.start(spec)
        return started

    async def ready(self, plan: Plan, api_key: str | None) -> tuple[bool, str]:
        heads = [n for n in plan.nodes if n.role in ("prefill", "decode") and n.api_port]
        want = (sum(n.role == "prefill" for n in heads), sum(n.role == "decode" for n in heads))
        async with Api(plan.api_url, api_key) as proxy:
            if plan.proxy == "vllm-router":  # it answers no GET but /v1/models (a prefill's)
                st = await proxy.state(plan.served_name)
                if not st.ready:
                    return False, f"proxy {plan.api_url}: {st.reason}"
            else:  # the seed's proxy: GET /healthcheck counts the instances it knows
                try:
                    code, body = await proxy.get_json("/healthcheck")
                except ProbeError as exc:
                    return False, f"proxy {plan.api_url}/healthcheck: {exc.reason}"
                got = (body.get("prefill_instances"), body.get("decode_instances"))
                if code != 200 or got != want:
                    return False, f"proxy healthcheck answered {code} {body} (want {want})"
        for spec in heads:
            assert spec.api_url is not None
            async with Api(spec.api_url, api_key) as api:
                try:
                    code = await api.health()
                except ProbeError as exc:
                    return False, f"{spec.role} instance on {spec.name}: {exc.reason}"
            if code != 200:
                return False, f"{spec.role} instance on {spec.name}: /health answered {code}"
        return True, "ok"

    async def healthy(self, plan: Plan, api_key: str | None) -> tuple[bool, str]:
        # no group probe: vLLM's ExampleConnector (the lab's) breaks the decode instance on
        # the probe's one-token prompts
        ok, reason = await self.ready(plan, api_key)
        return ok, reason if ok else f"not ready: {reason}"


LAUNCHERS: dict[str, Launcher] = {"single": Launcher(), "dp": Launcher(), "ray": RayLauncher(),
                                  "pd": PdLauncher()}


def launcher_for(plan: Plan) -> Launcher:
    return LAUNCHERS[plan.topology]
