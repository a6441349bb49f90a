"""deploy.launch.Launches: launches are never cut in half, and a failed or interrupted block
cleans up the whole group after the launches in flight finished."""

from __future__ import annotations

import asyncio

import pytest

from orchestrator.deploy import launch as launch_mod


class Spec:
    def __init__(self, name: str) -> None:
        self.name = name


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_failure_waits_for_launches_in_flight_then_cleans_up(monkeypatch):
    events: list[str] = []

    async def slow_launch(s, spec):  # type: ignore[no-untyped-def]
        events.append(f"start {spec.name}")
        await asyncio.sleep(0.2)
        events.append(f"done {spec.name}")
        return spec.name

    async def cleanup(self, exc):  # type: ignore[no-untyped-def]
        events.append(f"cleanup keep={self.keep} {type(exc).__name__}")

    monkeypatch.setattr(launch_mod, "launch", slow_launch)
    monkeypatch.setattr(launch_mod.Launches, "_cleanup", cleanup)

    async def body() -> None:
        async with launch_mod.Launches(None, "d", ["h0"], False) as ls:  # type: ignore[arg-type]
            assert await ls.start(Spec("h0")) == "h0"  # type: ignore[arg-type]
            task = asyncio.ensure_future(ls.start_all([Spec("h1"), Spec("h2")]))  # type: ignore[list-item]
            await asyncio.sleep(0.05)
            task.cancel()  # like Ctrl-C while the headless ranks are being started
            await task

    with pytest.raises(asyncio.CancelledError):
        run(body())
    assert events[-1] == "cleanup keep=False CancelledError"
    assert events.index("done h1") < events.index(events[-1])
    assert events.index("done h2") < events.index(events[-1])


def test_success_does_not_clean_up(monkeypatch):
    calls: list[str] = []

    async def fast_launch(s, spec):  # type: ignore[no-untyped-def]
        return f"id-{spec.name}"

    async def cleanup(*a):  # type: ignore[no-untyped-def]
        calls.append("cleanup")

    monkeypatch.setattr(launch_mod, "launch", fast_launch)
    monkeypatch.setattr(launch_mod.Launches, "_cleanup", cleanup)

    async def body() -> list[str]:
        async with launch_mod.Launches(None, "d", ["h0"], True) as ls:  # type: ignore[arg-type]
            return [await ls.start(Spec("h0")), *await ls.start_all([Spec("h1")])]  # type: ignore[arg-type,list-item]

    assert run(body()) == ["id-h0", "id-h1"]
    assert calls == []
