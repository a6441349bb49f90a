"""deploy.Launches: launches are never cut in half, and a failed or interrupted block cleans
up the whole group after the launches in flight finished."""

from __future__ import annotations

import asyncio

import pytest

from orchestrator import deploy


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

    async def cleanup(s, plan, keep, exc):  # type: ignore[no-untyped-def]
        events.append(f"cleanup keep={keep} {type(exc).__name__}")

    monkeypatch.setattr(deploy, "launch", slow_launch)
    monkeypatch.setattr(deploy, "_fail_cleanup", cleanup)

    async def body() -> None:
        async with deploy.Launches(None, None, False) as ls:  # type: ignore[arg-type]
            assert await ls.start(Spec("h0")) == "h0"
            task = asyncio.ensure_future(ls.start_all([Spec("h1"), Spec("h2")]))
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

    monkeypatch.setattr(deploy, "launch", fast_launch)
    monkeypatch.setattr(deploy, "_fail_cleanup", cleanup)

    async def body() -> list[str]:
        async with deploy.Launches(None, None, True) as ls:  # type: ignore[arg-type]
            return [await ls.start(Spec("h0")), *await ls.start_all([Spec("h1")])]

    assert run(body()) == ["id-h0", "id-h1"]
    assert calls == []
