"""Malformed requests to every RPC get INVALID_ARGUMENT (or the right status) and the daemon keeps serving."""

from __future__ import annotations

import math

import grpc
import numpy as np
import pytest
import torch

from shared.model.ops import ModelParts
from shared.pb import channel_pb2, channel_pb2_grpc, edge_pb2, edge_pb2_grpc
from shared.protocol.params import Params
from shared.wire import air
from ue_client.session import EdgeClient, generate


def _ciag_request(parts: ModelParts, **changes: object) -> edge_pb2.SegmentRequest:
    g = parts.geometry
    cond = torch.randn(*g.shape_of("cond"))
    req = edge_pb2.SegmentRequest(
        protocol="CIAG", segment=1, task="txt2img", tensors=[air.to_air("cond", cond)],
        params=edge_pb2.GenerationParams(seed=1, steps=2),
    )
    for k, v in changes.items():
        if k == "tensor":
            req.tensors[0].CopyFrom(v)  # type: ignore[arg-type]
        elif k == "params":
            req.params.CopyFrom(v)  # type: ignore[arg-type]
        else:
            setattr(req, k, v)
    return req


def _bad_tensor(parts: ModelParts, how: str) -> object:
    shape = parts.geometry.shape_of("cond")
    t = air.to_air("cond", torch.zeros(*shape))
    n = int(np.prod(shape))
    if how == "shape":
        t.ClearField("shape")
        t.shape.extend([1, n])
    elif how == "dtype":
        t.dtype = "float64"
    elif how == "bytes":
        t.data = t.data[:-3]
    elif how == "nan":
        t.data = np.where(np.arange(n) == 5, np.nan, 0).astype("<f4").tobytes()
    elif how == "inf":
        t.data = np.full(n, -np.inf, "<f4").tobytes()
    elif how == "name":
        t.name = "latent"
    return t


CASES = {
    "unknown protocol": ({"protocol": "NOPE"}, "unknown protocol 'NOPE'"),
    "unknown task": ({"task": "video"}, "unknown task 'video'"),
    "UE segment": ({"segment": 0}, "not an ES segment"),
    "segment out of range": ({"segment": 99}, "not an ES segment"),
    "prompt where none is sent": ({"prompt": "a red circle"}, "does not send the prompt"),
    "steps": ({"params": edge_pb2.GenerationParams(steps=100000)}, "steps must be at most"),
    "guidance NaN": ({"params": edge_pb2.GenerationParams(guidance=math.nan)}, "guidance must be"),
    "fc": ({"params": edge_pb2.GenerationParams(fc=3.0)}, "fc must be"),
    "strength": ({"params": edge_pb2.GenerationParams(strength=-1)}, "strength must be"),
}
TENSOR_CASES = {
    "shape": "expected shape", "dtype": "dtype 'float64'", "bytes": "needs", "nan": "NaN or infinite",
    "inf": "NaN or infinite", "name": "expects tensors",
}


@pytest.mark.parametrize("via", ["es", "proxy"])
def test_run_segment_rejects_bad_requests_and_keeps_serving(inproc_stack, via: str) -> None:  # type: ignore[no-untyped-def]
    parts = inproc_stack.parts
    addr = inproc_stack.es_addr if via == "es" else inproc_stack.proxy_addr
    with grpc.insecure_channel(addr) as ch:
        stub = edge_pb2_grpc.EdgeServiceStub(ch)
        requests = {name: (_ciag_request(parts, **kw), msg) for name, (kw, msg) in CASES.items()}
        requests |= {f"tensor {h}": (_ciag_request(parts, tensor=_bad_tensor(parts, h)), m) for h, m in TENSOR_CASES.items()}
        missing = _ciag_request(parts)
        del missing.tensors[:]
        requests["no tensor"] = (missing, "expects tensors")
        for name, (req, msg) in requests.items():
            with pytest.raises(grpc.RpcError) as err:
                stub.RunSegment(req, timeout=30)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
            assert msg in err.value.details(), (name, err.value.details())
        # the daemon still serves a valid request
        ok = stub.RunSegment(_ciag_request(parts), timeout=60)
        assert [t.name for t in ok.tensors] == ["seed"]
        assert stub.Describe(edge_pb2.DescribeRequest(), timeout=10).protocols
        # Probe checks its tensors too
        for how, msg in TENSOR_CASES.items():
            if how in ("name", "shape"):
                continue  # Probe echoes any well-formed, finite tensor of any name/shape
            with pytest.raises(grpc.RpcError) as err:
                stub.Probe(edge_pb2.ProbeRequest(tensors=[_bad_tensor(parts, how)]), timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and msg in err.value.details()
        echo = stub.Probe(edge_pb2.ProbeRequest(tensors=[air.to_air("x", torch.ones(3))]), timeout=10)
        assert air.from_air(echo.tensors[0]).tolist() == [1.0, 1.0, 1.0]


def test_prompt_checks_on_the_es(inproc_stack) -> None:  # type: ignore[no-untyped-def]
    with grpc.insecure_channel(inproc_stack.proxy_addr) as ch:
        stub = edge_pb2_grpc.EdgeServiceStub(ch)
        for prompt, msg in (("   ", "empty"), ("x" * 5000, "limit is 1000")):
            with pytest.raises(grpc.RpcError) as err:
                stub.RunSegment(edge_pb2.SegmentRequest(protocol="FULL-ES", segment=0, prompt=prompt), timeout=30)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and msg in err.value.details()


def test_oversize_message_is_refused_and_server_lives(inproc_stack) -> None:  # type: ignore[no-untyped-def]
    parts = inproc_stack.parts
    huge = air.to_air("cond", np.zeros(5 * 1024 * 1024 // 4, np.float32))  # 5 MiB > the ES's 4 MiB limit
    with grpc.insecure_channel(inproc_stack.es_addr, options=[("grpc.max_send_message_length", 64 << 20)]) as ch:
        stub = edge_pb2_grpc.EdgeServiceStub(ch)
        with pytest.raises(grpc.RpcError) as err:
            stub.RunSegment(_ciag_request(parts, tensor=huge), timeout=30)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert stub.RunSegment(_ciag_request(parts), timeout=60).tensors


def test_deadline_is_honoured(inproc_stack) -> None:  # type: ignore[no-untyped-def]
    parts = inproc_stack.parts
    with grpc.insecure_channel(inproc_stack.proxy_addr) as ch:
        stub = edge_pb2_grpc.EdgeServiceStub(ch)
        slow = _ciag_request(parts, params=edge_pb2.GenerationParams(steps=500))
        with pytest.raises(grpc.RpcError) as err:
            stub.RunSegment(slow, timeout=0.3)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert stub.RunSegment(_ciag_request(parts), timeout=60).tensors


def test_channel_control_rejects_bad_settings(inproc_stack) -> None:  # type: ignore[no-untyped-def]
    with grpc.insecure_channel(inproc_stack.proxy_addr) as ch:
        ctl = channel_pb2_grpc.ChannelControlStub(ch)
        before = ctl.GetChannel(channel_pb2.GetChannelRequest(), timeout=5)
        P = channel_pb2.Profile
        bad = {
            "NaN SNR": (channel_pb2.SetChannelRequest(direction="uplink", custom=P(model="awgn", snr_db=math.nan)), "SNR must be a number"),
            "unknown model": (channel_pb2.SetChannelRequest(custom=P(model="wormhole", snr_db=3)), "unknown channel model"),
            "huge SNR": (channel_pb2.SetChannelRequest(custom=P(model="awgn", snr_db=1e9)), "outside the supported range"),
            "unknown profile": (channel_pb2.SetChannelRequest(profile="moon-bounce"), "unknown profile 'moon-bounce'"),
            "negative K": (channel_pb2.SetChannelRequest(custom=P(model="rician", snr_db=3, k_factor=-1)), "Rician K"),
            "bad direction": (channel_pb2.SetChannelRequest(direction="sideways", profile="ideal"), "direction must be"),
            "no setting": (channel_pb2.SetChannelRequest(direction="both"), "say which profile"),
        }
        for name, (req, msg) in bad.items():
            with pytest.raises(grpc.RpcError) as err:
                ctl.SetChannel(req, timeout=5)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
            assert msg in err.value.details(), (name, err.value.details())
        for req in (channel_pb2.CSIRequest(link="ue->es0", direction="sideways", blocks=2),
                    channel_pb2.CSIRequest(link="ue->es0", direction="downlink", blocks=0)):
            with pytest.raises(grpc.RpcError) as err:
                ctl.GetCSI(req, timeout=5)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert ctl.GetChannel(channel_pb2.GetChannelRequest(), timeout=5) == before  # nothing half-applied
    # a bad UE id or upstream name in the headers
    with grpc.insecure_channel(inproc_stack.proxy_addr) as ch:
        stub = edge_pb2_grpc.EdgeServiceStub(ch)
        for md, msg in (((("meg-ue", "bad id!"),), "UE id"), ((("meg-es", "es9"),), "no upstream edge server named 'es9'")):
            with pytest.raises(grpc.RpcError) as err:
                stub.Describe(edge_pb2.DescribeRequest(), timeout=5, metadata=md)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and msg in err.value.details()
        assert stub.Describe(edge_pb2.DescribeRequest(), timeout=5).protocols


def test_generation_through_proxy_after_errors(inproc_stack) -> None:  # type: ignore[no-untyped-def]
    with EdgeClient(inproc_stack.proxy_addr, timeout_s=60) as client:
        result = generate(inproc_stack.parts, client, "a red circle", "CIAG", params=Params(seed=3, steps=2))
    assert result.image.shape == (1, 3, 32, 32)
    assert result.uplink.channel == "ideal" and result.uplink.snr_db is None
