"""The trained meg-tiny through the real ES and proxy: quality follows the SNR, the codec works end to end."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from shared.model.images import psnr
from shared.model.loader import MEG_TINY_DIR
from shared.pb import channel_pb2, channel_pb2_grpc
from shared.protocol.params import Params
from tests.conftest import Stack, running_stack
from ue_client.session import EdgeClient, generate

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not (MEG_TINY_DIR / "model_index.json").exists(), reason="meg-tiny weights not built")]
PROMPT = "a large red circle above a small blue square on a white background"


@pytest.fixture(scope="module")
def tiny_stack() -> Iterator[Stack]:
    from shared.model.ops import ModelParts

    with running_stack(ModelParts.load(None, "cpu")) as stack:  # the embedded default
        yield stack


def _set(addr: str, snr_db: float | None) -> None:
    profile = channel_pb2.Profile(model="ideal") if snr_db is None else channel_pb2.Profile(model="awgn", snr_db=snr_db)
    with grpc.insecure_channel(addr) as ch:
        channel_pb2_grpc.ChannelControlStub(ch).SetChannel(channel_pb2.SetChannelRequest(custom=profile), timeout=5)


@pytest.mark.parametrize("protocol", ["CIAG", "FULL-ES"])
def test_quality_follows_snr(tiny_stack: Stack, protocol: str) -> None:
    images = {}
    with EdgeClient(tiny_stack.proxy_addr, timeout_s=120) as client:
        for snr in (None, 30.0, -10.0):
            _set(tiny_stack.proxy_addr, snr)
            images[snr] = generate(tiny_stack.parts, client, PROMPT, protocol, params=Params(seed=4)).image
    _set(tiny_stack.proxy_addr, None)
    high, low = psnr(images[30.0], images[None]), psnr(images[-10.0], images[None])
    print(f"{protocol}: PSNR vs ideal link at 30 dB {high:.1f} dB, at -10 dB {low:.1f} dB")
    assert high >= 30.0 and low < high - 10


def test_codec_seed_at_high_snr_is_close_to_raw_latent(tiny_stack: Stack) -> None:
    parts = tiny_stack.parts
    assert parts.codec_rates() == [0.1, 0.3, 0.5, 0.7, 0.9]
    with EdgeClient(tiny_stack.proxy_addr, timeout_s=120) as client:
        raw = generate(parts, client, PROMPT, "EIUG", params=Params(seed=4)).image
        coded = generate(parts, client, PROMPT, "EIUG", params=Params(seed=4, fc=0.9))
    assert coded.downlink.symbols == round(0.9 * 256)
    assert psnr(coded.image, raw) > 20.0  # the residual codec's floor, noiseless link
