"""The ``meg-airtime`` trailing metadata: what one RPC's messages cost on the air, per direction.

The proxy puts it on every RPC through a cell (header name :data:`shared.wire.headers.AIRTIME_HEADER`);
its value is JSON::

    {"uplink":   {"air_s": .., "queue_s": .., "delay_s": .., "slots": .., "resource_elements": ..,
                  "digital_bits": .., "mcs": .., "cell": "es0"},
     "downlink": {...the same keys...}}

per direction the whole message (its over-the-air tensors and its digital part):

================  ======  ============================================================================
``air_s``         float   from the message's first granted slot's start to its last granted slot's end
``queue_s``       float   from the message's arrival at the proxy to its first granted slot's start
``delay_s``       float   the link's one-way delay plus jitter drawn for the message (after the air)
``slots``         int     slots in which the message got resource elements
``resource_elements`` int complex REs granted (tensors ``ceil(n/2)``, digital bits ``ceil(bits/SE)``)
``digital_bits``  int     bits of everything that is not an over-the-air tensor's data
``mcs``           int     the MCS index (TS 38.214 Table 5.1.3.1-2) of the digital bits; -1 = none sent
``cell``          str     the cell (the ES's name)
================  ======  ============================================================================

A direction is absent when the message never crossed (the RPC failed before the reply). Pure Python: the UE
side parses it with :func:`parse_airtime`, so neither side spells the format twice.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

#: The keys of one direction, in order, with their JSON types.
AIRTIME_KEYS: dict[str, type] = {
    "air_s": float, "queue_s": float, "delay_s": float, "slots": int, "resource_elements": int,
    "digital_bits": int, "mcs": int, "cell": str,
}
AIRTIME_DIRECTIONS = ("uplink", "downlink")


@dataclass(frozen=True)
class DirectionAirtime:
    """One direction of one RPC on the air (see the module docstring for each field)."""

    air_s: float
    queue_s: float
    delay_s: float
    slots: int
    resource_elements: int
    digital_bits: int
    mcs: int
    cell: str

    @property
    def total_s(self) -> float:
        """Queueing + air + delay: what the message spent between the proxy's receipt and its release."""
        return self.queue_s + self.air_s + self.delay_s


def airtime_value(uplink: DirectionAirtime | None, downlink: DirectionAirtime | None) -> str:
    """The header's JSON value for the directions that crossed."""
    out = {name: asdict(d) for name, d in zip(AIRTIME_DIRECTIONS, (uplink, downlink)) if d is not None}
    return json.dumps(out, separators=(",", ":"))


def parse_airtime(value: str) -> dict[str, dict[str, float | int | str]]:
    """Parse a ``meg-airtime`` value: ``{"uplink": {...}, "downlink": {...}}`` (a direction that did not
    cross is absent). Raises ``ValueError`` naming what is wrong (not JSON, unknown direction, a key
    missing or of the wrong type, a negative or non-finite time)."""
    try:
        raw = json.loads(value)
    except (TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"meg-airtime is not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"meg-airtime must be a JSON object, got {type(raw).__name__}")  # noqa: TRY004 - a bad value
    out: dict[str, dict[str, float | int | str]] = {}
    for direction, fields in raw.items():
        if direction not in AIRTIME_DIRECTIONS:
            raise ValueError(f"meg-airtime: unknown direction {direction!r}; expected uplink or downlink")
        if not isinstance(fields, dict) or set(fields) != set(AIRTIME_KEYS):
            have = sorted(fields) if isinstance(fields, dict) else fields
            raise ValueError(f"meg-airtime.{direction} must have exactly the keys {list(AIRTIME_KEYS)}, got {have}")
        parsed: dict[str, float | int | str] = {}
        for key, kind in AIRTIME_KEYS.items():
            v = fields[key]
            ok = isinstance(v, str) if kind is str else (
                isinstance(v, (int, float)) and not isinstance(v, bool) and (kind is float or float(v).is_integer()))
            if not ok:
                raise ValueError(f"meg-airtime.{direction}.{key} must be {kind.__name__}, got {v!r}")
            if kind is float and (not math.isfinite(v) or v < 0):
                raise ValueError(f"meg-airtime.{direction}.{key} must be a finite time >= 0, got {v!r}")
            parsed[key] = kind(v)
        out[direction] = parsed
    return out
