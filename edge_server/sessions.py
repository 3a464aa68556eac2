"""What an ES keeps between the segments of one generation (a cooperative protocol's rounds).

:func:`shared.protocol.plan.plan` lets an actor keep what it received and made for the whole generation, so a
cooperative round after the first sends the ES only its window of the fused latent; the prompt embedding
``cond`` it received in round 0 stays here. Keyed by ``(request_id, PROTOCOL, task, share index)``, held for
``ttl_s`` after its last use and at most ``max_sessions`` at once (the least recently used go first), so an
abandoned generation cannot pin memory. A round whose session is gone (expired, evicted, or the ES
restarted) is refused with a clear message; the UE runs the generation again.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Hashable, Mapping

#: Seconds a generation's kept keys live after their last use (a round is far shorter on any ES we run).
DEFAULT_TTL_S = 300.0
#: Generations kept at once (each a prompt embedding and a window or two: ~0.3 MB at SD-v1.5 sizes).
DEFAULT_MAX_SESSIONS = 256


class SessionGone(LookupError):
    """The keys a segment needs from an earlier round are no longer here."""


class Sessions:
    """A small thread-safe TTL + LRU map: session key -> the workspace values kept for later rounds."""

    def __init__(self, ttl_s: float = DEFAULT_TTL_S, max_sessions: int = DEFAULT_MAX_SESSIONS) -> None:
        self.ttl_s, self.max_sessions = ttl_s, max_sessions
        self._items: OrderedDict[Hashable, tuple[float, dict[str, object]]] = OrderedDict()
        self._lock = threading.Lock()

    def _expire(self, now: float) -> None:
        while self._items:
            key, (expires, _) = next(iter(self._items.items()))
            if expires > now and len(self._items) <= self.max_sessions:
                break
            del self._items[key]

    def keep(self, key: Hashable, values: Mapping[str, object]) -> None:
        """Add ``values`` to the session ``key`` (created if new) and renew its lease."""
        now = time.monotonic()
        with self._lock:
            _, kept = self._items.pop(key, (0.0, {}))
            kept.update(values)
            self._items[key] = (now + self.ttl_s, kept)
            self._expire(now)

    def take(self, key: Hashable, names: tuple[str, ...]) -> dict[str, object]:
        """The kept values ``names`` of session ``key`` (renewing its lease); :class:`SessionGone` if any is missing."""
        now = time.monotonic()
        with self._lock:
            self._expire(now)
            item = self._items.pop(key, None)
            if item is None:
                raise SessionGone(f"this edge server holds nothing of generation {key[0] if isinstance(key, tuple) else key}")
            kept = item[1]
            self._items[key] = (now + self.ttl_s, kept)
            missing = [n for n in names if n not in kept]
            if missing:
                raise SessionGone(f"this edge server does not hold {missing} of generation "
                                  f"{key[0] if isinstance(key, tuple) else key}")
            return {n: kept[n] for n in names}

    def drop(self, key: Hashable) -> None:
        with self._lock:
            self._items.pop(key, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
