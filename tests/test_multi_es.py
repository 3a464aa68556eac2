"""Multi-ES pieces without processes: the cooperative windows, the plans of the five protocols, their overhead,
the pick scorer, and the ES's checks of a share."""

from __future__ import annotations

import grpc
import pytest
import torch

from shared.pb import edge_pb2, edge_pb2_grpc
from shared.protocol.geometry import SD_V1_5
from shared.protocol.plan import plan
from shared.protocol.registry import PROTOCOLS, get_protocol
from shared.protocol.stages import ProtocolError, each_es, ue, ue_gather
from shared.protocol.tiles import Share, ShareError, boundaries, crop, merge, seam_score, shares, weights
from ue_client.overhead import protocol_overhead
from ue_client.pick import Candidate, best, first, noise_sigma


@pytest.mark.parametrize("count, halo, width", [(2, 1, 8), (3, 2, 8), (2, 0, 8), (4, 4, 64), (2, 3, 5)])
def test_windows_cover_and_merge_back(count: int, halo: int, width: int) -> None:
    x = torch.randn(1, 4, 6, width * 8)  # aligned with a latent `width` wide, 8 px per column
    sl = shares(count, halo)
    parts = [crop(x, s, width) for s in sl]
    assert torch.allclose(merge(parts, sl, width), x, atol=1e-6)  # identical windows fuse to the original
    total = sum(torch.zeros(width * 8).index_add_(0, torch.arange(*[w * 8 for w in s.window(width)]), weights(s, width, 8))
                for s in sl)
    if all(2 * halo <= s.core(width)[1] - s.core(width)[0] for s in sl):
        assert torch.allclose(total, torch.ones(width * 8), atol=1e-5)  # cross-fade weights sum to one
    if halo == 0:
        assert torch.equal(torch.cat(parts, -1), x)


def test_share_checks() -> None:
    with pytest.raises(ShareError, match="not a valid ES share"):
        Share(2, 2).check(8)
    with pytest.raises(ShareError, match="do not fit"):
        Share(0, 9).check(8)
    assert Share(1, 2, 1).window(8) == (3, 8) and Share(0, 2, 1).window(8) == (0, 5)


def test_seam_score_sees_a_hard_edge() -> None:
    smooth = torch.linspace(0, 1, 64).expand(1, 3, 64, 64).clone()
    cut = smooth.clone()
    cut[..., 32:] += 0.3
    assert seam_score(smooth, boundaries(2, 8, 8)) == pytest.approx(1.0, rel=1e-3)
    assert seam_score(cut, boundaries(2, 8, 8)) > 10


@pytest.mark.parametrize(
    "name, fans, up, down",
    [("UIDG", ["UE", "each", "UE"], ("cond",), ("image",)), ("DIUG", ["each", "UE"], ("prompt",), ("seed",)),
     ("DSUC", ["each", "UE"], ("prompt",), ("sketch",)), ("UIDCG", ["UE", "share", "UE"], ("cond",), ("latent_part",)),
     ("DCSUC", ["share", "UE"], ("prompt",), ("sketch_part",))],
)
def test_multi_es_plans(name: str, fans: list[str], up: tuple[str, ...], down: tuple[str, ...]) -> None:
    _, stages = get_protocol(name, "txt2img")
    segments = plan(stages, "txt2img")
    assert [s.fan if s.actor == "ES" else "UE" for s in segments] == fans
    es = next(s for s in segments if s.actor == "ES")
    assert es.receives == up and es.returns == down and "share" not in es.receives
    assert PROTOCOLS[name].multi_es and PROTOCOLS[name].cooperative == (name in ("UIDCG", "DCSUC"))


def test_uidcg_img2img_sends_each_es_its_sub_seed_only() -> None:
    segments = plan(get_protocol("UIDCG", "img2img")[1], "img2img")
    es = next(s for s in segments if s.actor == "ES")
    assert es.fan == "share" and es.receives == ("init_part", "prompt") and es.returns == ("latent_part",)


def test_branches_must_be_gathered() -> None:
    with pytest.raises(ProtocolError, match="branches are still open"):
        plan((each_es("encode_prompt", "prompt", "cond"), ue("decode", "cond", "image")), "txt2img")
    with pytest.raises(ProtocolError, match="none are open"):
        plan((ue("encode_prompt", "prompt", "cond"), ue_gather("pick", "cond share", "image")), "txt2img")


def test_multi_es_overhead_sd_v1_5() -> None:
    uidg = protocol_overhead("UIDG", "txt2img", SD_V1_5, n_es=2)
    assert uidg.uplink_symbols == 2 * 77 * 768 and uidg.downlink_symbols == 2 * 512 * 512 * 3
    assert protocol_overhead("UIDG", "txt2img", SD_V1_5, n_es=2, broadcast=True).uplink_symbols == 77 * 768
    # cooperative: two windows of 32 + 8 columns of a 64-column latent (halo 8) come back
    uidcg = protocol_overhead("UIDCG", "txt2img", SD_V1_5, n_es=2)
    assert uidcg.downlink_symbols == 2 * 4 * 64 * 40
    assert protocol_overhead("UIDCG", "img2img", SD_V1_5, n_es=2, halo=0).uplink_symbols == 4 * 64 * 64
    dcsuc = protocol_overhead("DCSUC", "txt2img", SD_V1_5, n_es=2, halo=0)
    assert dcsuc.downlink_symbols == protocol_overhead("ESUC", "txt2img", SD_V1_5).downlink_symbols


def test_best_picks_the_least_noisy_candidate() -> None:
    g = torch.Generator().manual_seed(0)
    clean = torch.linspace(0.2, 0.8, 32).expand(1, 3, 32, 32).clone()
    noisy = (clean + 0.1 * torch.randn(clean.shape, generator=g)).clamp(0, 1)
    assert noise_sigma(clean) < 0.01 < noise_sigma(noisy)
    cands = [Candidate("es0", 0, "image", noisy, 0.5), Candidate("es1", 1, "image", clean, 0.9)]
    assert best(cands) == 1 and first(cands) == 0 and cands[1].score is not None


def test_es_rejects_a_bad_share(inproc_stack: object) -> None:
    with grpc.insecure_channel(inproc_stack.es_addr) as ch:  # type: ignore[attr-defined]
        stub = edge_pb2_grpc.EdgeServiceStub(ch)
        base = {"protocol": "DCSUC", "segment": 0, "task": "txt2img", "prompt": "a red circle"}
        with pytest.raises(grpc.RpcError) as missing:
            stub.RunSegment(edge_pb2.SegmentRequest(**base), timeout=30)
        assert missing.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "share" in missing.value.details()
        with pytest.raises(grpc.RpcError) as bad:
            stub.RunSegment(edge_pb2.SegmentRequest(**base, share=edge_pb2.Share(index=3, count=2)), timeout=30)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "not a valid ES share" in bad.value.details()
        with pytest.raises(grpc.RpcError) as single:
            stub.RunSegment(edge_pb2.SegmentRequest(protocol="ESUC", segment=0, task="txt2img", prompt="a red circle",
                                                    share=edge_pb2.Share(index=0, count=2)), timeout=30)
        assert single.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "single-ES" in single.value.details()


def test_ask_shows_a_contact_sheet_then_takes_the_answer(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    from pathlib import Path

    from ue_client.multi import ask
    from ue_client.pick import chooser

    answers = iter(["7", "x", "1"])  # out of range, not a number, then a choice
    monkeypatch.setattr("builtins.input", lambda _prompt="": next(answers))
    sketches = [Candidate(f"es{i}", i, "sketch", torch.rand(1, 3, 16, 16), 0.1 * i) for i in range(3)]
    out = Path(str(tmp_path)) / "dsuc.png"
    assert ask(out)(sketches) == 1
    assert (out.parent / "dsuc-candidates.png").exists()
    with pytest.raises(ValueError, match="first, best or an ES number"):
        chooser("worst")


def test_split_schedule_equals_the_whole_run(random_model_dir: object) -> None:
    """Steps [0, k) then [k, n) from that latent (the cooperative shared head) is the n-step run, exactly."""
    from shared.model.denoise import DenoiseJob, DenoiseModel, denoise_alone
    from shared.model.ops import ModelParts

    parts = ModelParts.load(str(random_model_dir), "cpu")
    model = DenoiseModel.from_parts(parts)
    cond = parts.embed("a red circle")
    whole = denoise_alone(model, DenoiseJob(cond=cond, steps=5, guidance=4.0, seed=3))
    head = denoise_alone(model, DenoiseJob(cond=cond, steps=5, guidance=4.0, seed=3, end_step=2))
    tail = denoise_alone(model, DenoiseJob(cond=cond, steps=5, guidance=4.0, seed=3, noise=head, start_step=2))
    assert torch.equal(tail, whole)
    assert not torch.allclose(head, whole, atol=1e-3)
    for bad in ({"start_step": 5}, {"end_step": 0}, {"start_step": 2, "end_step": 2}, {"start_step": 1}):
        with pytest.raises(ValueError):
            denoise_alone(model, DenoiseJob(cond=cond, steps=5, guidance=4.0, **bad))  # type: ignore[arg-type]


def test_shared_head_windows(random_model_dir: object) -> None:
    """One share with a head is the single-ES latent; two shares with a head start their windows from the same
    full-latent head (so a window's tail equals the whole run's tail cropped only where the UNet saw the same)."""
    from shared.model.ops import ModelOps, ModelParts
    from shared.protocol.params import Params

    parts = ModelParts.load(str(random_model_dir), "cpu")
    w = parts.geometry.latent_size
    ops = ModelOps(parts, Params(seed=5, steps=4))
    (cond,) = ops.call("encode_prompt", "a blue square")
    (single,) = ops.call("denoise", cond)
    (one,) = ops.call("denoise_window", cond, Share(0, 1, 2, 0.5))
    assert torch.equal(one, single)
    assert Share(0, 2, 1, 0.5).head_steps(4) == 2 and Share(0, 1, 1, 0.5).head_steps(4) == 0
    assert Share(0, 2, 1, 0.99).head_steps(4) == 3  # the window always keeps a step
    no_head = [ops.call("denoise_window", cond, s)[0] for s in shares(2, 1)]
    headed = [ops.call("denoise_window", cond, s)[0] for s in shares(2, 1, 0.75)]
    err = [float((merge(p, shares(2, 1), w) - single).abs().mean()) for p in (no_head, headed)]
    assert err[1] < err[0]  # three of four steps on the whole latent: closer to the single-ES latent
    with pytest.raises(ShareError, match="shared head"):
        Share(0, 2, 1, 1.0).check(w)
