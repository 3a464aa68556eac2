"""The proxy follows its edge servers: ``meg-channel serve --upstream-pattern 'es{i}=es{i}:50051'``.

Every ``interval_s`` (2 s) each pattern is expanded for ``i = 0 .. max_upstreams-1`` into a candidate
``(NAME, HOST:PORT)``. A candidate whose host resolves and whose gRPC health service (the whole server,
``service=""``) answers SERVING joins the proxy's upstream table; a member that stops resolving or stops
answering SERVING for ``misses`` rounds in a row (2: about 4 s) is dropped -- or, when its probes only time
out (an ES too busy to answer within ``probe_timeout_s`` has not left), for ``slow_misses`` rounds in a row
(5: about 20 s). A dropped ES's links and
counters stay in the LinkTable; a UE that still asks for it gets UNAVAILABLE naming it and why it left
(:class:`channel_emulator.proxy.UpstreamGone`). Fixed ``--upstream``\\ s are never probed or dropped.

Why names + health, not registration: the name an ES is reachable at is what every orchestrator already
manages — a compose service's name resolves on the project network while its container runs, a
StatefulSet pod's ``es-N.es`` resolves through the headless Service while the pod is ready, and a process
started by hand listens on a port the user chose — and the health service is what those orchestrators
already probe. Nothing changes in the ES or in the protocol (no proto change, no lease to renew), and an
ES that hangs is noticed by the same probe that noticed it join. The cost: a name must follow a pattern
(``{i}``; ``{i+K}`` adds K, e.g. ports ``127.0.0.1:{i+50061}``) and joining takes up to one interval.

Pattern syntax: ``NAME=HOST:PORT``; the name must contain ``{i}`` or ``{i+K}``. Examples:
``es{i}=es{i}:50051`` (compose), ``es{i}=es-{i}.es:50051`` (Kubernetes), ``es{i}=127.0.0.1:{i+50061}``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from channel_emulator.link import NAME
from shared.rpc.security import TlsFiles, aio_channel
from shared.rpc.server import RECONNECT_OPTIONS
from shared.rpc.target import split_hostport

if TYPE_CHECKING:
    from channel_emulator.proxy import Upstreams

log = logging.getLogger("meg.channel.membership")

#: ``{i}`` or ``{i+K}`` in a pattern
_SLOT = re.compile(r"\{i(?:\+(\d+))?\}")
DEFAULT_INTERVAL_S = 2.0
DEFAULT_MAX_UPSTREAMS = 8
#: Most candidates one proxy probes (patterns x max_upstreams).
MAX_CANDIDATES = 256
#: Re-resolve a member's name within 1 s of its connection breaking (a pod that came back with a new IP),
#: not gRPC's default 30 s.
DNS_OPTIONS = [("grpc.dns_min_time_between_resolutions_ms", 1000)]
#: prefix of a probe verdict that only timed out (counted against ``slow_misses``)
SLOW = "slow: "


@dataclass(frozen=True)
class Pattern:
    """One ``--upstream-pattern``: templates of a name and an address, ``{i}``/``{i+K}`` filled in."""

    name: str
    address: str

    @classmethod
    def parse(cls, text: str) -> Pattern:
        """``NAME=HOST:PORT`` with ``{i}`` in the name; raises ValueError with a readable message."""
        name, sep, address = text.partition("=")
        if not sep or not _SLOT.search(name):
            raise ValueError(f"--upstream-pattern {text!r}: want NAME=HOST:PORT with {{i}} in NAME, "
                             "e.g. 'es{i}=es{i}:50051' or 'es{i}=127.0.0.1:{i+50061}'")
        pattern = cls(name, address)
        for i in (0, 1):
            n, a = pattern.expand(i)
            if not NAME.fullmatch(n):
                raise ValueError(f"--upstream-pattern {text!r}: name {n!r} must be 1-64 letters, digits or _.:-")
            try:
                split_hostport(a)
            except ValueError as exc:
                raise ValueError(f"--upstream-pattern {text!r}: {exc}") from None
        return pattern

    def expand(self, i: int) -> tuple[str, str]:
        """``(name, address)`` of slot ``i``."""
        def fill(template: str) -> str:
            return _SLOT.sub(lambda m: str(i + int(m.group(1) or 0)), template)

        return fill(self.name), fill(self.address)


@dataclass
class Member:
    """What the proxy knows about one candidate it has seen answer."""

    name: str
    address: str
    joined: bool = False
    misses: int = 0
    #: probes in a row that timed out (a busy ES, not necessarily a gone one)
    slow: int = 0
    #: wall-clock time of the last join or leave
    since: float = field(default_factory=time.time)
    why: str = ""
    joins: int = 0
    leaves: int = 0


class Membership:
    """Adds and drops :class:`~channel_emulator.proxy.Upstreams` by probing candidate names (module doc).

    Drive it with :meth:`start` (inside the proxy's event loop: one round, then a background task every
    ``interval_s``), or round by round with :meth:`probe_round` (tests)."""

    def __init__(self, patterns: Sequence[Pattern], max_upstreams: int = DEFAULT_MAX_UPSTREAMS,
                 interval_s: float = DEFAULT_INTERVAL_S, probe_timeout_s: float = 2.0, misses: int = 2,
                 tls: TlsFiles | None = None, fixed: Sequence[str] = (), slow_misses: int = 5) -> None:
        if not patterns:
            raise ValueError("membership needs at least one --upstream-pattern")
        if not 1 <= max_upstreams or len(patterns) * max_upstreams > MAX_CANDIDATES:
            raise ValueError(f"--max-upstreams must be 1 or more, and patterns x max-upstreams at most {MAX_CANDIDATES}")
        if interval_s <= 0 or probe_timeout_s <= 0 or misses < 1 or slow_misses < misses:
            raise ValueError("the membership interval and probe timeout must be > 0, misses >= 1, slow_misses >= misses")
        self.patterns, self.max_upstreams = list(patterns), max_upstreams
        self.interval_s, self.probe_timeout_s, self.misses = interval_s, probe_timeout_s, misses
        self.tls, self.fixed, self.slow_misses = tls, set(fixed), slow_misses
        self.members: dict[str, Member] = {}
        self.upstreams: Upstreams | None = None
        self._probes: dict[tuple[str, str], grpc.aio.Channel] = {}
        self._task: asyncio.Task[None] | None = None

    def candidates(self) -> Iterator[tuple[str, str]]:
        """Every pattern's ``(name, address)`` for i = 0 .. max_upstreams-1 (names of fixed upstreams skipped)."""
        seen: set[str] = set()
        for p in self.patterns:
            for i in range(self.max_upstreams):
                name, address = p.expand(i)
                if name not in self.fixed and name not in seen:
                    seen.add(name)
                    yield name, address

    async def _probe(self, name: str, address: str) -> str | None:
        """None when ``address`` resolves and its health says SERVING, else why not (one line)."""
        host, port = split_hostport(address)
        try:
            await asyncio.wait_for(asyncio.get_running_loop().getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM),
                                   self.probe_timeout_s)
        except OSError as exc:  # TimeoutError included
            self._close_probe((name, address))  # a name that went away: no channel kept for it
            return f"{host} does not resolve ({exc or 'timed out'})"
        key = (name, address)
        if key not in self._probes:
            self._probes[key] = aio_channel(address, self.tls, [*RECONNECT_OPTIONS, *DNS_OPTIONS])
        try:  # a fresh channel waits while it connects and fails fast when refused (no wait_for_ready)
            reply = await health_pb2_grpc.HealthStub(self._probes[key]).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=self.probe_timeout_s)
        except grpc.aio.AioRpcError as exc:
            self._close_probe(key)  # the next round starts with a fresh connection, not one in reconnect backoff
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                return f"{SLOW}no health answer within {self.probe_timeout_s:g} s"
            return f"health check {exc.code().name}: {exc.details()}"
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            return f"health says {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}"
        return None

    def _close_probe(self, key: tuple[str, str]) -> None:
        ch = self._probes.pop(key, None)
        if ch is not None:
            asyncio.get_running_loop().create_task(ch.close())

    async def probe_round(self) -> list[str]:
        """Probe every candidate once and update the upstream table; returns the changes, one line each."""
        assert self.upstreams is not None, "start(upstreams) or attach(upstreams) first"
        cands = list(self.candidates())
        verdicts = await asyncio.gather(*(self._probe(n, a) for n, a in cands))
        changes: list[str] = []
        for (name, address), why in zip(cands, verdicts):
            m = self.members.get(name)
            if why is None:
                if m is None or m.address != address:
                    m = self.members[name] = Member(name, address)
                m.misses = m.slow = 0
                if not m.joined:
                    m.joined, m.since, m.why, m.joins = True, time.time(), "", m.joins + 1
                    self.upstreams.add(name, address)
                    changes.append(f"edge server {name} joined at {address}")
            elif m is not None and m.joined:
                if why.startswith(SLOW):
                    m.slow, why = m.slow + 1, why[len(SLOW):]
                else:
                    m.misses += 1
                if m.misses >= self.misses or m.slow >= self.slow_misses:
                    m.joined, m.since, m.why, m.leaves = False, time.time(), why, m.leaves + 1
                    stamp = time.strftime("%H:%M:%S", time.gmtime(m.since))
                    self.upstreams.drop(name, f"dropped at {stamp} UTC after {max(m.misses, m.slow)} failed probes: {why}")
                    changes.append(f"edge server {name} at {address} left: {why}")
        for line in changes:
            (log.info if "joined" in line else log.warning)("%s; upstreams now: %s", line,
                                                            ", ".join(self.upstreams.targets) or "none")
        return changes

    def attach(self, upstreams: Upstreams) -> None:
        self.upstreams = upstreams

    async def start(self, upstreams: Upstreams) -> None:
        """One round now (so the members present at start-up are routable at once), then every ``interval_s``."""
        self.attach(upstreams)
        await self.probe_round()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="meg-channel membership")

    async def _run(self) -> None:
        try:
            while True:
                await asyncio.sleep(self.interval_s)
                try:
                    await self.probe_round()
                except Exception:  # a round that failed must not end membership
                    log.exception("membership round failed")
        finally:
            for ch in self._probes.values():
                await ch.close()
            self._probes.clear()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    def collector(self) -> Collector:
        """Prometheus metrics of the upstream table (``meg-channel serve --metrics-port``)."""
        return MembershipCollector(self)


class MembershipCollector(Collector):
    """``meg_channel_upstreams`` (gauge: edge servers routed to now), ``meg_channel_upstream_up{es}`` (1 routed,
    0 dropped) and ``meg_channel_upstream_changes_total{es,change=joined|left}``."""

    def __init__(self, membership: Membership) -> None:
        self.membership = membership

    def collect(self) -> Iterator[Metric]:
        ups = self.membership.upstreams
        routed = dict(ups.targets) if ups is not None else {}
        members = list(self.membership.members.values())
        yield GaugeMetricFamily("meg_channel_upstreams", "Edge servers the proxy routes to now", value=len(routed))
        up = GaugeMetricFamily("meg_channel_upstream_up", "1 while the proxy routes to this edge server, 0 once dropped",
                               labels=["es"])
        for name in routed:
            up.add_metric([name], 1.0)
        for m in members:
            if m.name not in routed:
                up.add_metric([m.name], 0.0)
        yield up
        changes = CounterMetricFamily("meg_channel_upstream_changes", "Edge servers joining and leaving the proxy",
                                      labels=["es", "change"])
        for m in members:
            changes.add_metric([m.name, "joined"], float(m.joins))
            changes.add_metric([m.name, "left"], float(m.leaves))
        yield changes
