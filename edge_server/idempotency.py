"""RunSegment runs once per ``request_id``: a small bounded TTL cache of results, coalescing duplicates.

A UE retries a ``RunSegment`` that failed ``UNAVAILABLE`` (the proxy or the ES restarted mid-call) under the
same ``request_id``. The retry must not generate twice, so the ES keeps each result for ``ttl_s`` and
answers a repeat from the cache; a repeat that arrives while the first is still running waits for that
same run. The run is an asyncio task of its own, shielded from its callers: when the last caller goes away
(its connection dropped with the proxy, or the UE cancelled), the run waits ``orphan_grace_s`` for a retry
to join it and is cancelled if none does (its compute then stops at the engine's next step).

Wiring (in ``EdgeServicer.RunSegment``)::

    key = request_key(request)                    # None when the request has no request_id
    response = await self.results.run(key, fingerprint(request), lambda: self._run(request, metadata))

``compute`` must not use the first caller's ``context`` to abort (that call may be gone): raise instead,
and let each caller map the exception to its status. Failures are not cached (a retry runs again); every
caller already waiting on the failed run gets the same exception.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from shared.pb import edge_pb2

T = TypeVar("T")
log = logging.getLogger("meg.edge.idempotency")


class IdempotencyConflict(ValueError):
    """A ``request_id`` came again from the same caller with a different request (prompt, params, protocol...):
    ALREADY_EXISTS, as an idempotency key reused with other parameters is an error, not another answer."""


def short_id(request_id: str) -> str:
    """What logs show of a request_id: its first 12 characters (the ids are the callers'; logs are the operator's
    and need only tell requests apart)."""
    return request_id[:12] if request_id else "-"


def key_bytes(key: Hashable) -> int:
    """Bytes a cache key holds (its strings' lengths, 8 per number): counted with the value it keys."""
    parts = key if isinstance(key, tuple) else (key,)
    return sum(len(k) if isinstance(k, str | bytes) else 8 for k in parts)


def request_key(request: edge_pb2.SegmentRequest) -> tuple[str, str, str, int, int] | None:
    """``(request_id, PROTOCOL, task, segment, share index)``, or None without a request_id (no caching)."""
    if not request.request_id:
        return None
    fanned = "share" in request.DESCRIPTOR.fields_by_name and request.HasField("share")
    share = request.share.index if fanned else -1
    return (request.request_id, request.protocol.upper(), request.task or "txt2img", int(request.segment), int(share))


def fingerprint(request: edge_pb2.SegmentRequest) -> str:
    """A digest of what must match for a repeat to be the same request: everything but the tensors (the
    channel proxy adds fresh noise to those on every attempt) — prompt, params, protocol, task, segment."""
    bare = edge_pb2.SegmentRequest()
    bare.CopyFrom(request)
    del bare.tensors[:]
    bare.request_id = ""
    return hashlib.sha256(bare.SerializeToString(deterministic=True)).hexdigest()


@dataclass
class _Entry(Generic[T]):
    fingerprint: str
    task: asyncio.Task[T]
    done_at: float | None = None  # when the result was stored (None while running)
    size: int = 0
    waiters: int = 0  # callers awaiting the run now
    orphan_timer: asyncio.TimerHandle | None = None


class ResultCache(Generic[T]):
    """Results by key for ``ttl_s`` after they finish; at most ``max_entries`` finished results and
    ``max_bytes`` of them (by ``size_of``), least recently used dropped first. Runs in flight are kept
    until they end (their number is bounded by the server's admission limit)."""

    def __init__(self, ttl_s: float = 300.0, max_entries: int = 1024, max_bytes: int = 256 << 20,
                 size_of: Callable[[T], int] = lambda r: int(getattr(r, "ByteSize", lambda: 0)()),
                 clock: Callable[[], float] = time.monotonic, orphan_grace_s: float = 3.0) -> None:
        """``orphan_grace_s``: how long a run whose every caller went away waits for a retry before it is
        cancelled (0: at once)."""
        self.ttl_s, self.max_entries, self.max_bytes = ttl_s, max_entries, max_bytes
        self.orphan_grace_s = orphan_grace_s
        self.size_of, self.clock = size_of, clock
        self._entries: OrderedDict[Hashable, _Entry[T]] = OrderedDict()
        self._bytes = 0
        self.hits = 0  # answered from a finished result
        self.joins = 0  # waited on a run in flight
        self.runs = 0  # computations started

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def stored_bytes(self) -> int:
        return self._bytes

    async def run(self, key: Hashable | None, fp: str, compute: Callable[[], Awaitable[T]], label: str | None = None
                  ) -> T:
        """The result of ``compute()`` for ``key``, computing it at most once while it is cached.

        Raises :class:`IdempotencyConflict` if ``key`` is cached or running with another fingerprint. ``label``:
        what the log line of a computation started says (default: the key, its strings shortened)."""
        if key is None:
            self.runs += 1
            return await compute()
        self._expire()
        entry = self._entries.get(key)
        if entry is not None:
            if entry.fingerprint != fp:
                rid = next((k for k in key if isinstance(k, str) and k), "") if isinstance(key, tuple) else key
                raise IdempotencyConflict(
                    f"request_id {short_id(str(rid))!r} was already used by this caller for a different request "
                    "(prompt, parameters, protocol or segment differ); use a new request_id for a new generation")
            self._entries.move_to_end(key)
            if entry.done_at is None:
                self.joins += 1
            else:
                self.hits += 1
            return await self._wait(entry)
        self.runs += 1
        # one line per computation actually started (tests/test_faults.py counts them per request)
        log.info("run %s", label or (" ".join(short_id(k) if isinstance(k, str) else str(k) for k in key)
                                     if isinstance(key, tuple) else short_id(str(key))))
        task: asyncio.Task[T] = asyncio.ensure_future(compute())
        entry = _Entry(fp, task)
        self._entries[key] = entry
        task.add_done_callback(lambda t: self._finished(key, entry, t))
        return await self._wait(entry)

    async def _wait(self, entry: _Entry[T]) -> T:
        """Await ``entry``'s run as one of its callers; the last caller to leave starts the orphan timer."""
        if entry.orphan_timer is not None:
            entry.orphan_timer.cancel()
            entry.orphan_timer = None
        entry.waiters += 1
        try:
            return await asyncio.shield(entry.task)
        finally:
            entry.waiters -= 1
            if entry.waiters == 0 and not entry.task.done():
                entry.orphan_timer = asyncio.get_running_loop().call_later(
                    self.orphan_grace_s, self._cancel_orphan, entry)

    @staticmethod
    def _cancel_orphan(entry: _Entry[T]) -> None:
        entry.orphan_timer = None
        if entry.waiters == 0 and not entry.task.done():
            log.info("cancelling a run nobody waits for")
            entry.task.cancel()

    def _finished(self, key: Hashable, entry: _Entry[T], task: asyncio.Task[T]) -> None:
        if self._entries.get(key) is not entry:
            return
        if task.cancelled() or task.exception() is not None:
            del self._entries[key]  # failures are not cached: a retry runs again
            return
        entry.done_at = self.clock()
        entry.size = self.size_of(task.result()) + key_bytes(key)
        self._bytes += entry.size
        self._evict()

    def _drop(self, key: Hashable) -> None:
        entry = self._entries.pop(key)
        self._bytes -= entry.size

    def _expire(self) -> None:
        now = self.clock()
        for key in [k for k, e in self._entries.items() if e.done_at is not None and now - e.done_at > self.ttl_s]:
            self._drop(key)

    def _evict(self) -> None:
        self._expire()
        done = [k for k, e in self._entries.items() if e.done_at is not None]  # oldest use first
        while done and (len(done) > self.max_entries or self._bytes > self.max_bytes):
            self._drop(done.pop(0))
