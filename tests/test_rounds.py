"""Cooperative rounds: the schedule cut into rounds, the plan written out per round, the ES keeping what
later rounds use, and the windows fused between rounds (shared.protocol.tiles, shared.protocol.stages, edge_server)."""

from __future__ import annotations

import grpc
import pytest
import torch

from edge_server.sessions import SessionGone, Sessions
from shared.pb import edge_pb2, edge_pb2_grpc
from shared.protocol.geometry import SD_V1_5
from shared.protocol.plan import plan, unroll
from shared.protocol.registry import FUSE_ROUND, get_protocol
from shared.protocol.schedule import cooperative_schedule, first_step
from shared.protocol.stages import ProtocolError
from shared.protocol.tiles import Share, ShareError, crop, merge
from shared.wire import air
from ue_client.overhead import cooperative_rounds, protocol_overhead


def test_schedule_cuts_the_steps_into_rounds() -> None:
    assert Share(0, 2).schedule(25) == [(0, 25)]  # sync 0: one round, each window alone to the end
    assert Share(0, 2, sync=5).schedule(25) == [(0, 5), (5, 10), (10, 15), (15, 20), (20, 25)]
    assert Share(0, 2, sync=1).schedule(3) == [(0, 1), (1, 2), (2, 3)]
    assert Share(0, 2, sync=10).schedule(25) == [(0, 10), (10, 20), (20, 25)]
    # a shared head belongs to round 0; the rounds start after it
    assert Share(0, 2, head=0.4, sync=5).schedule(25) == [(0, 15), (15, 20), (20, 25)]
    # img2img starts where its strength enters the schedule (as diffusers' pipeline does); no head there
    assert first_step(25, 0.6) == 10 and first_step(25, 0.0) == 10 and first_step(25, 0.6, img2img=False) == 0
    assert cooperative_schedule(25, 0.6, Share(0, 2, head=0.8, sync=5), img2img=True) == [(10, 15), (15, 20), (20, 25)]
    with pytest.raises(ValueError, match="runs no denoising step"):
        cooperative_schedule(2, 0.2, Share(0, 2, sync=1), img2img=True)
    with pytest.raises(ShareError, match="sync every"):
        Share(0, 2, sync=-1).check(8)


def test_plan_writes_the_round_out_and_sends_cond_once() -> None:
    stages = get_protocol("UIDCG", "txt2img")[1]
    assert unroll(stages, 1) == tuple(s for s in stages if not s.repeat)  # one round: the body is not there
    segs = plan(stages, "txt2img", rounds=4)
    es = [s for s in segs if s.actor == "ES"]
    assert len(es) == 4 and all(s.fan == "share" for s in es)
    assert es[0].receives == ("cond",) and es[0].held == ()
    for i, s in enumerate(es[1:], start=1):  # later rounds: only the window of the fused latent goes up
        assert s.receives == ("latent_in",) and s.held == ("cond",) and s.returns == ("latent_part",)
        assert {st.round for st in s.stages} == {i}
    # the UE gets every round's windows and sends every round's cut: a key made anew crosses anew
    ue = [s for s in segs if s.actor == "UE"]
    assert [s.receives for s in ue[1:]] == [("latent_part",)] * 4
    assert [st.op for st in FUSE_ROUND] == ["merge", "window", "denoise_round"]
    # DCSUC: the prompt goes up once, the sketches come down once, at the end
    dcsuc = [s for s in plan(get_protocol("DCSUC", "txt2img")[1], "txt2img", rounds=3) if s.actor == "ES"]
    assert [s.receives for s in dcsuc] == [("prompt",), ("latent_in",), ("latent_in",)]
    assert [s.returns for s in dcsuc] == [("latent_part",), ("latent_part",), ("sketch_part",)]
    with pytest.raises(ProtocolError, match="at least one round"):
        plan(stages, "txt2img", rounds=0)


def test_overhead_counts_every_round() -> None:
    one = protocol_overhead("UIDCG", "txt2img", SD_V1_5, n_es=2, rounds=1)
    five = protocol_overhead("UIDCG", "txt2img", SD_V1_5, n_es=2, rounds=5)
    window = 4 * 64 * 40  # halo 8 of a 64-column latent: 40 columns per window
    assert five.downlink_symbols - one.downlink_symbols == 4 * 2 * window  # 4 more windows down per ES
    assert five.uplink_symbols - one.uplink_symbols == 4 * 2 * window  # and 4 fused windows up per ES
    assert cooperative_rounds(25) == 5 and cooperative_rounds(25, 1) == 25 and cooperative_rounds(25, 0) == 1
    assert cooperative_rounds(25, 1, "img2img") == 15


def test_sessions_expire_refuse_when_full_and_say_what_is_missing() -> None:
    from edge_server.sessions import SessionsFull

    now = [0.0]  # a virtual clock: expiry is exact, whatever the machine's load
    s = Sessions(ttl_s=0.2, max_sessions=2, clock=lambda: now[0])
    s.keep(("r1", "UIDCG", "txt2img", 0), {"cond": 1})
    assert s.take(("r1", "UIDCG", "txt2img", 0), ("cond",)) == {"cond": 1}
    with pytest.raises(SessionGone, match=r"does not hold \['latent'\]"):
        s.take(("r1", "UIDCG", "txt2img", 0), ("latent",))
    s.keep("a", {"x": 1}, owner="other")
    with pytest.raises(SessionsFull, match="no room"):  # full of live sessions: nobody else's is evicted
        s.keep("b", {"x": 2}, owner="third")
    assert s.take(("r1", "UIDCG", "txt2img", 0), ("cond",)) == {"cond": 1}
    now[0] = 0.199
    with pytest.raises(SessionsFull):  # not yet expired
        s.keep("b", {"x": 2}, owner="third")
    now[0] = 0.3
    s.keep("b", {"x": 2})  # the others expired: room again
    with pytest.raises(SessionGone, match="holds nothing of generation r1"):
        s.take(("r1", "UIDCG", "txt2img", 0), ("cond",))
    assert len(s) == 1
    s.drop("b")
    assert len(s) == 0


def _round_request(stub: edge_pb2_grpc.EdgeServiceStub, request_id: str, segment: int, tensors: list[object],
                   steps: int = 3) -> edge_pb2.SegmentResponse:
    return stub.RunSegment(edge_pb2.SegmentRequest(
        protocol="UIDCG", segment=segment, task="txt2img", request_id=request_id, tensors=tensors,  # type: ignore[arg-type]
        params=edge_pb2.GenerationParams(seed=1, steps=steps),
        share=edge_pb2.Share(index=0, count=2, halo=1, sync=1)), timeout=60)


def test_a_round_needs_its_generation_on_that_es(inproc_stack: object) -> None:
    """Round 1 without round 0 on this ES is FAILED_PRECONDITION (not UNKNOWN), without a request_id
    INVALID_ARGUMENT; after round 0 the same round runs, and the ES keeps serving."""
    parts = inproc_stack.parts  # type: ignore[attr-defined]
    g = parts.geometry
    share = Share(0, 2, 1, sync=1)
    x0, x1 = share.window(g.latent_size)
    latent_in = air.to_air("latent_in", torch.randn(1, g.latent_channels, g.latent_size, x1 - x0))
    cond = air.to_air("cond", parts.embed("a red circle"))
    with grpc.insecure_channel(inproc_stack.es_addr) as ch:  # type: ignore[attr-defined]
        stub = edge_pb2_grpc.EdgeServiceStub(ch)
        with pytest.raises(grpc.RpcError) as gone:
            _round_request(stub, "never-started", 3, [latent_in])
        assert gone.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "holds nothing of generation never-started" in gone.value.details()
        assert "run the generation again" in gone.value.details()
        with pytest.raises(grpc.RpcError) as anonymous:
            _round_request(stub, "", 3, [latent_in])
        assert anonymous.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "request_id" in anonymous.value.details()
        first = _round_request(stub, "gen-1", 1, [cond])  # round 0: cond up, the window down
        assert [t.name for t in first.tensors] == ["latent_part"]
        second = _round_request(stub, "gen-1", 3, [latent_in])  # round 1: only the fused window up
        assert [t.name for t in second.tensors] == ["latent_part"]
        assert list(second.tensors[0].shape) == [1, g.latent_channels, g.latent_size, x1 - x0]


def test_fused_rounds_make_the_windows_agree(random_model_dir: object) -> None:
    """Between rounds the UE fuses the windows, so every round starts from one latent: each window of the
    result is (to rounding) that window of the merge, and with one share the rounds are the whole run."""
    from shared.model.ops import ModelOps, ModelParts
    from shared.protocol.params import Params

    parts = ModelParts.load(str(random_model_dir), "cpu")
    w = parts.geometry.latent_size
    ops = ModelOps(parts, Params(seed=3, steps=4))
    cond = parts.embed("a blue square")

    def run(share_list: list[Share]) -> torch.Tensor:
        windows = [ops.op_denoise_window(cond, s, 0)[0] for s in share_list]
        for r in range(1, len(share_list[0].schedule(4))):
            fused = merge(windows, share_list, w)
            windows = [ops.op_denoise_round(cond, s, r, crop(fused, s, w))[0] for s in share_list]
        return merge(windows, share_list, w)

    whole = run([Share(0, 1)])
    assert torch.allclose(run([Share(0, 1, sync=1)]), whole, atol=1e-4)  # 4 rounds of one step = one run of 4
    fused = run([Share(i, 2, 1, sync=1) for i in range(2)])
    alone = run([Share(i, 2, 1) for i in range(2)])
    assert fused.shape == whole.shape and bool(torch.isfinite(fused).all())
    assert not torch.allclose(fused, alone)  # the fusion changed the trajectory


@pytest.mark.parametrize("task", ["txt2img", "img2img"])
def test_one_es_in_rounds_equals_the_single_es_image(random_model_dir: object, task: str) -> None:
    """A cooperative generation with one ES, cut into rounds, is the single-ES generation (issue 23 item 11:
    img2img's later rounds used to run txt2img's step ranges — at 25 steps, strength 0.6, sync 5 the rounds ran
    (10,15), (5,10), (10,15) and returned a part-denoised image)."""
    from shared.model.ops import ModelOps, ModelParts
    from shared.protocol.params import Params

    parts = ModelParts.load(str(random_model_dir), "cpu")
    g, w = parts.geometry, parts.geometry.latent_size
    params = Params(seed=4, steps=25, strength=0.6)
    ops = ModelOps(parts, params, task=task)
    cond = parts.embed("a green triangle")
    init = None
    if task == "img2img":
        (init,) = ops.op_encode_image(torch.rand(1, 3, g.image_size, g.image_size,
                                                 generator=torch.Generator().manual_seed(1)))
    (single,) = ops.op_denoise(cond, init)  # what FULL-ES / one ES alone makes
    share = Share(0, 1, sync=5)
    rounds = cooperative_schedule(25, 0.6, share, task == "img2img")
    assert len(rounds) == (3 if task == "img2img" else 5)
    (part,) = ops.op_denoise_window(cond, share, 0, init)
    for r in range(1, len(rounds)):
        (part,) = ops.op_denoise_round(cond, share, r, crop(merge([part], [share], w), share, w))
    torch.testing.assert_close(part, single, rtol=1e-4, atol=1e-4)
