"""Through the real proxy: at 30 dB the image is close to the noise-free one, at −10 dB it is not."""

from __future__ import annotations

import grpc
import pytest

from shared.model.images import psnr
from shared.pb import channel_pb2, channel_pb2_grpc
from shared.protocol.params import Params
from ue_client.session import EdgeClient, generate

pytestmark = pytest.mark.slow  # real processes / a model end to end (conftest: 600 s per test)


def _set_both(addr: str, model: str, snr_db: float) -> None:
    with grpc.insecure_channel(addr) as ch:
        req = channel_pb2.SetChannelRequest(direction="both", custom=channel_pb2.Profile(model=model, snr_db=snr_db))
        channel_pb2_grpc.ChannelControlStub(ch).SetChannel(req, timeout=5)


def test_ciag_quality_follows_snr(inproc_stack) -> None:  # type: ignore[no-untyped-def]
    params = Params(seed=7, steps=3)
    images = {}
    with EdgeClient(inproc_stack.proxy_addr, timeout_s=60) as client:
        for name, model, snr in (("ideal", "ideal", 0.0), ("30", "awgn", 30.0), ("-10", "awgn", -10.0)):
            _set_both(inproc_stack.proxy_addr, model, snr)
            result = generate(inproc_stack.parts, client, "a small red circle", "CIAG", params=params)
            images[name] = result.image
            if model == "awgn":
                assert result.uplink.snr_db == snr and result.downlink.snr_db == snr
    _set_both(inproc_stack.proxy_addr, "ideal", 0.0)
    high, low = psnr(images["30"], images["ideal"]), psnr(images["-10"], images["ideal"])
    print(f"PSNR vs ideal: 30 dB -> {high:.1f} dB, -10 dB -> {low:.1f} dB")
    assert high >= 30.0, high
    assert low < high - 15.0, (low, high)


def test_same_seed_ideal_channel_is_deterministic(inproc_stack) -> None:  # type: ignore[no-untyped-def]
    with EdgeClient(inproc_stack.proxy_addr, timeout_s=60) as client:
        a = generate(inproc_stack.parts, client, "a blue square", "CIAG", params=Params(seed=1, steps=2)).image
        b = generate(inproc_stack.parts, client, "a blue square", "CIAG", params=Params(seed=1, steps=2)).image
        c = generate(inproc_stack.parts, client, "a blue square", "CIAG", params=Params(seed=2, steps=2)).image
    assert bool((a == b).all())
    assert not bool((a == c).all())
