import numpy as np
import pytest
import torch

from shared.wire import air


def test_round_trip_float32_and_float16() -> None:
    x = torch.randn(1, 4, 8, 8)
    msg = air.to_air("seed", x)
    assert msg.dtype == "float32" and list(msg.shape) == [1, 4, 8, 8] and len(msg.data) == 4 * 256
    assert torch.equal(air.from_air(msg, (1, 4, 8, 8)), x)
    half = air.to_air("seed", x, dtype="float16")
    assert len(half.data) == 2 * 256
    assert torch.allclose(air.from_air(half), x, atol=1e-2)
    assert air.symbols(msg) == 256
    # little-endian raw bytes, C order
    assert np.frombuffer(msg.data[:4], "<f4")[0] == x.flatten()[0].item()


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda m: m.ClearField("shape") or m.shape.extend([1, 4, 16, 4]), "expected shape"),
        (lambda m: setattr(m, "dtype", "int8"), "dtype 'int8'"),
        (lambda m: setattr(m, "data", m.data[:-4]), "needs 1024 bytes"),
        (lambda m: m.shape.extend([0]), "positive sizes"),
        (lambda m: setattr(m, "data", np.full(256, np.nan, "<f4").tobytes()), "NaN or infinite"),
        (lambda m: setattr(m, "data", np.full(256, np.inf, "<f4").tobytes()), "NaN or infinite"),
    ],
)
def test_malformed_tensors_are_rejected_with_a_readable_reason(mutate, message) -> None:  # type: ignore[no-untyped-def]
    msg = air.to_air("seed", torch.zeros(1, 4, 8, 8))
    mutate(msg)
    with pytest.raises(air.TensorError, match=message):
        air.from_air(msg, (1, 4, 8, 8))
