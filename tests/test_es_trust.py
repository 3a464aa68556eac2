"""The ES's state no caller can grow, read or take (issue 23 items 6, 7, 9, 10, 13), against a real in-process
ES: caller-chosen strings bounded before they key anything, results and round state bound to the caller, heavy
work only after admission, connection limits, and a broken engine reported by health."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edge_server.idempotency import ResultCache, key_bytes
from edge_server.sessions import Sessions, SessionsFull
from shared.model.ops import ModelParts
from shared.pb import edge_pb2, edge_pb2_grpc
from shared.wire import air
from shared.wire.limits import MAX_REQUEST_ID_CHARS, MAX_ROUNDS
from tests.conftest import BackgroundLoop


@pytest.fixture(scope="module")
def parts(random_model_dir: Path) -> ModelParts:
    return ModelParts.load(str(random_model_dir), "cpu")


class _ES:
    def __init__(self, addr: str, server: Any, health: Any) -> None:
        self.addr, self.server, self.health = addr, server, health

    @property
    def servicer(self) -> Any:
        return self.server.meg_servicer


def _start(parts: ModelParts, **settings: Any) -> tuple[BackgroundLoop, _ES]:
    from edge_server.server import create_server
    from edge_server.settings import EdgeSettings

    bg = BackgroundLoop()
    settings.setdefault("listen", "127.0.0.1:0")
    server, port, health = bg.run(create_server(EdgeSettings(**settings), parts))  # type: ignore[misc]
    return bg, _ES(f"127.0.0.1:{port}", server, health)


def _stop(bg: BackgroundLoop, es: _ES) -> None:
    bg.run(es.server.stop(0))
    es.servicer.close()
    bg.close()


@pytest.fixture(scope="module")
def es(parts: ModelParts) -> Iterator[_ES]:
    bg, es = _start(parts)
    try:
        yield es
    finally:
        _stop(bg, es)


def _full_es(request_id: str = "", prompt: str = "a circle", seed: int = 1) -> edge_pb2.SegmentRequest:
    return edge_pb2.SegmentRequest(protocol="FULL-ES", segment=0, task="txt2img", prompt=prompt, request_id=request_id,
                                   params=edge_pb2.GenerationParams(seed=seed, steps=2))


def _call(es: _ES, request: edge_pb2.SegmentRequest, ue: str = "ue") -> edge_pb2.SegmentResponse:
    with grpc.insecure_channel(es.addr) as ch:
        return edge_pb2_grpc.EdgeServiceStub(ch).RunSegment(request, timeout=60, metadata=(("meg-ue", ue),))  # type: ignore[no-any-return]


def _fails(es: _ES, request: edge_pb2.SegmentRequest, ue: str = "ue") -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        _call(es, request, ue)
    return err.value


# --- 6: caller-chosen strings -----------------------------------------------------------------------------
def test_an_unknown_protocol_never_becomes_a_metrics_label(es: _ES) -> None:
    for i in range(5):
        err = _fails(es, edge_pb2.SegmentRequest(protocol=f"made-up-{i}", segment=0, prompt="x"))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    labels = {s.labels.get("protocol") for m in es.servicer.metrics.registry.collect() for s in m.samples}
    assert not any(str(label).startswith("MADE-UP") for label in labels), labels
    assert "-" in labels


def test_request_ids_are_bounded_and_not_logged_in_full(es: _ES, caplog: pytest.LogCaptureFixture) -> None:
    err = _fails(es, _full_es("x" * (MAX_REQUEST_ID_CHARS + 1)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and f"at most {MAX_REQUEST_ID_CHARS}" in err.details()
    long_id = "secret-looking-request-id-" + "7" * 60
    with caplog.at_level(logging.INFO, logger="meg.edge"):
        assert [t.name for t in _call(es, _full_es(long_id)).tensors] == ["image"]
    assert caplog.text and long_id not in caplog.text and long_id[:12] in caplog.text
    err = _fails(es, _full_es("ok"), ue="u" * 65)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "meg-ue" in err.details()


def test_cache_keys_count_in_the_caches_bytes() -> None:
    import asyncio

    async def main() -> int:
        cache: ResultCache[str] = ResultCache(size_of=lambda _r: 0)

        async def compute() -> str:
            return "r"

        await cache.run(("peer", "ue", "id" * 50, "FULL-ES", "txt2img", 0, -1), "fp", compute)
        return cache.stored_bytes

    assert asyncio.run(main()) == key_bytes(("peer", "ue", "id" * 50, "FULL-ES", "txt2img", 0, -1)) > 100


# --- 7: results and round state are the caller's ------------------------------------------------------------
def test_another_ue_with_the_same_request_id_gets_its_own_run(es: _ES) -> None:
    results = es.servicer.segments.results
    runs = results.runs
    a = _call(es, _full_es("shared-id", seed=1), ue="alice")
    b = _call(es, _full_es("shared-id", seed=1), ue="bob")
    assert results.runs == runs + 2  # bob's request ran; he was not served alice's cached result
    assert _call(es, _full_es("shared-id", seed=1), ue="alice") == a  # alice's retry: her own result
    assert a.tensors[0].data == b.tensors[0].data  # (same inputs, same image: it is the binding that differs)
    err = _fails(es, _full_es("shared-id", prompt="another prompt", seed=1), ue="alice")
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS and "different request" in err.details()


def _round(es: _ES, ue: str, request_id: str, segment: int, tensors: list[Any]) -> edge_pb2.SegmentResponse:
    return _call(es, edge_pb2.SegmentRequest(
        protocol="UIDCG", segment=segment, task="txt2img", request_id=request_id, tensors=tensors,
        params=edge_pb2.GenerationParams(seed=1, steps=3), share=edge_pb2.Share(index=0, count=2, halo=1, sync=1)), ue)


def test_another_ue_cannot_continue_a_generation(es: _ES, parts: ModelParts) -> None:
    from shared.protocol.tiles import Share

    g = parts.geometry
    x0, x1 = Share(0, 2, 1, sync=1).window(g.latent_size)
    latent_in = air.to_air("latent_in", torch.randn(1, g.latent_channels, g.latent_size, x1 - x0))
    _round(es, "alice", "gen-a", 1, [air.to_air("cond", parts.embed("a red circle"))])
    with pytest.raises(grpc.RpcError) as err:
        _round(es, "mallory", "gen-a", 3, [latent_in])  # alice's id, mallory's call
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "for this caller" in err.value.details()
    assert [t.name for t in _round(es, "alice", "gen-a", 3, [latent_in]).tensors] == ["latent_part"]


def test_the_session_store_has_a_quota_per_caller() -> None:
    s = Sessions(per_caller=2, max_sessions=4)
    s.keep(("bob", 1), {"cond": torch.zeros(4)}, owner="bob")
    for i in range(5):  # alice keeps starting generations: only her own oldest make room
        s.keep(("alice", i), {"cond": torch.zeros(4)}, owner="alice")
    assert s.take(("bob", 1), ("cond",))["cond"].shape == (4,)
    assert len(s) == 3
    s.keep(("carol", 1), {"cond": 1}, owner="carol")
    with pytest.raises(SessionsFull):  # full of live sessions: a new one is refused, nobody is evicted
        s.keep(("dave", 1), {"cond": 1}, owner="dave")
    assert len(s) == 4 and s.take(("bob", 1), ("cond",))


# --- 9: bounded work, after admission ----------------------------------------------------------------------
def test_rounds_are_bounded(es: _ES) -> None:
    request = edge_pb2.SegmentRequest(
        protocol="UIDCG", segment=1, task="txt2img", request_id="many", params=edge_pb2.GenerationParams(seed=1, steps=500),
        share=edge_pb2.Share(index=0, count=2, halo=1, sync=1))
    err = _fails(es, request)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and f"at most {MAX_ROUNDS}" in err.details()


def test_a_full_engine_refuses_before_any_decoding(parts: ModelParts) -> None:
    bg, es = _start(parts, max_batch=1, max_queue=0)
    try:
        handler = es.servicer.segments
        decoded: list[object] = []
        real = handler._decode
        handler._decode = lambda request: (decoded.append(request), real(request))[1]
        ticket = handler.engine.admit()  # the ES's one place is taken
        err = _fails(es, _full_es("full"))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "at capacity" in err.details()
        assert decoded == []  # refused before the plan and the tensors were looked at
        ticket.release()
        assert [t.name for t in _call(es, _full_es("full")).tensors] == ["image"] and len(decoded) == 1
    finally:
        _stop(bg, es)


# --- 10: connection limits -------------------------------------------------------------------------------
def test_server_options_bound_connections_and_close_idle_ones() -> None:
    from shared.rpc.server import CONNECTION_LIMITS, add_health_and_reflection, bind, server_options, set_serving

    options = dict(server_options())
    for name in ("grpc.max_concurrent_streams", "grpc.max_connection_idle_ms", "grpc.max_connection_age_ms",
                 "grpc.max_allowed_incoming_connections", "grpc.max_metadata_size"):
        assert options[name] == CONNECTION_LIMITS[name]
    with pytest.raises(ValueError, match="no connection limit"):
        server_options(max_idle=1)
    bg = BackgroundLoop()

    async def start() -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server(options=server_options(max_connection_idle_ms=300))
        health = add_health_and_reflection(server, [])
        port = bind(server, "127.0.0.1:0")
        await server.start()
        await set_serving(health, [])
        return server, port

    server, port = bg.run(start())  # type: ignore[misc]
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert ch._channel.check_connectivity_state(False) == 2  # READY  # type: ignore[attr-defined]
            deadline = time.monotonic() + 20
            while ch._channel.check_connectivity_state(False) == 2:  # type: ignore[attr-defined]
                assert time.monotonic() < deadline, "the idle connection was never closed"
                time.sleep(0.05)
    finally:
        bg.run(server.stop(0))
        bg.close()


# --- 13: an engine that cannot go on --------------------------------------------------------------------------
def test_a_broken_engine_answers_unavailable_and_health_says_not_serving(parts: ModelParts) -> None:
    bg, es = _start(parts)
    engine = es.servicer.engine

    def broken(*_a: object, **_k: object) -> object:
        raise RuntimeError("CUDA error: device-side assert triggered (injected)")

    try:
        engine.max_step_failures = 1
        real, engine.model.unet = engine.model.unet, broken
        err = _fails(es, _full_es())
        assert err.code() == grpc.StatusCode.UNAVAILABLE and "denoising step failed" in err.details()
        err = _fails(es, _full_es(seed=2))
        assert err.code() == grpc.StatusCode.UNAVAILABLE and "engine stopped" in err.details()
        with grpc.insecure_channel(es.addr) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            deadline = time.monotonic() + 10
            while stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status != health_pb2.HealthCheckResponse.NOT_SERVING:
                assert time.monotonic() < deadline, "health still says SERVING"
                time.sleep(0.05)
        engine.model.unet = real
    finally:
        _stop(bg, es)


# --- 4, 5: loud insecure set-ups, /metrics on loopback ----------------------------------------------------------
def test_metrics_bind_loopback_by_default(parts: ModelParts) -> None:
    """The ES used to serve /metrics (every UE id, per-link counters) on --listen's host, 0.0.0.0 in containers."""
    bg, es = _start(parts, listen="0.0.0.0:0", metrics_port=0)
    try:
        assert es.servicer.metrics_http.server_address[0] == "127.0.0.1"
    finally:
        _stop(bg, es)


def test_a_token_over_plaintext_beyond_loopback_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    from shared.rpc.security import secure_channel

    with caplog.at_level(logging.WARNING, logger="meg.security"):
        secure_channel("127.0.0.1:1", token="t").close()
        assert "plaintext" not in caplog.text  # loopback: the development default, quiet
        secure_channel("192.0.2.7:50051", token="t").close()  # TEST-NET-1: never dialled here
    assert "sending a bearer token to 192.0.2.7:50051 in plaintext" in caplog.text
