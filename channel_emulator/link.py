"""What the proxy does to the tensors of each link direction, its CSI and its counters.

A *link* is one UE↔ES pair, named ``"UE->ES"``; each has an ``uplink`` (requests) and a ``downlink``
(responses) :class:`Direction` with its own profile, seeded RNG and counters. Settings changes replace a
direction's profile atomically (a transmission reads its profile once), so they apply from the next
transmission and never touch an RPC in flight.

The table is bounded: at most :data:`MAX_LINKS` links. When it is full, a new name takes the place of the least
recently used link that no RPC is using and no profiles file configures (its counters go with it); if every
link is busy or configured, :class:`LinkTableFull` (the proxy answers ``RESOURCE_EXHAUSTED``). Names are 1-64
characters, so the table's keys are bounded too.
"""

from __future__ import annotations

import math
import re
import zlib
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from google.protobuf.message import Message

from channel_emulator.replay import REPLAY
from channel_emulator.walker import air_tensors
from shared.channel.models import ChannelConfigError
from shared.channel.profiles import ChannelProfile, ProfileBook
from shared.channel.transmit import estimate_csi, transmit
from shared.pb import air_pb2, channel_pb2
from shared.wire import air
from shared.wire.limits import MAX_LINKS, MAX_PENDING_BLOCKS

DIRECTIONS = ("uplink", "downlink")
DEFAULT_LINK = "default"
#: A UE or ES name: 1-64 letters, digits or ``_.:-`` (no whitespace, no control characters).
NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


class LinkTableFull(LookupError):
    """Every one of the :data:`MAX_LINKS` links is in use or configured: a new name cannot be tracked."""


def check_link_name(link: str) -> tuple[str, str]:
    """``"UE->ES"`` -> ``(ue, es)``; raises ChannelConfigError unless it is exactly two names and one arrow."""
    ue, arrow, es = link.partition("->")
    if not arrow or "->" in es or not NAME.fullmatch(ue) or not NAME.fullmatch(es):
        raise ChannelConfigError(
            f"link name {link!r} is not UE->ES (two names of 1-64 letters, digits or _.:- joined by one '->')"
        )
    return ue, es


@dataclass
class DirectionCounters:
    rpcs: int = 0
    transmissions: int = 0
    symbols: int = 0
    payload_bytes: int = 0
    message_bytes: int = 0
    gain_over_n0: float = 0.0  # sum over noisy symbols of |h|²p / N0 (linear)
    snr_symbols: int = 0  # symbols sent over a noisy link

    @property
    def mean_snr_db(self) -> float:
        """``10·log10(mean |h|²p / N0)`` over the noisy symbols (linear-domain mean); NaN if none."""
        if not self.snr_symbols:
            return math.nan
        mean = self.gain_over_n0 / self.snr_symbols
        return 10 * math.log10(mean) if mean > 0 else -math.inf
    energy: float = 0.0
    allocated: int = 0


def profile_to_proto(p: ChannelProfile) -> channel_pb2.Profile:
    return channel_pb2.Profile(name=p.name, model=p.model, snr_db=p.snr_db, coherence_symbols=p.coherence_symbols,
                               k_factor=p.k_factor, csi_error=p.csi_error, trace=p.trace,
                               trace_offset_s=p.trace_offset_s, trace_gain_db=p.trace_gain_db)


def profile_from_proto(p: channel_pb2.Profile, trace_path: Callable[[str, str], str] | None = None,
                       field: str = "custom") -> ChannelProfile:
    """An ad hoc profile from the control RPC (model defaults to AWGN); raises ChannelConfigError.

    A ``trace`` is opened only as ``trace_path(name, "custom.trace")`` says (the proxy's
    :class:`channel_emulator.trace_access.TraceAccess`, which refuses a file the caller may not name); without one a
    trace is refused."""
    trace = ""
    if p.trace:
        if trace_path is None:
            raise ChannelConfigError(f"{field}.trace: this proxy takes no trace file from a caller")
        trace = trace_path(p.trace, f"{field}.trace")
    return ChannelProfile(name=p.name, model=p.model or "awgn", snr_db=p.snr_db, coherence_symbols=p.coherence_symbols,
                          k_factor=p.k_factor, csi_error=p.csi_error, trace=trace, trace_offset_s=p.trace_offset_s,
                          trace_gain_db=p.trace_gain_db)


@dataclass
class Direction:
    """One direction of one link."""

    profile: ChannelProfile
    rng: np.random.Generator
    counters: DirectionCounters = field(default_factory=DirectionCounters)
    #: (h, reported ĥ) handed out as CSI and not yet used; at most MAX_PENDING_BLOCKS (oldest dropped)
    pending: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=MAX_PENDING_BLOCKS))

    def csi(self, blocks: int) -> np.ndarray:
        """Draw the fading ``[blocks]`` of the next blocks now; the next transmission uses exactly these."""
        h = self.profile.model_object().generate(blocks, self.rng)
        h_hat = estimate_csi(h, self.profile.csi_error, self.rng)
        self.pending.extend(zip(h.tolist(), h_hat.tolist()))
        return h_hat

    def take_fading(self, blocks: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The pending CSI draws ``([blocks], [blocks])`` for a transmission, topped up with fresh ones."""
        if not self.pending:
            return None
        taken = [self.pending.popleft() for _ in range(min(blocks, len(self.pending)))]
        if len(taken) < blocks:
            h = self.profile.model_object().generate(blocks - len(taken), self.rng)
            taken += zip(h.tolist(), estimate_csi(h, self.profile.csi_error, self.rng).tolist())
        return np.array([t[0] for t in taken]), np.array([t[1] for t in taken])

    def clear_pending(self) -> None:
        self.pending.clear()


class LinkTable:
    """Every link the proxy has seen, the profile book, and the start-up settings to reset to."""

    def __init__(self, book: ProfileBook, default_uplink: ChannelProfile, default_downlink: ChannelProfile,
                 seed: int = 0) -> None:
        """``default_*``: what links get unless the book's ``[links.default]`` / ``[links.NAME]`` say otherwise."""
        self.book = book
        self.seed = seed
        flags = dict(zip(DIRECTIONS, (default_uplink, default_downlink)))
        self._initial = {d: self._from_book(DEFAULT_LINK, d) or flags[d] for d in DIRECTIONS}
        self.default = dict(self._initial)
        self.links: OrderedDict[str, dict[str, Direction]] = OrderedDict()  # least recently used first
        #: RPCs in flight per link (a busy link is never evicted)
        self.busy: dict[str, int] = {}
        self.max_links = MAX_LINKS
        #: links forgotten to make room (their counters went with them)
        self.evicted = 0
        for name in self.configured:
            check_link_name(name)
            self.link(name)

    @property
    def configured(self) -> list[str]:
        """Links the profiles file sets (``[links.UE->ES]``); always listed, never forgotten."""
        return [name for name in self.book.links if name != DEFAULT_LINK]

    # -- settings --------------------------------------------------------------------------------------
    def _from_book(self, link: str, direction: str) -> ChannelProfile | None:
        name = self.book.links.get(link, {}).get(direction)
        return self.book.get(name) if name else None

    def _make_room(self) -> None:
        """Forget the least recently used idle, unconfigured link; LinkTableFull if there is none."""
        configured = set(self.book.links)
        for old in self.links:
            if old not in configured and not self.busy.get(old):
                del self.links[old]
                self.evicted += 1
                return
        raise LinkTableFull(f"the proxy tracks {len(self.links)} links and every one is in use or configured "
                            f"(at most {self.max_links}); try again when some are idle")

    def link(self, name: str) -> dict[str, Direction]:
        """The link's directions, made on first use (raises LinkTableFull when no room can be made)."""
        if name in self.links:
            self.links.move_to_end(name)
        else:
            if len(self.links) >= self.max_links:
                self._make_room()
            salt = zlib.crc32(name.encode())
            self.links[name] = {
                d: Direction(self._from_book(name, d) or self.default[d], np.random.default_rng([self.seed, salt, i]))
                for i, d in enumerate(DIRECTIONS)
            }
        return self.links[name]

    def set(self, link: str, direction: str, profile: ChannelProfile) -> None:
        """Set one direction (``both`` for the two) of one link, or of every link and the default (``""``)."""
        dirs = DIRECTIONS if direction == "both" else (direction,)
        if any(d not in DIRECTIONS for d in dirs):
            raise ChannelConfigError(f"direction must be uplink, downlink or both, got {direction!r}")
        targets = [self.link(link)] if link else list(self.links.values())
        for d in dirs:
            if not link:
                self.default[d] = profile
            for t in targets:
                t[d].profile = profile
                t[d].clear_pending()

    def reset(self, stats: bool) -> None:
        """Back to the start-up settings; with ``stats`` also zero the counters and forget every link that
        traffic or SetChannel created (those the profiles file configures stay)."""
        self.default = dict(self._initial)
        if stats:
            self.links = OrderedDict()
            for name in self.configured:
                self.link(name)
            return
        for name, dirs in self.links.items():
            for d, direction in dirs.items():
                direction.profile = self._from_book(name, d) or self._initial[d]
                direction.clear_pending()

    def settings(self, upstreams: list[str]) -> channel_pb2.ChannelSettings:
        def ls(name: str, dirs: dict[str, ChannelProfile]) -> channel_pb2.LinkSettings:
            return channel_pb2.LinkSettings(link=name, uplink=profile_to_proto(dirs["uplink"]),
                                            downlink=profile_to_proto(dirs["downlink"]))

        return channel_pb2.ChannelSettings(
            default=ls(DEFAULT_LINK, self.default),
            links=[ls(n, {d: v.profile for d, v in dirs.items()}) for n, dirs in sorted(self.links.items())],
            upstreams=upstreams,
        )

    def stats(self) -> channel_pb2.ChannelStats:
        entries = []
        for name, dirs in sorted(self.links.items()):
            for d, v in dirs.items():
                c = v.counters
                entries.append(channel_pb2.DirectionStats(
                    link=name, direction=d, rpcs=c.rpcs, transmissions=c.transmissions, symbols=c.symbols,
                    payload_bytes=c.payload_bytes, message_bytes=c.message_bytes, energy=c.energy,
                    mean_snr_db=c.mean_snr_db, allocated=c.allocated,
                ))
        return channel_pb2.ChannelStats(entries=entries)

    # -- the data path ---------------------------------------------------------------------------------
    def apply(self, link: str, direction: str, msg: Message, message_bytes: int) -> list[air_pb2.AirTensor]:
        """Perturb every well-formed ``AirTensor`` in ``msg`` in place; returns those it touched (in order).

        Malformed tensors (bad shape/bytes/dtype, NaN) are forwarded untouched so that the receiver
        rejects them with a clear message. Raises ``ChannelConfigError`` for an invalid power allocation.
        """
        # the proxy admits (and touches) the link on the event loop; this may run in its math thread: read only
        d = (self.links.get(link) or self.link(link))[direction]
        c = d.counters
        c.rpcs += 1
        c.message_bytes += message_bytes
        touched: list[air_pb2.AirTensor] = []
        for t in air_tensors(msg):
            try:
                x = air.air_array(t)
            except air.TensorError:
                continue
            if not np.isfinite(x).all():
                continue
            profile = d.profile
            noise_seed = int(d.rng.integers(0, 2**63 - 1))
            lc = profile.block_length
            blocks = 1 if lc == 0 else math.ceil(x.size / lc)
            fading = d.take_fading(blocks)
            if profile.trace:  # a trace link: the trace's H on the tensor's resource elements (replay.py)
                result = REPLAY.transmit(link, direction, x, profile, noise_seed,
                                         np.asarray(t.block_power) if len(t.block_power) else None, int(t.block_length))
            else:
                result = transmit(
                    x, profile, np.random.default_rng(noise_seed),
                    block_power=np.asarray(t.block_power) if len(t.block_power) else None,
                    power_block_length=int(t.block_length),
                    fading=None if fading is None else fading[0],
                    fading_estimate=None if fading is None else fading[1],
                )
            dt = air.WIRE_DTYPES[t.dtype]
            received = result.received
            if dt.itemsize == 2:
                received = np.clip(received, -65504.0, 65504.0)
            t.data = received.astype(dt).tobytes()
            t.applied.CopyFrom(air_pb2.ChannelApplied(
                link=link, direction=direction, model=profile.model, snr_db=profile.snr_db, profile=profile.name,
                symbols=result.symbols, payload_bytes=len(t.data), energy=result.energy, noise_seed=noise_seed,
                effective_snr_db=result.effective_snr_db, blocks=result.blocks,
            ))
            c.transmissions += 1
            c.symbols += result.symbols
            c.payload_bytes += len(t.data)
            c.energy += result.energy
            c.allocated += 1 if len(t.block_power) else 0
            if profile.model != "ideal" and result.effective_snr_db != math.inf:
                # effective SNR = mean |h|²p / N0 over this transmission's symbols: accumulate it linearly
                c.gain_over_n0 += 10 ** (result.effective_snr_db / 10) * result.symbols
                c.snr_symbols += result.symbols
            touched.append(t)
        return touched
