"""What an ES keeps between the segments of one generation (a cooperative protocol's rounds).

:func:`shared.protocol.plan.plan` lets an actor keep what it received and made for the whole generation, so a
cooperative round after the first sends the ES only its window of the fused latent; the prompt embedding
``cond`` it received in round 0 stays here. The segment handler keys a session by its caller as well as by the
generation — ``(peer, UE id, request_id, PROTOCOL, task, share index)`` — so one UE cannot read, continue or end
another's. Held for ``ttl_s`` after its last use, bounded three ways so that no caller can grow it or push the
others out:

* ``per_caller`` sessions per owner (a caller's new one replaces its own least recently used);
* ``max_sessions`` in all and ``max_bytes`` of keys and tensors: when full of live sessions a new one is
  refused (:class:`SessionsFull` -> RESOURCE_EXHAUSTED), never made by evicting another caller's.

A round whose session is gone (expired, replaced, or the ES restarted) is refused with a clear message; the UE
runs the generation again.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field

#: Seconds a generation's kept keys live after their last use (a round is far shorter on any ES we run).
DEFAULT_TTL_S = 300.0
#: Generations kept at once (each a prompt embedding and a window or two: ~0.3 MB at SD-v1.5 sizes).
DEFAULT_MAX_SESSIONS = 256
#: Generations one caller may keep at once.
DEFAULT_PER_CALLER = 16
#: Bytes of keys and kept values in all.
DEFAULT_MAX_BYTES = 256 << 20


class SessionGone(LookupError):
    """The keys a segment needs from an earlier round are no longer here."""


class SessionsFull(RuntimeError):
    """The store is full of other callers' live generations: RESOURCE_EXHAUSTED."""


def nbytes(value: object) -> int:
    """Bytes a kept value or key takes, roughly (tensors and arrays exactly; strings by length)."""
    if hasattr(value, "element_size") and hasattr(value, "nelement"):  # a torch tensor
        return int(value.element_size() * value.nelement())
    if hasattr(value, "nbytes"):
        return int(value.nbytes)
    if isinstance(value, tuple):
        return sum(nbytes(v) for v in value)
    if isinstance(value, str | bytes):
        return len(value)
    return 64


@dataclass
class _Session:
    owner: Hashable
    expires: float
    values: dict[str, object] = field(default_factory=dict)
    size: int = 0


class Sessions:
    """A thread-safe TTL map: session key -> the workspace values kept for later rounds (see the module)."""

    def __init__(self, ttl_s: float = DEFAULT_TTL_S, max_sessions: int = DEFAULT_MAX_SESSIONS,
                 per_caller: int = DEFAULT_PER_CALLER, max_bytes: int = DEFAULT_MAX_BYTES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s, self.max_sessions, self.per_caller, self.max_bytes = ttl_s, max_sessions, per_caller, max_bytes
        self.clock = clock
        self._items: OrderedDict[Hashable, _Session] = OrderedDict()  # least recently used first
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def stored_bytes(self) -> int:
        return self._bytes

    def _remove(self, key: Hashable) -> None:
        item = self._items.pop(key)
        self._bytes -= item.size

    def _expire(self, now: float) -> None:
        for key in [k for k, s in self._items.items() if s.expires <= now]:
            self._remove(key)

    def keep(self, key: Hashable, values: Mapping[str, object], owner: Hashable = None) -> None:
        """Add ``values`` to the session ``key`` of ``owner`` (created if new) and renew its lease; raises
        :class:`SessionsFull` when a new session does not fit beside the others' live ones."""
        now = self.clock()
        with self._lock:
            self._expire(now)
            item = self._items.pop(key, None)
            if item is None:
                item = _Session(owner, now + self.ttl_s, size=nbytes(key))
                mine = [k for k, s in self._items.items() if s.owner == owner]
                while len(mine) >= self.per_caller:  # the caller's own oldest makes room
                    self._remove(mine.pop(0))
            else:
                self._bytes -= item.size
            grown = item.size + sum(nbytes(v) for k, v in values.items() if k not in item.values)
            if len(self._items) >= self.max_sessions or self._bytes + grown > self.max_bytes:
                if key not in self._items and item.values:
                    self._items[key] = item  # an existing session stays as it was
                    self._bytes += item.size
                raise SessionsFull(
                    f"this edge server keeps {len(self._items)} cooperative generations ({self._bytes >> 10} KiB) of "
                    f"other callers and has no room for another; retry later or run the generation in one round")
            item.values.update(values)
            item.size, item.expires = grown, now + self.ttl_s
            self._items[key] = item
            self._bytes += item.size

    def take(self, key: Hashable, names: tuple[str, ...]) -> dict[str, object]:
        """The kept values ``names`` of session ``key`` (renewing its lease); :class:`SessionGone` if any is missing."""
        now = self.clock()
        with self._lock:
            self._expire(now)
            item = self._items.pop(key, None)
            gen = _generation(key)
            if item is None:
                raise SessionGone(f"this edge server holds nothing of generation {gen} for this caller (its earlier "
                                  f"round ran elsewhere, expired after {self.ttl_s:g} s, or this edge server "
                                  "restarted); run the generation again")
            item.expires = now + self.ttl_s
            self._items[key] = item
            missing = [n for n in names if n not in item.values]
            if missing:
                raise SessionGone(f"this edge server does not hold {missing} of generation {gen}; run the generation "
                                  "again")
            return {n: item.values[n] for n in names}

    def drop(self, key: Hashable) -> None:
        with self._lock:
            if key in self._items:
                self._remove(key)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


def _generation(key: Hashable) -> str:
    """The request_id part of a session key: ``(peer, ue, request_id, ...)`` as the handler makes them, else
    the key's first part."""
    if isinstance(key, tuple):
        return str(key[2] if len(key) >= 6 else key[0])
    return str(key)
