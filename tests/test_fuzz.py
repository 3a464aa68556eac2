"""Property-based fuzzing (hypothesis) of every RPC, on the ES directly and through the proxy: whatever
the body, the answer is a deliberate status (never UNKNOWN or INTERNAL) and the daemons keep serving.

Messages are drawn from their descriptors (every field, any value of its type, nested messages, repeated
fields), with the strings that matter (protocols, tensor names, dtypes, links, directions) drawn from the
values a server knows half of the time so that the checks past the first one are reached; tensors are
sometimes coherent (the right byte count, NaN/Inf included). Raw bytes are fuzzed as well."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.pb import air_pb2, channel_pb2, edge_pb2, edge_pb2_grpc
from shared.protocol.registry import PROTOCOLS

EDGE = edge_pb2.DESCRIPTOR.services_by_name["EdgeService"]
CONTROL = channel_pb2.DESCRIPTOR.services_by_name["ChannelControl"]
#: What a fuzzed call may end with: a deliberate answer. UNKNOWN / INTERNAL would be a bug.
ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
           grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)

KNOWN: dict[str, list[str]] = {
    "protocol": [*PROTOCOLS, "ciag", "NOPE", ""],
    "task": ["txt2img", "img2img", "video", ""],
    "name": ["cond", "seed", "latent", "image", "image_in", "sketch", "x", ""],
    "dtype": ["float32", "float16", "float64", "int8", ""],
    "link": ["ue->es0", "ue->es9", "->", "a->b->c", "ue->es0\n", "", "x" * 70 + "->es0"],
    "direction": ["uplink", "downlink", "both", "sideways", ""],
    "profile": ["ideal", "awgn-10", "rayleigh-10", "moon-bounce", ""],
    "model": ["ideal", "awgn", "rayleigh", "rician", "wormhole", ""],
}
INT_RANGES = {
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1), FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1), FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
}
SMALL = {"segment": 6, "steps": 600, "blocks": 70_000, "block_length": 64, "coherence_symbols": 300, "index": 4,
         "count": 4, "halo": 4}


def _scalar(f: FieldDescriptor) -> st.SearchStrategy[object]:
    if f.type == FieldDescriptor.TYPE_STRING:
        text = st.text(max_size=40)
        return st.one_of(st.sampled_from(KNOWN[f.name]), text) if f.name in KNOWN else text
    if f.type == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=300)
    if f.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if f.type == FieldDescriptor.TYPE_FLOAT:
        return st.floats(width=32)
    if f.type == FieldDescriptor.TYPE_DOUBLE:
        return st.floats()
    lo, hi = INT_RANGES[f.type]
    full = st.integers(lo, hi)
    if f.name in SMALL:
        return st.one_of(st.integers(max(lo, -1), SMALL[f.name]), full)
    if f.name == "shape":
        return st.one_of(st.integers(-2, 40), st.sampled_from([2**32, 2**62]), full)
    return full


def _coherent_tensor() -> st.SearchStrategy[air_pb2.AirTensor]:
    """A tensor whose bytes match its shape (values may be NaN/Inf): gets past the byte-count check."""
    @st.composite
    def draw(d: st.DrawFn) -> air_pb2.AirTensor:
        shape = d(st.lists(st.integers(1, 8), min_size=1, max_size=4))
        values = d(st.lists(st.floats(width=32), min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
        return air_pb2.AirTensor(name=d(st.sampled_from(KNOWN["name"])), shape=shape, dtype="float32",
                                 data=np.asarray(values, "<f4").tobytes())

    return draw()


#: Shapes that overflow an int64 element count, have more than 64 dims, or are empty/negative.
PATHOLOGICAL_SHAPES = [[2**32, 2**32], [2**62, 4], [2**40] * 3, [1] * 100, [1] * 65, [-1], [0], []]


def _pathological_tensor() -> st.SearchStrategy[air_pb2.AirTensor]:
    return st.builds(lambda name, shape, data: air_pb2.AirTensor(name=name, shape=shape, dtype="float32", data=data),
                     st.sampled_from(KNOWN["name"]), st.sampled_from(PATHOLOGICAL_SHAPES), st.sampled_from([b"", b"\0" * 4]))


def messages(desc: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Any message of type ``desc``: each field set or not, to any value of its type (nested up to depth 3)."""
    cls = getattr(edge_pb2, desc.name, None) or getattr(channel_pb2, desc.name, None) or getattr(air_pb2, desc.name)
    if desc.full_name == air_pb2.AirTensor.DESCRIPTOR.full_name and depth > 0:
        generic = _generic(desc, cls, depth)
        return st.one_of(generic, _coherent_tensor(), _pathological_tensor())
    return _generic(desc, cls, depth)


def _generic(desc: Descriptor, cls: type, depth: int) -> st.SearchStrategy[Message]:
    @st.composite
    def draw(d: st.DrawFn) -> Message:
        msg = cls()
        for f in desc.fields:
            if not d(st.booleans()):
                continue
            if f.type == FieldDescriptor.TYPE_MESSAGE and f.message_type.GetOptions().map_entry:
                key, value = f.message_type.fields_by_name["key"], f.message_type.fields_by_name["value"]
                if value.type != FieldDescriptor.TYPE_MESSAGE:  # a map of scalars (digital payloads: name -> bytes)
                    getattr(msg, f.name).update(d(st.dictionaries(_scalar(key), _scalar(value), max_size=3)))
                continue
            if f.type == FieldDescriptor.TYPE_MESSAGE:
                if depth >= 3:
                    continue
                sub = messages(f.message_type, depth + 1)
                if f.is_repeated:
                    getattr(msg, f.name).extend(d(st.lists(sub, max_size=3)))
                else:
                    getattr(msg, f.name).CopyFrom(d(sub))
            elif f.is_repeated:
                getattr(msg, f.name).extend(d(st.lists(_scalar(f), max_size=5)))
            else:
                setattr(msg, f.name, d(_scalar(f)))
        return msg

    return draw()


def _call(addr: str, service: str, method: object, body: bytes) -> tuple[grpc.StatusCode, bytes]:
    with grpc.insecure_channel(addr) as ch:
        try:
            return grpc.StatusCode.OK, ch.unary_unary(f"/{service}/{method.name}")(body, timeout=5)  # type: ignore[attr-defined]
        except grpc.RpcError as exc:
            return exc.code(), b""  # type: ignore[no-any-return]


def _check_reply(method: object, reply: bytes) -> None:
    """What an OK answer promises: Probe echoes only well-formed, finite tensors."""
    if method.name == "Probe":  # type: ignore[attr-defined]
        from shared.wire import air

        for t in edge_pb2.ProbeResponse.FromString(reply).tensors:
            air.air_array(t, finite=True)


def _alive(addr: str) -> None:
    with grpc.insecure_channel(addr) as ch:
        assert edge_pb2_grpc.EdgeServiceStub(ch).Describe(edge_pb2.DescribeRequest(), timeout=10).protocols


TARGETS = [(EDGE, m, via) for m in EDGE.methods for via in ("es", "proxy")] + [(CONTROL, m, "proxy") for m in CONTROL.methods]


@pytest.mark.parametrize("service, method, via", TARGETS, ids=[f"{s.name}.{m.name}@{v}" for s, m, v in TARGETS])
def test_fuzzed_messages_get_a_deliberate_status(inproc_stack, service, method, via: str) -> None:  # type: ignore[no-untyped-def]
    addr = inproc_stack.es_addr if via == "es" else inproc_stack.proxy_addr

    @FUZZ
    @given(msg=messages(method.input_type))
    def check(msg: Message) -> None:
        code, reply = _call(addr, service.full_name, method, msg.SerializeToString())
        assert code in ALLOWED, (code, msg)
        _check_reply(method, reply)

    check()
    _alive(addr)


@pytest.mark.parametrize("service, method, via", TARGETS, ids=[f"{s.name}.{m.name}@{v}" for s, m, v in TARGETS])
def test_fuzzed_bytes_get_a_deliberate_status(inproc_stack, service, method, via: str) -> None:  # type: ignore[no-untyped-def]
    addr = inproc_stack.es_addr if via == "es" else inproc_stack.proxy_addr

    @FUZZ
    @given(body=st.binary(max_size=200))
    def check(body: bytes) -> None:
        code, reply = _call(addr, service.full_name, method, body)
        assert code in ALLOWED, (code, body)
        _check_reply(method, reply)

    check()
    _alive(addr)
