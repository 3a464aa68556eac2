"""The one place where tensors become over-the-air protobuf messages and back.

An :class:`~shared.pb.air_pb2.AirTensor` carries raw little-endian bytes (never ``repeated float``, never
pickle). :func:`air_array` checks everything a peer could get wrong and raises :class:`TensorError` with a
message a person understands; servers turn that into ``INVALID_ARGUMENT``.

The core is numpy only (the channel proxy never imports torch); :func:`to_air` also accepts a torch
tensor and :func:`from_air` is the thin torch adapter, importing torch only when called."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from shared.pb import air_pb2

if TYPE_CHECKING:
    import torch

from shared.wire.limits import MAX_DIMS, MAX_VALUES

#: dtypes allowed on the air, by wire name.
WIRE_DTYPES: dict[str, np.dtype] = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}


class TensorError(ValueError):
    """A received tensor is malformed (shape, dtype, byte count, non-finite values)."""


def to_air(name: str, tensor: Any, dtype: str = "float32") -> air_pb2.AirTensor:
    """Serialise an array or torch tensor of any shape to an ``AirTensor`` (C order, little-endian ``dtype``)."""
    if dtype not in WIRE_DTYPES:
        raise TensorError(f"dtype {dtype!r} is not sent over the air; use one of {sorted(WIRE_DTYPES)}")
    if hasattr(tensor, "detach"):  # a torch tensor (duck-typed: torch is not imported here)
        tensor = tensor.detach().float().cpu().numpy()
    arr = np.ascontiguousarray(tensor, dtype=WIRE_DTYPES[dtype])
    return air_pb2.AirTensor(
        name=name,
        shape=list(arr.shape),
        dtype=dtype,
        data=arr.tobytes(),
        transmission_id=uuid.uuid4().hex,
    )


def checked_shape(msg: air_pb2.AirTensor) -> tuple[int, ...]:
    """The tensor's shape after checking it: 1-64 dims, positive sizes, at most :data:`MAX_VALUES` values.

    The element count is computed in Python integers with an early stop, so ``[2**32, 2**32]`` or
    ``[1] * 100`` are a :class:`TensorError`, never a numpy overflow.
    """
    dims = len(msg.shape)
    if dims == 0 or dims > MAX_DIMS:
        raise TensorError(f"tensor {msg.name!r}: {dims} dimensions; a tensor has 1 to {MAX_DIMS}")
    shape = tuple(int(d) for d in msg.shape)
    if any(d <= 0 for d in shape):
        raise TensorError(f"tensor {msg.name!r}: shape {list(shape)} must have positive sizes")
    count = 1
    for d in shape:
        count *= d
        if count > MAX_VALUES:
            raise TensorError(f"tensor {msg.name!r}: shape {list(shape)} holds more than the limit of {MAX_VALUES} values")
    return shape


def air_array(msg: air_pb2.AirTensor, expected_shape: Sequence[int] | None = None, finite: bool = False) -> np.ndarray:
    """The payload as a float32 array ``[*msg.shape]`` after checking shape, dtype and byte count
    (and with ``expected_shape`` the shape, with ``finite`` that no value is NaN/Inf)."""
    if msg.dtype not in WIRE_DTYPES:
        raise TensorError(
            f"tensor {msg.name!r}: dtype {msg.dtype!r} is not supported; use one of {sorted(WIRE_DTYPES)}"
        )
    shape = checked_shape(msg)
    count = 1
    for d in shape:
        count *= d
    dt = WIRE_DTYPES[msg.dtype]
    if len(msg.data) != count * dt.itemsize:
        raise TensorError(
            f"tensor {msg.name!r}: shape {list(shape)} as {msg.dtype} needs {count * dt.itemsize} bytes, "
            f"got {len(msg.data)}"
        )
    if expected_shape is not None and shape != tuple(expected_shape):
        raise TensorError(f"tensor {msg.name!r}: expected shape {list(expected_shape)}, got {list(shape)}")
    arr = np.frombuffer(msg.data, dtype=dt).reshape(shape).astype(np.float32)
    if finite and not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise TensorError(f"tensor {msg.name!r}: {bad} of {arr.size} values are NaN or infinite")
    return arr


def from_air(msg: air_pb2.AirTensor, expected_shape: Sequence[int] | None = None) -> torch.Tensor:
    """Decode an ``AirTensor`` to a float32 CPU torch tensor, checking it against ``expected_shape``.

    Raises :class:`TensorError` for a wrong shape, dtype or byte count, or any NaN/Inf value.
    """
    import torch

    return torch.from_numpy(air_array(msg, expected_shape, finite=True).copy())


def symbols(msg: air_pb2.AirTensor) -> int:
    """Real-valued symbols the tensor occupies on the air (one per value; 0 for a malformed shape)."""
    try:
        shape = checked_shape(msg)
    except TensorError:
        return 0
    count = 1
    for d in shape:
        count *= d
    return count


def unsupported_rate_message(fc: float, rates: Sequence[float]) -> str:
    """What the ES says when a request asks for a seed codec rate ``fc`` the model does not ship
    (``rates``: Describe's ``codec_fc``). For the RunSegment check, only where a seed is sent."""
    have = ", ".join(f"{r:g}" for r in sorted(rates))
    if not have:
        return f"this model ships no seed codec at all (asked for fc={fc:g}); use fc=1 (raw latent)"
    return f"this model ships no seed codec for fc={fc:g}; use fc=1 (raw latent) or one of {have}"
