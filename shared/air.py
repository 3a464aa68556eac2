"""The one place where tensors become over-the-air protobuf messages and back.

An :class:`~shared.pb.air_pb2.AirTensor` carries raw little-endian bytes (never ``repeated float``, never
pickle). :func:`from_air` checks everything a peer could get wrong and raises :class:`TensorError` with a
message a person understands; servers turn that into ``INVALID_ARGUMENT``.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import numpy as np
import torch

from shared.pb import air_pb2

#: dtypes allowed on the air, by wire name.
WIRE_DTYPES: dict[str, np.dtype] = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}
#: No over-the-air tensor may hold more values than this (64 Mi values, 256 MiB at float32).
MAX_VALUES = 64 * 1024 * 1024


class TensorError(ValueError):
    """A received tensor is malformed (shape, dtype, byte count, non-finite values)."""


def to_air(name: str, tensor: torch.Tensor | np.ndarray, dtype: str = "float32") -> air_pb2.AirTensor:
    """Serialise a tensor of any shape to an ``AirTensor`` (C order, little-endian ``dtype``)."""
    if dtype not in WIRE_DTYPES:
        raise TensorError(f"dtype {dtype!r} is not sent over the air; use one of {sorted(WIRE_DTYPES)}")
    if isinstance(tensor, torch.Tensor):
        tensor = tensor.detach().to("cpu", torch.float32).numpy()
    arr = np.ascontiguousarray(tensor, dtype=WIRE_DTYPES[dtype])
    return air_pb2.AirTensor(
        name=name,
        shape=list(arr.shape),
        dtype=dtype,
        data=arr.tobytes(),
        transmission_id=uuid.uuid4().hex,
    )


def air_array(msg: air_pb2.AirTensor) -> np.ndarray:
    """View an ``AirTensor``'s payload as a float32 array of its shape, after checking shape/dtype/bytes."""
    if msg.dtype not in WIRE_DTYPES:
        raise TensorError(
            f"tensor {msg.name!r}: dtype {msg.dtype!r} is not supported; use one of {sorted(WIRE_DTYPES)}"
        )
    shape = tuple(int(d) for d in msg.shape)
    if not shape or any(d <= 0 for d in shape):
        raise TensorError(f"tensor {msg.name!r}: shape {list(shape)} must be non-empty with positive sizes")
    count = int(np.prod(shape, dtype=np.int64))
    if count > MAX_VALUES:
        raise TensorError(f"tensor {msg.name!r}: {count} values is more than the limit {MAX_VALUES}")
    dt = WIRE_DTYPES[msg.dtype]
    if len(msg.data) != count * dt.itemsize:
        raise TensorError(
            f"tensor {msg.name!r}: shape {list(shape)} as {msg.dtype} needs {count * dt.itemsize} bytes, "
            f"got {len(msg.data)}"
        )
    return np.frombuffer(msg.data, dtype=dt).reshape(shape).astype(np.float32)


def from_air(msg: air_pb2.AirTensor, expected_shape: Sequence[int] | None = None) -> torch.Tensor:
    """Decode an ``AirTensor`` to a float32 CPU tensor, checking it against ``expected_shape``.

    Raises :class:`TensorError` for a wrong shape, dtype or byte count, or any NaN/Inf value.
    """
    arr = air_array(msg)
    if expected_shape is not None and tuple(arr.shape) != tuple(expected_shape):
        raise TensorError(
            f"tensor {msg.name!r}: expected shape {list(expected_shape)}, got {list(arr.shape)}"
        )
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise TensorError(f"tensor {msg.name!r}: {bad} of {arr.size} values are NaN or infinite")
    return torch.from_numpy(arr.copy())


def symbols(msg: air_pb2.AirTensor) -> int:
    """Real-valued symbols the tensor occupies on the air (one per value)."""
    return int(np.prod([int(d) for d in msg.shape], dtype=np.int64)) if msg.shape else 0
