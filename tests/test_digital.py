"""The digital baseline (FULL-ES-PNG): the image as lossless PNG bytes, costed as digital bits at the link's MCS.

Its plan sends ``image_png`` down and no tensor; the PNG helpers are exact and refuse what is not this model's
8-bit RGB image (a bomb, a wrong size, corrupt bytes); through a real proxy the UE's image is the ES's 8-bit
image exactly (whatever noise the link has), bad PNG bytes are INVALID_ARGUMENT and the ES keeps serving; with a
cell (real ``meg-edge``/``meg-channel``/``meg-ue`` processes) the PNG bits take air, and a link in outage holds
them until the RPC's deadline, which ends it with DEADLINE_EXCEEDED (the cliff).
"""

from __future__ import annotations

import io
import struct
import time
import zlib
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from PIL import Image

from shared.channel.mcs import digital_re, select_mcs
from shared.channel.profiles import ChannelProfile
from shared.model.images import PngError, image_to_png, png_to_image, quantize
from shared.pb import channel_pb2, channel_pb2_grpc, edge_pb2, edge_pb2_grpc
from shared.protocol.params import Params
from shared.protocol.plan import plan
from shared.protocol.registry import get_protocol
from shared.protocol.serde import segment_request
from shared.protocol.stages import DIGITAL_KEYS, TEXT_KEYS
from shared.wire.limits import MAX_PNG_PIXELS
from tests.support.procs import running, script
from ue_client.session import EdgeClient, generate

PROMPT = "a small blue square"


# -- the plan: data alone decides what crosses ---------------------------------------------------------------

def test_plan_sends_the_png_down_and_no_tensor() -> None:
    _, stages = get_protocol("FULL-ES-PNG", "txt2img")
    segments = plan(stages, "txt2img")
    assert [(s.actor, s.receives, s.returns) for s in segments] == [
        ("ES", ("prompt",), ("image_png",)), ("UE", ("image_png",), ())]
    _, stages = get_protocol("FULL-ES-PNG", "img2img")
    es = [s for s in plan(stages, "img2img") if s.actor == "ES"]
    assert [(s.receives, s.returns) for s in es] == [(("image_in_png", "prompt"), ("image_png",))]
    crossing = {k for s in es for k in (*s.receives, *s.returns)}
    assert crossing - TEXT_KEYS <= DIGITAL_KEYS  # nothing goes over the air as a tensor


# -- the PNG helpers ---------------------------------------------------------------------------------------------

def _png_header(width: int, height: int, color_type: int = 2) -> bytes:
    """A PNG whose IHDR declares ``width × height`` (8-bit, RGB by default) and whose IDAT holds one row."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * (1 + 3 * width)))
            + chunk(b"IEND", b""))


def test_png_round_trip_is_the_8_bit_image_exactly() -> None:
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    back = png_to_image(image_to_png(image), 16)
    assert back.shape == (1, 3, 16, 16) and back.dtype == torch.float32
    assert torch.equal(back, quantize(image))
    assert float((back - image).abs().max()) <= 0.5 / 255 + 1e-6
    assert torch.equal(png_to_image(image_to_png(back), 16), back)  # lossless once 8-bit


@pytest.mark.parametrize("data, message", [
    (b"GIF89a not a png at all", "is not a PNG"),
    (_png_header(1 << 15, 1 << 15), f"at most {MAX_PNG_PIXELS:,d}"),  # a bomb: refused from its header
    (_png_header(8, 8), "is 8×8; this model's images are 16×16"),
    (_png_header(16, 16, color_type=0), "mode L; an 8-bit RGB PNG is expected"),
])
def test_bad_png_bytes_are_refused_with_a_sentence(data: bytes, message: str) -> None:
    with pytest.raises(PngError, match=message):
        png_to_image(data, 16)


def test_a_truncated_png_is_refused_not_padded() -> None:
    full = image_to_png(torch.rand(1, 3, 16, 16))
    with pytest.raises(PngError, match="cannot be decoded"):
        png_to_image(full[: len(full) // 2], 16)


# -- through the proxy, in process (the tiny random model) -------------------------------------------------------

def test_full_es_png_through_a_noisy_proxy_is_the_es_image_exactly(inproc_stack) -> None:  # type: ignore[no-untyped-def]
    """The downlink is AWGN at 0 dB: an analog image would be ruined, the PNG bytes are not touched."""
    parts, size = inproc_stack.parts, inproc_stack.parts.geometry.image_size
    params = Params(seed=5, steps=2, strength=0.7)
    image_in = quantize(torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1)))
    inproc_stack.link.set("png-ue->es0", "both", ChannelProfile("awgn-0", "awgn", 0.0))
    try:
        for task in ("txt2img", "img2img"):
            im = image_in if task == "img2img" else None
            with EdgeClient(inproc_stack.proxy_addr, timeout_s=60, ue_id="png-ue") as c:
                digital = generate(parts, c, PROMPT, "FULL-ES-PNG", task, params, im)
            with EdgeClient(inproc_stack.es_addr, timeout_s=60) as direct:  # no channel at all
                analog = generate(parts, direct, PROMPT, "FULL-ES", task, params, im)
            assert torch.equal(digital.image, quantize(analog.image)), task
            down_png = len(image_to_png(analog.image))
            assert digital.downlink.digital_bytes == down_png and digital.downlink.symbols == 0
            assert digital.downlink.transmissions == 0 and digital.uplink.symbols == 0
            assert digital.uplink.digital_bytes == (len(image_to_png(image_in)) if im is not None else 0)
            assert digital.uplink.text_bytes == len(PROMPT)
            assert digital.summary()["downlink"]["digital_bytes"] == down_png  # type: ignore[index]
    finally:
        inproc_stack.link.reset(stats=False)


def _img2img_request(digital: dict[str, bytes]) -> edge_pb2.SegmentRequest:
    _, stages = get_protocol("FULL-ES-PNG", "img2img")
    segment = plan(stages, "img2img")[1]
    return segment_request("FULL-ES-PNG", segment, "img2img", PROMPT, [], "", Params(seed=1, steps=2), 1, None, digital)


def test_bad_png_bytes_are_invalid_argument_and_the_es_keeps_serving(inproc_stack) -> None:  # type: ignore[no-untyped-def]
    size = inproc_stack.parts.geometry.image_size
    good = image_to_png(torch.rand(1, 3, size, size))
    small = io.BytesIO()
    Image.fromarray(np.zeros((size // 2, size // 2, 3), np.uint8)).save(small, format="PNG")
    cases = [
        ({"image_in_png": b"\x89PNG\r\n\x1a\n garbage"}, "cannot be decoded"),
        ({"image_in_png": small.getvalue()}, f"is {size // 2}×{size // 2}; this model's images are {size}×{size}"),
        ({"image_in_png": _png_header(1 << 15, 1 << 15)}, "pixels; at most"),
        ({}, "expects digital payloads ['image_in_png'], got []"),
        ({"image_in_png": good, "image_png": good}, "expects digital payloads ['image_in_png']"),
        ({"image_in_png": good, "cond": b"x"}, "cannot cross as digital bytes"),
    ]
    with grpc.insecure_channel(inproc_stack.proxy_addr) as ch:
        stub = edge_pb2_grpc.EdgeServiceStub(ch)
        for digital, message in cases:
            with pytest.raises(grpc.RpcError) as err:
                stub.RunSegment(_img2img_request(digital), timeout=30)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (message, err.value.details())
            assert message in (err.value.details() or ""), err.value.details()
        reply = stub.RunSegment(_img2img_request({"image_in_png": good}), timeout=60)  # still serving
    assert set(reply.digital) == {"image_png"} and not reply.tensors
    assert png_to_image(reply.digital["image_png"], size).shape == (1, 3, size, size)


# -- real processes with a cell ------------------------------------------------------------------------------------

CELL = ["--bandwidth-mhz", "20", "--numerology", "1"]


@pytest.mark.slow
def test_full_es_png_through_processes_with_a_cell_and_the_outage_cliff(random_model_dir: Path) -> None:
    """Real ``meg-edge`` and ``meg-channel`` processes (a 20 MHz cell, AWGN 10 dB), the UE's own code in this
    process (what ``meg-ue generate --json`` prints is its ``summary()``)."""
    from shared.model.ops import ModelParts

    model = str(random_model_dir)
    parts = ModelParts.load(model, "cpu")
    edge = [script("meg-edge"), "serve", "--listen", "127.0.0.1:0", "--model", model, "--device", "cpu"]
    with running(edge, "meg.v1.EdgeService") as (_, es_port):
        proxy = [script("meg-channel"), "serve", "--listen", "127.0.0.1:0", "--upstream", f"127.0.0.1:{es_port}",
                 "--model", "awgn", "--snr-db", "10", *CELL]
        with running(proxy, "meg.v1.ChannelControl") as (_, port):
            with EdgeClient(f"127.0.0.1:{port}", timeout_s=60, ue_id="phone") as client:
                report = generate(parts, client, PROMPT, "FULL-ES-PNG", "txt2img", Params(seed=3, steps=2))
            with EdgeClient(f"127.0.0.1:{es_port}", timeout_s=60) as direct:
                analog = generate(parts, direct, PROMPT, "FULL-ES", "txt2img", Params(seed=3, steps=2))

            # the downlink in outage (-10 dB is below MCS 0's -6.0 dB): the PNG's bits wait until the deadline
            with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
                channel_pb2_grpc.ChannelControlStub(ch).SetChannel(
                    channel_pb2.SetChannelRequest(direction="downlink", profile="awgn-minus10"), timeout=5)
            with EdgeClient(f"127.0.0.1:{port}", timeout_s=3.0, ue_id="edge-of-cell") as client:
                t0 = time.monotonic()
                with pytest.raises(grpc.RpcError) as err:
                    generate(parts, client, PROMPT, "FULL-ES-PNG", "txt2img", Params(seed=3, steps=2))
                took = time.monotonic() - t0
    down = report.summary()["downlink"]
    assert isinstance(down, dict)
    assert down["digital_bytes"] == len(image_to_png(analog.image)) and down["symbols"] == 0
    assert down["air_s"] > 0 and down["cell"] == "es0"
    # the proxy costed the PNG as digital bits at 10 dB's MCS (it knows nothing of PNGs: every non-tensor byte is
    # digital), the response's own framing (map key, es_seconds) adding a few dozen bytes at most
    mcs = select_mcs(10.0)
    assert mcs is not None
    png_re = digital_re(8 * int(down["digital_bytes"]), mcs)
    assert png_re <= int(down["resource_elements"]) <= png_re + digital_re(8 * 64, mcs), (down, png_re)
    assert torch.equal(report.image, quantize(analog.image))  # the ES's 8-bit image, exactly
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err.value.details()
    assert 3.0 - 0.05 <= took <= 3.0 + 1.0, took
