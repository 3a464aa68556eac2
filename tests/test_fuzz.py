"""Property-based fuzzing (hypothesis) of every RPC, on the ES directly and through the proxy: whatever
the body, the answer is a deliberate status (never UNKNOWN or INTERNAL) and the daemons keep serving.

Messages are drawn from their descriptors (every field, any value of its type, nested messages, repeated
fields), with the strings that matter (protocols, tensor names, dtypes, links, directions) drawn from the
values a server knows half of the time so that the checks past the first one are reached; tensors are
sometimes coherent (the right byte count, NaN/Inf included). Raw bytes are fuzzed as well."""

from __future__ import annotations

import math
from collections.abc import Iterator

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


# --- issue 23 "Done when": long names, reused ids, huge powers and values, many names ------------------------------
#: Header values (printable ASCII, as gRPC metadata must be) at and past the limits that matter.
LONG = ["u" * 64, "u" * 65, "u" * 128, "u" * 129, "e" * 4000, "ue", "es0", "", "a b", "ü".encode().hex()]
HEADER_TEXT = st.one_of(st.sampled_from(LONG), st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=300))


def _with_headers(addr: str, method: str, body: bytes, md: tuple[tuple[str, str], ...]) -> grpc.RpcError | bytes:
    with grpc.insecure_channel(addr) as ch:
        try:
            return ch.unary_unary(f"/{EDGE.full_name}/{method}")(body, timeout=10, metadata=md)  # type: ignore[no-any-return]
        except grpc.RpcError as exc:
            return exc


@pytest.mark.parametrize("via", ["es", "proxy"])
def test_fuzzed_ue_es_and_request_id_headers_get_the_right_status(inproc_stack, via: str) -> None:  # type: ignore[no-untyped-def]
    """UE ids, ES names and request ids of any length and character: through the proxy a UE id that is not 1-64 of
    ``[A-Za-z0-9_.:-]`` or an ES it does not know is INVALID_ARGUMENT (its message bounded, never the whole name);
    everything else is served. The ES itself takes any header for a Describe."""
    from channel_emulator.link import NAME

    addr = inproc_stack.es_addr if via == "es" else inproc_stack.proxy_addr

    @FUZZ
    @given(ue=st.none() | HEADER_TEXT, es=st.none() | st.just("es0") | HEADER_TEXT, rid=st.none() | HEADER_TEXT)
    def check(ue: str | None, es: str | None, rid: str | None) -> None:
        md = tuple((k, v) for k, v in (("meg-ue", ue), ("meg-es", es), ("meg-request-id", rid)) if v is not None)
        got = _with_headers(addr, "Describe", b"", md)
        ok = via == "es" or ((ue is None or bool(NAME.fullmatch(ue))) and es in (None, "", "es0"))  # "": the default
        if ok:
            assert isinstance(got, bytes), (md, got)
        else:
            assert isinstance(got, grpc.RpcError) and got.code() == grpc.StatusCode.INVALID_ARGUMENT, (md, got)
            assert len(got.details() or "") < 400, got.details()

    check()
    _alive(addr)


def _segment(parts: object, request_id: str, seed: int = 1) -> bytes:
    from shared.wire import air

    cond = parts.embed("a red circle")  # type: ignore[attr-defined]
    return edge_pb2.SegmentRequest(protocol="CIAG", segment=1, task="txt2img", tensors=[air.to_air("cond", cond)],
                                   request_id=request_id, params=edge_pb2.GenerationParams(seed=seed, steps=2)
                                   ).SerializeToString()


def test_request_ids_at_and_past_their_limit_and_reused_by_another_ue(inproc_stack) -> None:  # type: ignore[no-untyped-def]
    """Through the proxy: a request_id of 128 characters is served, 129 or 10,000 are INVALID_ARGUMENT; another UE
    reusing an id gets its own run; the same UE reusing it with other parameters is ALREADY_EXISTS."""
    addr = inproc_stack.proxy_addr
    parts = inproc_stack.parts
    rid = "r" * 128
    assert isinstance(_with_headers(addr, "RunSegment", _segment(parts, rid), (("meg-ue", "fuzz-a"),)), bytes)
    for bad in ("r" * 129, "r" * 10_000):
        err = _with_headers(addr, "RunSegment", _segment(parts, bad), (("meg-ue", "fuzz-a"),))
        assert isinstance(err, grpc.RpcError) and err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
        assert "at most 128" in (err.details() or "") and len(err.details() or "") < 400
    other = _with_headers(addr, "RunSegment", _segment(parts, rid, seed=7), (("meg-ue", "fuzz-b"),))
    assert isinstance(other, bytes), other  # b's run, not a's answer nor a conflict
    again = _with_headers(addr, "RunSegment", _segment(parts, rid, seed=7), (("meg-ue", "fuzz-a"),))
    assert isinstance(again, grpc.RpcError) and again.code() == grpc.StatusCode.ALREADY_EXISTS, again
    _alive(addr)


@st.composite
def _powered_tensor(d: st.DrawFn) -> tuple[edge_pb2.ProbeRequest, bool]:
    """A tensor of huge (or ordinary) finite values with a power allocation of huge, NaN, Inf or negative entries;
    and whether the allocation is valid (finite, >= 0, one entry per block)."""
    from shared.wire import air

    n = d(st.integers(1, 600))
    values = d(st.sampled_from([1e30, -1e30, 3.4e38, 1e-38, 0.0, 1.0]))
    x = np.random.default_rng(n).standard_normal(n).astype(np.float64) * values
    x = np.clip(x, -3.4e38, 3.4e38).astype(np.float32)
    t = air.to_air("x", x)
    length = d(st.sampled_from([0, 1, 2, 8, 288]))
    blocks = 1 if length == 0 else -(-n // length)
    power = d(st.lists(st.sampled_from([1e30, 1e38, math.inf, -math.inf, math.nan, -1.0, 0.0, 1.0, 1e-30]),
                       min_size=blocks, max_size=blocks + d(st.sampled_from([0, 0, 1]))))
    t.block_length = length
    t.block_power.extend(power)
    valid = len(power) == blocks and all(math.isfinite(p) and p >= 0 for p in power)
    return edge_pb2.ProbeRequest(tensors=[t]), valid


def _probe_power(addr: str, ue: str) -> None:
    @FUZZ
    @given(case=_powered_tensor())
    def check(case: tuple[edge_pb2.ProbeRequest, bool]) -> None:
        req, valid = case
        got = _with_headers(addr, "Probe", req.SerializeToString(), (("meg-ue", ue),))
        if valid:
            assert isinstance(got, bytes), got
            _check_reply(EDGE.methods_by_name["Probe"], got)  # the echo is finite: nothing came out NaN/Inf
        else:
            assert isinstance(got, grpc.RpcError) and got.code() == grpc.StatusCode.INVALID_ARGUMENT, got
            assert "power allocation" in (got.details() or ""), got.details()

    check()
    _alive(addr)


def test_huge_powers_and_values_on_a_fading_link(inproc_stack) -> None:  # type: ignore[no-untyped-def]
    """Power allocations of 1e30, NaN, Inf (and tensors of huge finite values) over a Rayleigh link: a bad allocation
    is INVALID_ARGUMENT naming it, a valid one (capped at P_MAX) is served and the echo stays finite."""
    from channel_emulator.link import LinkTable

    table: LinkTable = inproc_stack.link
    table.set("fuzz-power->es0", "both", table.book.get("rayleigh-10"))
    _probe_power(inproc_stack.proxy_addr, "fuzz-power")


@pytest.fixture(scope="module")
def trace_proxy(inproc_stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A second proxy in front of the same ES: every link on a per-PRB trace in a 5 MHz cell (account clock), so
    each tensor goes through the scheduler's grants and the replay."""
    from channel_emulator.cells import CellSet
    from channel_emulator.link import LinkTable
    from channel_emulator.proxy import create_proxy
    from channel_emulator.replay import REPLAY
    from shared.channel.cell import CellConfig
    from shared.channel.profiles import BUILTIN_PROFILES, ProfileBook, profile_from_mapping
    from shared.channel.trace import TraceMeta, normalise, save_trace
    from tests.conftest import BackgroundLoop

    rng = np.random.default_rng(0)
    h = (rng.normal(size=(50, 25)) + 1j * rng.normal(size=(50, 25))) / np.sqrt(2)
    path = save_trace(tmp_path_factory.mktemp("trace") / "t.npz", normalise(h),
                      TraceMeta(model="TDL-A", per="prb", numerology=0, bandwidth_mhz=5.0, prbs=25, generator="test"))
    profile = profile_from_mapping("fuzz-trace", {"trace": str(path), "snr_db": 10, "csi_error": 0.1})
    cells = CellSet({"default": CellConfig(bandwidth_mhz=5, numerology=0)}, "account")
    REPLAY.cell_of = cells.cell_of
    bg = BackgroundLoop()
    table = LinkTable(ProfileBook({**BUILTIN_PROFILES, profile.name: profile}, {}), profile, profile)
    proxy, port, _ = bg.run(create_proxy("127.0.0.1:0", {"es0": inproc_stack.es_addr}, table, cells=cells))  # type: ignore[misc]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        bg.run(proxy.stop(0))
        bg.close()
        REPLAY.cell_of = lambda es: None


def test_huge_powers_and_values_on_a_trace_link_in_a_cell(trace_proxy: str) -> None:
    """The same through trace replay on the scheduler's grants: the right status, a finite echo, and the proxy
    keeps serving."""
    _probe_power(trace_proxy, "fuzz-trace")


def test_many_distinct_ue_ids_stay_within_the_link_table_bound(inproc_stack) -> None:  # type: ignore[no-untyped-def]
    """200 UEs with 64-character ids through a proxy tracking at most 40 links: every call is served, idle links
    make room (the table never holds more than its bound) and the proxy keeps serving."""
    table = inproc_stack.link
    saved, before = table.max_links, table.evicted
    table.max_links = max(40, len(table.links))
    try:
        for i in range(200):
            ue = f"{i:03d}" + "n" * 61
            assert isinstance(_with_headers(inproc_stack.proxy_addr, "Describe", b"", (("meg-ue", ue),)), bytes)
            assert len(table.links) <= table.max_links
        assert table.evicted - before >= 200 - table.max_links
    finally:
        table.max_links = saved
    _alive(inproc_stack.proxy_addr)
