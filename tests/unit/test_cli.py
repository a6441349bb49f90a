"""cli.run_async: the command's coroutine runs, its result comes back and is never repr'd
(asyncio.run formats its SIGINT handler, which names the main task and so its result: a
64-node check report took ~40 ms to repr)."""

from __future__ import annotations

from orchestrator.cli import run_async


class Big:
    reprs = 0

    def __repr__(self) -> str:
        Big.reprs += 1
        return "Big(...)"


def test_run_async_returns_the_result_without_formatting_it() -> None:
    big = Big()

    async def command() -> Big:
        return big

    assert run_async(command) is big
    assert Big.reprs == 0
