"""Every single-ES protocol, both tasks, through the real proxy: the image, and the accounting three ways
(the UE's report, the proxy's own counters, the prediction of `meg-ue overhead`)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
import torch

from shared.pb import channel_pb2, channel_pb2_grpc
from shared.protocol.params import Params
from shared.protocol.registry import PROTOCOLS
from shared.protocol.stages import TASKS
from ue_client.compare import run_compare
from ue_client.overhead import protocol_overhead
from ue_client.session import EdgeClient, generate

pytestmark = pytest.mark.slow  # real processes / a model end to end (conftest: 600 s per test)

# one row per protocol: adding a protocol means adding its registry entry and a row here
EXPECTED_CROSSINGS = {
    # protocol: {task: (uplink tensor keys, prompt text goes up, downlink keys)}
    "FULL-UE": {"txt2img": ((), False, ()), "img2img": ((), False, ())},
    "FULL-ES": {"txt2img": ((), True, ("image",)), "img2img": (("image_in",), True, ("image",))},
    # the digital baseline: PNG bytes, no tensor (tests/test_digital.py checks the image and the outage)
    "FULL-ES-PNG": {"txt2img": ((), True, ("image_png (digital)",)),
                    "img2img": (("image_in_png (digital)",), True, ("image_png (digital)",))},
    "UIEG": {"txt2img": (("cond",), False, ("image",)), "img2img": (("init_seed",), True, ("image",))},
    "EIUG": {"txt2img": ((), True, ("seed",)), "img2img": (("image_in",), True, ("seed",))},
    "CIAG": {"txt2img": (("cond",), False, ("seed",)), "img2img": (("init_seed",), True, ("seed",))},
    "ESUC": {"txt2img": ((), True, ("sketch",)), "img2img": (("image_in",), True, ("sketch",))},
}


def test_registry_and_rows_agree() -> None:
    # the multi-ES protocols (fan-out over several ES) are tested in test_multi_es*.py
    assert set(EXPECTED_CROSSINGS) == {name for name, spec in PROTOCOLS.items() if not spec.multi_es}


def _stats(addr: str, link: str) -> dict[str, channel_pb2.DirectionStats]:
    with grpc.insecure_channel(addr) as ch:
        stats = channel_pb2_grpc.ChannelControlStub(ch).GetStats(channel_pb2.GetStatsRequest(), timeout=5)
    return {e.direction: e for e in stats.entries if e.link == link}


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("name", list(EXPECTED_CROSSINGS))
def test_protocol_through_proxy(inproc_stack, name: str, task: str) -> None:  # type: ignore[no-untyped-def]
    parts = inproc_stack.parts
    size = parts.geometry.image_size
    image_in = torch.linspace(0, 1, 3 * size * size).reshape(1, 3, size, size) if task == "img2img" else None
    ue_id = f"{name.lower()}-{task}"
    with EdgeClient(inproc_stack.proxy_addr, timeout_s=60, ue_id=ue_id) as client:
        r = generate(parts, client, "a small blue square", name, task, Params(seed=5, steps=2, strength=0.7), image_in)
    assert r.image.shape == (1, 3, size, size) and torch.isfinite(r.image).all()
    assert 0 <= float(r.image.min()) and float(r.image.max()) <= 1
    up_keys, prompt_up, down_keys = EXPECTED_CROSSINGS[name][task]
    predicted = protocol_overhead(name, task, parts.geometry)
    assert predicted.uplink_keys == up_keys and predicted.downlink_keys == down_keys and predicted.prompt_uplink == prompt_up
    assert r.uplink.symbols == predicted.uplink_symbols and r.downlink.symbols == predicted.downlink_symbols
    assert r.uplink.text_bytes == (len("a small blue square") if prompt_up else 0)
    stats = _stats(inproc_stack.proxy_addr, f"{ue_id}->es0")
    if name == "FULL-UE":
        assert stats == {} and r.uplink.transmissions == 0  # nothing crossed the air, not even an RPC
        return
    assert stats["uplink"].payload_bytes == r.uplink.payload_bytes == 4 * r.uplink.symbols
    assert stats["downlink"].payload_bytes == r.downlink.payload_bytes == 4 * r.downlink.symbols
    assert stats["uplink"].symbols == r.uplink.symbols and stats["downlink"].symbols == r.downlink.symbols
    def tensors(keys: tuple[str, ...]) -> int:  # over-the-air tensors: digital keys are bytes, not transmissions
        return len([k for k in keys if not k.endswith("(digital)")])

    assert stats["uplink"].transmissions == tensors(up_keys) and stats["downlink"].transmissions == tensors(down_keys)
    assert (r.uplink.digital_bytes > 0) == (tensors(up_keys) < len(up_keys))
    assert (r.downlink.digital_bytes > 0) == (tensors(down_keys) < len(down_keys))
    if name == "ESUC":
        assert r.sketch is not None and r.sketch.shape == (1, 3, size // 4, size // 4)


def test_compare_writes_panel_and_table(inproc_stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with EdgeClient(inproc_stack.proxy_addr, timeout_s=60, ue_id="comparer") as client:
        report = run_compare(inproc_stack.parts, client, "a red circle", "txt2img", Params(seed=1, steps=2), None,
                             tmp_path, 20.0, inproc_stack.proxy_addr)
    assert (tmp_path / "panel.png").exists() and (tmp_path / "overhead.json").exists()
    assert (tmp_path / "esuc-sketch.png").exists()
    rows = {r["protocol"]: r for r in report["rows"]}  # type: ignore[index]
    assert list(rows) == ["FULL-UE", "FULL-ES", "FULL-ES-PNG", "UIEG", "EIUG", "CIAG", "ESUC"]
    # the digital baseline at 20 dB: only the 8-bit rounding separates it from the ideal link's image
    png = rows["FULL-ES-PNG"]
    assert png["downlink"]["digital_bytes"] > 0 and png["downlink"]["symbols"] == 0
    assert png["psnr_vs_ideal_db"] > max(40.0, rows["FULL-ES"]["psnr_vs_ideal_db"])
    for r in rows.values():
        assert r["uplink"]["symbols"] + r["downlink"]["symbols"] == r["predicted_total_symbols"]
    assert rows["CIAG"]["downlink"]["snr_db"] == 20.0
    assert 0 < rows["CIAG"]["psnr_vs_ideal_db"] <= 100 and (tmp_path / "reference.png").exists()
    assert "CIAG" in report["table"]


def test_seed_codec_in_the_running_system(inproc_stack) -> None:  # type: ignore[no-untyped-def]
    parts = inproc_stack.parts
    assert parts.codec_rates() == [0.5]
    n = parts.geometry.latent_values
    with EdgeClient(inproc_stack.proxy_addr, timeout_s=60, ue_id="codec-ue") as client:
        r = generate(parts, client, "a red circle", "CIAG", params=Params(seed=1, steps=2, fc=0.5))
        assert r.downlink.symbols == round(0.5 * n) == protocol_overhead("CIAG", "txt2img", parts.geometry, 0.5).downlink_symbols
        size = parts.geometry.image_size
        r2 = generate(parts, client, "a red circle", "UIEG", "img2img", Params(seed=1, steps=2, fc=0.5),
                      torch.rand(1, 3, size, size))
        assert r2.uplink.symbols == round(0.5 * n) and r2.image.shape == (1, 3, size, size)
        with pytest.raises(grpc.RpcError) as err:
            generate(parts, client, "a red circle", "EIUG", params=Params(seed=1, steps=2, fc=0.3))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "no seed codec for fc=0.3" in err.value.details()
