"""The result cache behind RunSegment: a run every caller left is cancelled after the orphan grace, unless a
retry joins it in time (then it runs once and both get its result)."""

from __future__ import annotations

import asyncio

from edge_server.idempotency import ResultCache


async def _slow(started: list[int], cancelled: list[int], seconds: float = 0.5) -> str:
    started.append(1)
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        cancelled.append(1)
        raise
    return "image"


def test_orphaned_run_is_cancelled_after_the_grace() -> None:
    async def scenario() -> tuple[list[int], list[int]]:
        cache: ResultCache[str] = ResultCache(orphan_grace_s=0.05)
        started: list[int] = []
        cancelled: list[int] = []
        caller = asyncio.ensure_future(cache.run(("r1",), "fp", lambda: _slow(started, cancelled)))
        await asyncio.sleep(0.02)
        caller.cancel()  # the UE went away and nobody retries
        await asyncio.sleep(0.2)
        return started, cancelled

    started, cancelled = asyncio.run(scenario())
    assert started == [1] and cancelled == [1]


def test_retry_within_the_grace_joins_the_same_run() -> None:
    async def scenario() -> tuple[str, list[int], list[int]]:
        cache: ResultCache[str] = ResultCache(orphan_grace_s=0.3)
        started: list[int] = []
        cancelled: list[int] = []
        first = asyncio.ensure_future(cache.run(("r2",), "fp", lambda: _slow(started, cancelled)))
        await asyncio.sleep(0.02)
        first.cancel()  # the proxy restarted under the first call
        await asyncio.sleep(0.1)
        result = await cache.run(("r2",), "fp", lambda: _slow(started, cancelled))  # the UE's retry
        return result, started, cancelled

    result, started, cancelled = asyncio.run(scenario())
    assert result == "image" and started == [1] and cancelled == []
