"""Python values <-> proto messages, both sides in one place (flower's ``common/serde.py`` habit).

The UE builds a ``SegmentRequest`` here (:func:`segment_request`) and the ES checks one here
(:func:`check_params`, :func:`check_segment`, :func:`share_from_proto`), so what one side writes and the
other reads cannot drift apart. Checks raise :class:`RequestError` (the ES answers INVALID_ARGUMENT with
its message). Tensors are :mod:`shared.wire.air`'s business; the protocol's data is :mod:`shared.protocol.stages`'."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from shared.pb import air_pb2, edge_pb2
from shared.protocol.plan import plan
from shared.protocol.registry import get_protocol
from shared.protocol.stages import DIGITAL_KEYS, TASKS, ProtocolError, Segment

if TYPE_CHECKING:
    from shared.protocol.params import Params
    from shared.protocol.tiles import Share

from shared.wire.limits import MAX_DIGITAL_BYTES, MAX_STEPS


class RequestError(ValueError):
    """A request a person must fix: becomes INVALID_ARGUMENT with this message."""


def params_to_proto(params: Params, seed: int | None = None) -> edge_pb2.GenerationParams:
    """``Params`` -> ``GenerationParams`` (``seed`` overrides ``params.seed``: per-ES seeds of a fan-out)."""
    return edge_pb2.GenerationParams(seed=params.seed if seed is None else seed, steps=params.steps,
                                     guidance=params.guidance, fc=params.fc, strength=params.strength)


def check_params(p: edge_pb2.GenerationParams) -> Params:
    """``GenerationParams`` -> validated ``Params``; raises :class:`RequestError`."""
    from shared.protocol.params import Params

    checks = [
        (p.steps <= MAX_STEPS, f"steps must be at most {MAX_STEPS}, got {p.steps}"),
        (math.isfinite(p.guidance) and 0 <= p.guidance <= 50, f"guidance must be in [0, 50], got {p.guidance}"),
        (math.isfinite(p.fc) and 0 <= p.fc <= 1, f"fc must be in (0, 1] (0 = default), got {p.fc}"),
        (math.isfinite(p.strength) and 0 <= p.strength <= 1, f"strength must be in [0, 1], got {p.strength}"),
    ]
    for ok, message in checks:
        if not ok:
            raise RequestError(message)
    # fc crosses as float32: round it back to the rate that was meant (0.9, not 0.8999999761581421)
    return Params(seed=p.seed, steps=p.steps, guidance=p.guidance, fc=round(float(p.fc), 4), strength=p.strength)


def share_to_proto(share: Share) -> edge_pb2.Share:
    """A multi-ES share -> its proto (which ES of how many; the cooperative window's halo and shared head)."""
    return edge_pb2.Share(index=share.index, count=share.count, halo=share.halo, head=share.head, sync=share.sync)


def share_from_proto(msg: edge_pb2.Share, latent_width: int) -> Share:
    """The proto -> a checked :class:`~shared.protocol.tiles.Share` for a latent ``latent_width`` wide; raises RequestError."""
    from shared.protocol.tiles import Share, ShareError

    try:
        return Share(msg.index, msg.count, msg.halo, msg.head, msg.sync).check(latent_width)
    except ShareError as exc:
        raise RequestError(str(exc)) from None


def segment_request(protocol: str, segment: Segment, task: str, prompt: str, tensors: Sequence[air_pb2.AirTensor],
                    request_id: str, params: Params, seed: int, share: Share | None,
                    digital: Mapping[str, bytes] | None = None) -> edge_pb2.SegmentRequest:
    """The UE's request for one ES segment (``share`` only for a multi-ES fan-out segment; ``digital``: the
    segment's :data:`~shared.protocol.stages.DIGITAL_KEYS` as lossless bytes)."""
    request = edge_pb2.SegmentRequest(protocol=protocol, segment=segment.index, task=task, prompt=prompt,
                                      tensors=list(tensors), request_id=request_id,
                                      params=params_to_proto(params, seed), digital=dict(digital or {}))
    if segment.fan != "one" and share is not None:
        request.share.CopyFrom(share_to_proto(share))
    return request


def check_segment(request: edge_pb2.SegmentRequest, rounds: int = 1) -> tuple[Segment, tuple[Segment, ...]]:
    """The ES segment this request asks for, and the whole plan it is part of (a cooperative protocol's plan
    has ``rounds`` rounds); raises :class:`RequestError`."""
    task = request.task or "txt2img"
    if task not in TASKS:
        raise RequestError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
    try:
        _, stages = get_protocol(request.protocol, task)
    except ProtocolError as exc:
        raise RequestError(str(exc)) from None
    segments = plan(stages, task, rounds)
    if request.segment >= len(segments) or segments[request.segment].actor != "ES":
        es_segments = [s.index for s in segments if s.actor == "ES"]
        raise RequestError(
            f"segment {request.segment} of {request.protocol.upper()} is not an ES segment; ES segments: {es_segments}"
        )
    segment = segments[request.segment]
    fanned = request.HasField("share") and request.share.count > 0
    if segment.fan != "one" and not fanned:
        raise RequestError(f"segment {segment.index} of {request.protocol.upper()} is a multi-ES fan-out ({segment.fan}): "
                           "say which ES of how many this is (share.index / share.count)")
    if segment.fan == "one" and fanned:
        raise RequestError(f"{request.protocol.upper()} is a single-ES protocol; send no share")
    return segment, segments


def check_digital(received: Mapping[str, bytes], expected: set[str] | frozenset[str], what: str) -> dict[str, bytes]:
    """The lossless payloads ``received`` (a ``digital`` map) checked against the keys ``expected`` (the
    :data:`~shared.protocol.stages.DIGITAL_KEYS` a segment receives or returns) and bounded
    (:data:`~shared.wire.limits.MAX_DIGITAL_BYTES` each); raises :class:`RequestError` naming ``what``."""
    names = set(received)
    if names - DIGITAL_KEYS:
        raise RequestError(f"{what}: {sorted(names - DIGITAL_KEYS)} cannot cross as digital bytes; "
                           f"digital keys: {sorted(DIGITAL_KEYS)}")
    if names != set(expected):
        raise RequestError(f"{what} expects digital payloads {sorted(expected)}, got {sorted(names)}")
    for k, v in received.items():
        if len(v) > MAX_DIGITAL_BYTES:
            raise RequestError(f"{what}: digital payload {k!r} has {len(v):,d} bytes; at most {MAX_DIGITAL_BYTES:,d}")
    return {k: bytes(v) for k, v in received.items()}
