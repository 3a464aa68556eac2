"""What the proxy does to the tensors of one direction of the link, and its counters."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from google.protobuf.message import Message

from channel_emulator.walker import air_tensors
from shared import air
from shared.channel import ChannelModel, make_model, transmit
from shared.pb import air_pb2, channel_pb2

DIRECTIONS = ("uplink", "downlink")


@dataclass
class DirectionCounters:
    rpcs: int = 0
    transmissions: int = 0
    symbols: int = 0
    payload_bytes: int = 0
    message_bytes: int = 0
    snr_sum: float = 0.0
    snr_count: int = 0
    energy: float = 0.0

    def to_proto(self) -> channel_pb2.DirectionStats:
        mean = self.snr_sum / self.snr_count if self.snr_count else math.nan
        return channel_pb2.DirectionStats(
            transmissions=self.transmissions, symbols=self.symbols, payload_bytes=self.payload_bytes,
            message_bytes=self.message_bytes, rpcs=self.rpcs, mean_snr_db=mean, energy=self.energy,
        )


@dataclass
class Direction:
    """One direction of the link: its channel model, seeded RNG and counters."""

    name: str
    model: ChannelModel
    rng: np.random.Generator
    counters: DirectionCounters = field(default_factory=DirectionCounters)

    def settings(self) -> channel_pb2.DirectionSettings:
        return channel_pb2.DirectionSettings(model=self.model.name, snr_db=self.model.snr_db)


class Link:
    """The UE↔ES link as the proxy sees it. A settings change applies from the next transmission."""

    def __init__(self, name: str = "ue->es", uplink: ChannelModel | None = None,
                 downlink: ChannelModel | None = None, seed: int = 0) -> None:
        self.name = name
        ideal = make_model("ideal", math.inf)
        self.directions = {
            d: Direction(d, m or ideal, np.random.default_rng([seed, i]))
            for i, (d, m) in enumerate(zip(DIRECTIONS, (uplink, downlink)))
        }

    def set(self, direction: str, model: str, snr_db: float) -> None:
        """Replace a direction's model; raises :class:`shared.channel.ChannelConfigError`."""
        self.directions[direction].model = make_model(model or "awgn", snr_db)

    def settings(self) -> channel_pb2.ChannelSettings:
        return channel_pb2.ChannelSettings(
            uplink=self.directions["uplink"].settings(), downlink=self.directions["downlink"].settings()
        )

    def stats(self) -> channel_pb2.ChannelStats:
        return channel_pb2.ChannelStats(
            uplink=self.directions["uplink"].counters.to_proto(),
            downlink=self.directions["downlink"].counters.to_proto(),
        )

    def apply(self, direction: str, msg: Message, message_bytes: int) -> bool:
        """Perturb every well-formed ``AirTensor`` in ``msg`` in place; returns whether any was touched.

        Malformed tensors (bad shape/bytes/dtype, NaN) are forwarded untouched so that the receiver
        rejects them with a clear message. Raises ``ChannelConfigError`` for an invalid power allocation.
        """
        d = self.directions[direction]
        c = d.counters
        c.rpcs += 1
        c.message_bytes += message_bytes
        touched = False
        for t in air_tensors(msg):
            try:
                x = air.air_array(t)
            except air.TensorError:
                continue
            if not np.isfinite(x).all():
                continue
            noise_seed = int(d.rng.integers(0, 2**63 - 1))
            result = transmit(
                x, d.model, np.random.default_rng(noise_seed),
                block_power=np.asarray(t.block_power) if len(t.block_power) else None,
                block_length=int(t.block_length),
            )
            dt = air.WIRE_DTYPES[t.dtype]
            if dt.itemsize == 2:
                np.clip(result.received, -65504.0, 65504.0, out=result.received)
            t.data = result.received.astype(dt).tobytes()
            t.applied.CopyFrom(air_pb2.ChannelApplied(
                link=self.name, direction=direction, model=d.model.name, snr_db=d.model.snr_db,
                symbols=result.symbols, payload_bytes=len(t.data), energy=result.energy, noise_seed=noise_seed,
            ))
            c.transmissions += 1
            c.symbols += result.symbols
            c.payload_bytes += len(t.data)
            c.energy += result.energy
            if math.isfinite(d.model.snr_db):
                c.snr_sum += d.model.snr_db
                c.snr_count += 1
            touched = True
        return touched
