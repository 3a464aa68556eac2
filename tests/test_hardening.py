"""Issue 13's numbered defects, one test (or a few) each: bad input gets a clear status, faults heal fast,
retries run once, the CLIs say one sentence. The servers are real (in-process grpc.aio, or processes)."""

from __future__ import annotations

import asyncio
import json
import math
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from shared.pb import air_pb2, channel_pb2, channel_pb2_grpc, edge_pb2, edge_pb2_grpc
from shared.wire import air
from tests.conftest import BackgroundLoop
from tests.support.procs import script

EDGE, CONTROL = "/meg.v1.EdgeService/", "/meg.v1.ChannelControl/"


def _raw(addr: str, method: str, body: bytes) -> grpc.RpcError:
    """Call ``method`` with a raw body (no serializer) and return the error it must end with."""
    with grpc.insecure_channel(addr) as ch, pytest.raises(grpc.RpcError) as err:
        ch.unary_unary(method)(body, timeout=10)
    return err.value


# -- 1: a body that does not parse -> INVALID_ARGUMENT, never UNKNOWN -----------------------------------
GARBAGE = {"truncated field": b"\x0a\x05ab", "bad wire type": b"\x0f\xff\xff\xff", "bad varint": b"\x08" + b"\xff" * 11}


@pytest.mark.parametrize("via", ["es", "proxy"])
@pytest.mark.parametrize("method", ["Describe", "RunSegment", "Probe"])
def test_unparsable_edge_requests_are_invalid_argument(inproc_stack, via: str, method: str) -> None:  # type: ignore[no-untyped-def]
    addr = inproc_stack.es_addr if via == "es" else inproc_stack.proxy_addr
    for name, body in GARBAGE.items():
        err = _raw(addr, EDGE + method, body)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, err.code(), err.details())
        assert "does not parse" in err.details(), err.details()
    with grpc.insecure_channel(addr) as ch:  # and it still serves
        assert edge_pb2_grpc.EdgeServiceStub(ch).Describe(edge_pb2.DescribeRequest(), timeout=10).protocols


@pytest.mark.parametrize("method", ["SetChannel", "GetCSI", "ResetChannel", "GetStats", "GetChannel", "ListProfiles"])
def test_unparsable_control_requests_are_invalid_argument(inproc_stack, method: str) -> None:  # type: ignore[no-untyped-def]
    err = _raw(inproc_stack.proxy_addr, CONTROL + method, GARBAGE["truncated field"])
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "does not parse" in err.details()


# -- 2: shapes that overflow or have too many dims ------------------------------------------------------
BAD_SHAPES = {"overflow": [2**32, 2**32], "overflow 3": [2**40, 2**40, 2**40], "100 dims": [1] * 100,
              "65 dims": [1] * 65, "zero": [0], "none": []}


def test_air_rejects_bad_shapes_without_numpy_errors() -> None:
    for name, shape in BAD_SHAPES.items():
        t = air_pb2.AirTensor(name="x", shape=shape, dtype="float32")
        with pytest.raises(air.TensorError):
            air.air_array(t)
        assert air.symbols(t) == 0, name
    ok = air_pb2.AirTensor(name="x", shape=[1] * 64, dtype="float32", data=b"\0\0\0\0")
    assert air.air_array(ok).shape == (1,) * 64


def test_air_core_does_not_import_torch() -> None:
    code = ("import sys, channel_emulator.proxy, channel_emulator.cli, shared.wire.air; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], timeout=60, check=False).returncode == 0


@pytest.mark.parametrize("via", ["es", "proxy"])
def test_bad_shapes_over_grpc(inproc_stack, via: str) -> None:  # type: ignore[no-untyped-def]
    addr = inproc_stack.es_addr if via == "es" else inproc_stack.proxy_addr
    with grpc.insecure_channel(addr) as ch:
        stub = edge_pb2_grpc.EdgeServiceStub(ch)
        for name, shape in BAD_SHAPES.items():
            t = air_pb2.AirTensor(name="cond", shape=shape, dtype="float32")
            req = edge_pb2.SegmentRequest(protocol="CIAG", segment=1, tensors=[t], params=edge_pb2.GenerationParams(steps=2))
            for call, msg in ((stub.RunSegment, req), (stub.Probe, edge_pb2.ProbeRequest(tensors=[t]))):
                with pytest.raises(grpc.RpcError) as err:
                    call(msg, timeout=10)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, err.value.details())


# -- 3: Probe NaN/Inf ------------------------------------------------------------------------------------
@pytest.mark.parametrize("via", ["es", "proxy"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_probe_rejects_non_finite(inproc_stack, via: str, value: float) -> None:  # type: ignore[no-untyped-def]
    addr = inproc_stack.es_addr if via == "es" else inproc_stack.proxy_addr
    t = air.to_air("x", np.array([1.0, value, 2.0], np.float32))
    with grpc.insecure_channel(addr) as ch, pytest.raises(grpc.RpcError) as err:
        edge_pb2_grpc.EdgeServiceStub(ch).Probe(edge_pb2.ProbeRequest(tensors=[t]), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "NaN or infinite" in err.value.details()


# -- 4: link names; unknown links; reset --stats; show lists configured links ---------------------------
@pytest.mark.parametrize("link", ["ue->", "->", "->es0", "a->b->c", "no_arrow", "ue->es0\n", "u e->es0", "ue->es0\x00", "ü->es0"])
def test_malformed_link_names_are_invalid_argument(inproc_stack, link: str) -> None:  # type: ignore[no-untyped-def]
    with grpc.insecure_channel(inproc_stack.proxy_addr) as ch:
        ctl = channel_pb2_grpc.ChannelControlStub(ch)
        before = len(inproc_stack.link.links)
        for call, req in ((ctl.SetChannel, channel_pb2.SetChannelRequest(link=link, direction="both", profile="ideal")),
                          (ctl.GetCSI, channel_pb2.CSIRequest(link=link, direction="downlink", blocks=1))):
            with pytest.raises(grpc.RpcError) as err:
                call(req, timeout=5)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "is not UE->ES" in err.value.details()
        assert len(inproc_stack.link.links) == before


def test_unknown_links_are_not_found_and_not_created(inproc_stack) -> None:  # type: ignore[no-untyped-def]
    with grpc.insecure_channel(inproc_stack.proxy_addr) as ch:
        ctl = channel_pb2_grpc.ChannelControlStub(ch)
        before = set(inproc_stack.link.links)
        with pytest.raises(grpc.RpcError) as err:
            ctl.SetChannel(channel_pb2.SetChannelRequest(link="ue->es9", direction="both", profile="ideal"), timeout=5)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and "upstreams: es0" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            ctl.GetCSI(channel_pb2.CSIRequest(link="ghost->es0", direction="downlink", blocks=1), timeout=5)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and "known links" in err.value.details()
        assert set(inproc_stack.link.links) == before
        # a well-formed link to a known ES may be configured before its first traffic
        ctl.SetChannel(channel_pb2.SetChannelRequest(link="early->es0", direction="both", profile="awgn-10"), timeout=5)
        assert "early->es0" in inproc_stack.link.links


def _table(tmp_path: Path):  # type: ignore[no-untyped-def]
    from channel_emulator.link import LinkTable
    from shared.channel.profiles import IDEAL, load_profiles

    f = tmp_path / "p.toml"
    f.write_text('[links."phone->es0"]\nuplink = "awgn-10"\ndownlink = "rayleigh-10"\n')
    return LinkTable(load_profiles(f), IDEAL, IDEAL)


def test_show_lists_configured_links_and_reset_stats_forgets_traffic_links(tmp_path: Path) -> None:
    table = _table(tmp_path)
    shown = {ls.link: ls for ls in table.settings(["es0"]).links}
    assert shown["phone->es0"].downlink.name == "rayleigh-10"  # before any traffic touches it
    msg = edge_pb2.ProbeRequest(tensors=[air.to_air("x", np.ones(8, np.float32))])
    table.apply("stranger->es0", "uplink", msg, 10)
    table.apply("phone->es0", "uplink", msg, 10)
    assert set(table.links) == {"phone->es0", "stranger->es0"}
    table.reset(stats=False)
    assert set(table.links) == {"phone->es0", "stranger->es0"}
    table.reset(stats=True)
    assert set(table.links) == {"phone->es0"}
    assert table.links["phone->es0"]["uplink"].counters.rpcs == 0


# -- 5: GetCSI bounded; pending draws bounded ------------------------------------------------------------
def test_csi_requests_are_bounded(inproc_stack) -> None:  # type: ignore[no-untyped-def]
    from channel_emulator.control import MAX_CSI_BLOCKS

    with grpc.insecure_channel(inproc_stack.proxy_addr) as ch:
        ctl = channel_pb2_grpc.ChannelControlStub(ch)
        ctl.SetChannel(channel_pb2.SetChannelRequest(link="csi->es0", direction="downlink", custom=channel_pb2.Profile(
            model="rayleigh", snr_db=10, coherence_symbols=1)), timeout=5)
        for req in (channel_pb2.CSIRequest(link="csi->es0", direction="downlink", blocks=1_000_000),
                    channel_pb2.CSIRequest(link="csi->es0", direction="downlink", blocks=MAX_CSI_BLOCKS + 1),
                    channel_pb2.CSIRequest(link="csi->es0", direction="downlink", symbols=2**40)):
            with pytest.raises(grpc.RpcError) as err:
                ctl.GetCSI(req, timeout=5)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
        for _ in range(3):  # reported but never used: kept at most MAX_CSI_BLOCKS
            assert len(ctl.GetCSI(channel_pb2.CSIRequest(link="csi->es0", direction="downlink", blocks=MAX_CSI_BLOCKS),
                                  timeout=10).gains) == MAX_CSI_BLOCKS
        assert len(inproc_stack.link.links["csi->es0"]["downlink"].pending) == MAX_CSI_BLOCKS


# -- 6: a port in use is a start-up error ----------------------------------------------------------------
def test_port_in_use_is_a_clear_error(inproc_stack) -> None:  # type: ignore[no-untyped-def]
    from channel_emulator.link import LinkTable
    from channel_emulator.proxy import create_proxy
    from edge_server.server import create_server
    from edge_server.settings import EdgeSettings
    from shared.channel.profiles import IDEAL, load_profiles

    bg = BackgroundLoop()
    try:
        with pytest.raises(OSError, match="in use"):
            bg.run(create_server(EdgeSettings(listen=inproc_stack.es_addr), inproc_stack.parts))
        with pytest.raises(OSError, match="in use"):
            bg.run(create_proxy(inproc_stack.proxy_addr, {"es0": inproc_stack.es_addr},
                                LinkTable(load_profiles(None), IDEAL, IDEAL)))
    finally:
        bg.close()
    r = subprocess.run([script("meg-channel"), "serve", "--listen", inproc_stack.proxy_addr, "--upstream", inproc_stack.es_addr],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 1 and "in use" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_meg_edge_on_a_port_in_use_says_so(inproc_stack, random_model_dir: Path) -> None:  # type: ignore[no-untyped-def]
    r = subprocess.run([script("meg-edge"), "serve", "--listen", inproc_stack.es_addr, "--model", str(random_model_dir),
                        "--device", "cpu"], check=False, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and f"cannot listen on {inproc_stack.es_addr}" in r.stderr and "in use" in r.stderr
    assert "Traceback" not in r.stderr


# -- 7: the proxy reconnects to a restarted ES within ~1 s -----------------------------------------------
def test_proxy_reconnects_fast_after_es_outage(inproc_stack) -> None:  # type: ignore[no-untyped-def]
    from channel_emulator.link import LinkTable
    from channel_emulator.proxy import create_proxy
    from edge_server.server import create_server
    from edge_server.settings import EdgeSettings
    from shared.channel.profiles import IDEAL, load_profiles

    bg = BackgroundLoop()
    es, port, _ = bg.run(create_server(EdgeSettings(listen="127.0.0.1:0"), inproc_stack.parts))  # type: ignore[misc]
    proxy, pport, _ = bg.run(create_proxy("127.0.0.1:0", {"es0": f"127.0.0.1:{port}"},  # type: ignore[misc]
                                          LinkTable(load_profiles(None), IDEAL, IDEAL)))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{pport}") as ch:
            stub = edge_pb2_grpc.EdgeServiceStub(ch)
            assert stub.Describe(edge_pb2.DescribeRequest(), timeout=10).protocols
            bg.run(es.stop(0))
            es.meg_servicer.close() if hasattr(es, "meg_servicer") else None
            outage_end = time.monotonic() + 6.0  # long enough for gRPC's default backoff to reach ~4 s
            while time.monotonic() < outage_end:
                with pytest.raises(grpc.RpcError) as err:
                    stub.Describe(edge_pb2.DescribeRequest(), timeout=5)
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE
                time.sleep(0.2)
            es, _, _ = bg.run(create_server(EdgeSettings(listen=f"127.0.0.1:{port}"), inproc_stack.parts))  # type: ignore[misc]
            back = time.monotonic()
            while True:
                try:
                    stub.Describe(edge_pb2.DescribeRequest(), timeout=5)
                    break
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE
                    time.sleep(0.05)
            recovered = time.monotonic() - back
        assert recovered < 1.6, f"the proxy took {recovered:.2f}s to reach the restarted ES"
    finally:
        bg.run(proxy.stop(0))
        bg.run(es.stop(0))
        bg.close()


# -- 8: idempotent RunSegment (the cache) and UE retries under the same id ------------------------------
def _run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_result_cache_runs_once_and_coalesces() -> None:
    from edge_server.idempotency import ResultCache

    async def main() -> None:
        cache: ResultCache[str] = ResultCache(ttl_s=60)
        runs = 0
        gate = asyncio.Event()

        async def compute() -> str:
            nonlocal runs
            runs += 1
            await gate.wait()
            return f"result {runs}"

        first = asyncio.ensure_future(cache.run("id", "fp", compute))
        second = asyncio.ensure_future(cache.run("id", "fp", compute))  # arrives while the first runs
        await asyncio.sleep(0.01)
        gate.set()
        assert await first == await second == "result 1"
        assert await cache.run("id", "fp", compute) == "result 1"  # a later retry: from the cache
        assert runs == 1 and cache.joins == 1 and cache.hits == 1
        assert await cache.run(None, "fp", compute) == "result 2"  # no request_id: no caching

    _run(main())


def test_result_cache_survives_a_cancelled_first_caller_and_does_not_cache_failures() -> None:
    from edge_server.idempotency import IdempotencyConflict, ResultCache

    async def main() -> None:
        cache: ResultCache[str] = ResultCache(ttl_s=60)
        runs = 0

        async def slow() -> str:
            nonlocal runs
            runs += 1
            await asyncio.sleep(0.05)
            return "done"

        first = asyncio.ensure_future(cache.run("a", "fp", slow))
        await asyncio.sleep(0.01)
        first.cancel()  # the caller's connection went away with the proxy
        await asyncio.sleep(0.1)
        assert await cache.run("a", "fp", slow) == "done" and runs == 1
        with pytest.raises(IdempotencyConflict):
            await cache.run("a", "other prompt", slow)

        fails = 0

        async def failing() -> str:
            nonlocal fails
            fails += 1
            raise RuntimeError("boom")

        for _ in range(2):
            with pytest.raises(RuntimeError):
                await cache.run("b", "fp", failing)
        assert fails == 2 and "b" not in cache._entries

    _run(main())


def test_result_cache_is_bounded_by_ttl_entries_and_bytes() -> None:
    from edge_server.idempotency import ResultCache

    now = [0.0]

    async def main() -> None:
        cache: ResultCache[bytes] = ResultCache(ttl_s=10, max_entries=3, max_bytes=250, size_of=len, clock=lambda: now[0])

        async def value(n: int) -> bytes:
            return b"x" * n

        for i in range(5):
            await cache.run(i, "fp", lambda: value(10))
        assert len(cache) == 3 and set(cache._entries) == {2, 3, 4}
        await cache.run("big", "fp", lambda: value(200))
        assert cache.stored_bytes <= 250
        now[0] = 100.0
        await cache.run("late", "fp", lambda: value(1))
        assert set(cache._entries) == {"late"}

    _run(main())


def test_request_key_and_fingerprint_ignore_the_noisy_tensors() -> None:
    from edge_server.idempotency import fingerprint, request_key

    a = edge_pb2.SegmentRequest(protocol="ciag", segment=1, request_id="r1", prompt="",
                                tensors=[air.to_air("cond", np.zeros(4, np.float32))], params=edge_pb2.GenerationParams(seed=1))
    b = edge_pb2.SegmentRequest()
    b.CopyFrom(a)
    b.tensors[0].data = np.ones(4, np.float32).tobytes()  # the proxy's noise differs on a retry
    assert request_key(a) == request_key(b) == ("r1", "CIAG", "txt2img", 1, -1)
    assert fingerprint(a) == fingerprint(b)
    b.params.seed = 2
    assert fingerprint(a) != fingerprint(b)
    assert request_key(edge_pb2.SegmentRequest(protocol="CIAG")) is None


def test_edge_client_retries_unavailable_until_the_es_is_up(inproc_stack) -> None:  # type: ignore[no-untyped-def]
    from edge_server.server import create_server
    from edge_server.settings import EdgeSettings
    from ue_client.edge_client import EdgeClient

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bg = BackgroundLoop()
    servers: list[object] = []

    def start_later() -> None:
        time.sleep(1.0)
        servers.append(bg.run(create_server(EdgeSettings(listen=f"127.0.0.1:{port}"), inproc_stack.parts))[0])  # type: ignore[index]

    threading.Thread(target=start_later, daemon=True).start()
    try:
        with EdgeClient(f"127.0.0.1:{port}", timeout_s=30) as client:
            assert client.describe().protocols
            assert client.retries >= 1
            req = edge_pb2.SegmentRequest(protocol="FULL-ES", segment=0, prompt="a red circle",
                                          params=edge_pb2.GenerationParams(steps=2))
            assert client.run_segment(req, timeout=60).tensors
            assert req.request_id  # named so that a retry is the same request
        with EdgeClient(f"127.0.0.1:{port}", timeout_s=30, retry=False) as client:
            assert client.describe().protocols
    finally:
        for s in servers:
            bg.run(s.stop(0))  # type: ignore[attr-defined]
        bg.close()


# -- 9: CLIs ---------------------------------------------------------------------------------------------
def _ue(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from ue_client.cli import main

    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = int(exc.code or 0)
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("argv, says", [
    (["--steps", "-1"], "steps is 0 (the model's default) or 1 to 500"),
    (["--steps", "many"], "is not a number"),
    (["--fc", "1.5"], "fc is a compression rate"),
    (["--guidance", "nan"], "guidance is 0"),
    (["--seed", "-3"], "the seed is a whole number"),
    (["--via", "localhost"], "'localhost' is not HOST:PORT (it has no port"),
    (["--task", "img2img"], "--task img2img edits a picture: give it with --image"),
])
def test_ue_cli_usage_errors_are_one_sentence(argv: list[str], says: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = _ue(["generate", "a red circle", "--via", "127.0.0.1:1", *argv], capsys)
    assert rc == 2 and says in err and "Traceback" not in err, err


def test_fc_check_lists_the_rates_and_spares_full_es() -> None:
    import argparse

    from ue_client.cli import _check_fc

    remote = edge_pb2.DescribeResponse(codec_fc=[0.1, 0.3, 0.5, 0.7, 0.9])
    args = argparse.Namespace(fc=0.42, protocol="CIAG", task="txt2img")
    with pytest.raises(ValueError, match=r"no seed codec for fc=0.42; use fc=1 \(raw latent\) or one of 0.1, 0.3, 0.5, 0.7, 0.9"):
        _check_fc(args, remote)
    _check_fc(argparse.Namespace(fc=0.42, protocol="FULL-ES", task="txt2img"), remote)  # sends no seed
    _check_fc(argparse.Namespace(fc=0.3, protocol="CIAG", task="txt2img"), remote)
    assert "no seed codec at all" in air.unsupported_rate_message(0.5, [])


def test_ue_cli_runtime_errors_exit_1_in_one_line(inproc_stack, random_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    rc, err = _ue(["generate", "a red circle", "--via", inproc_stack.proxy_addr, "--model", str(random_model_dir),
                   "--fc", "0.42", "--steps", "2"], capsys)
    assert rc == 1 and "meg-ue: error: this model ships no seed codec for fc=0.42; use fc=1 (raw latent) or one of" in err, err
    assert "Traceback" not in err


def _channel(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from channel_emulator.cli import main

    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = int(exc.code or 0)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_channel_cli_csi_table_stats_json_and_exit_codes(inproc_stack, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    via = inproc_stack.proxy_addr
    with grpc.insecure_channel(via) as ch:  # traffic on tabled->es0, noiseless
        edge_pb2_grpc.EdgeServiceStub(ch).Probe(edge_pb2.ProbeRequest(tensors=[air.to_air("x", np.ones(4, np.float32))]),
                                                timeout=10, metadata=(("meg-ue", "tabled"),))
    rc, out, _ = _channel(["csi", "--via", via, "--link", "tabled->es0", "--blocks", "3"], capsys)
    assert rc == 0 and not out.lstrip().startswith("{") and "block" in out and len(out.strip().splitlines()) == 5
    rc, out, _ = _channel(["stats", "--via", via, "--json"], capsys)
    entries = {(e["link"], e["direction"]): e for e in json.loads(out)["entries"]}
    e = entries[("tabled->es0", "uplink")]
    assert isinstance(e["rpcs"], int) and e["rpcs"] >= 1 and e["mean_snr_db"] is None  # no noisy symbol: null
    assert "NaN" not in out and "Infinity" not in out
    rc, _, err = _channel(["stats", "--via", "127.0.0.1:1"], capsys)
    assert rc == 1 and "cannot reach the channel proxy" in err
    rc, _, err = _channel(["set", "both", "nope", "--via", via], capsys)
    assert rc == 1 and "unknown profile 'nope'" in err
    rc, _, err = _channel(["stats", "--via", "localhost"], capsys)
    assert rc == 2 and "no port" in err  # argparse usage errors stay 2


def test_channel_cli_ctrl_c_and_closed_pipe(inproc_stack) -> None:  # type: ignore[no-untyped-def]
    # a server that accepts and never answers: the call hangs until Ctrl-C
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        silent.settimeout(60)

        # started as CI's background shell starts it: SIGINT ignored and blocked (both survive exec)
        as_from_a_background_shell = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
                                      "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT}); "
                                      "os.execv(sys.argv[1], sys.argv[1:])")
        proc = subprocess.Popen([sys.executable, "-c", as_from_a_background_shell, script("meg-channel"), "stats",
                                 "--via", f"127.0.0.1:{port}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        conn, _ = silent.accept()  # the CLI is past its imports and inside the call: the condition, not a sleep
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        conn.close()
    assert proc.returncode == 130 and err.strip() == "meg-channel: interrupted", err
    proc = subprocess.Popen([script("meg-channel"), "profiles", "--via", inproc_stack.proxy_addr],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    proc.stdout.close()  # the reader went away (`| head -0`)
    err = proc.stderr.read() if proc.stderr else ""
    proc.wait(30)
    assert "Errno 32" not in err and "Traceback" not in err and "BrokenPipe" not in err, err


# -- 10: mean SNR in the linear domain -------------------------------------------------------------------
def test_stats_mean_snr_is_linear() -> None:
    from channel_emulator.link import LinkTable
    from shared.channel.profiles import ChannelProfile, load_profiles

    table = LinkTable(load_profiles(None), ChannelProfile(model="awgn", snr_db=30), ChannelProfile(model="awgn", snr_db=30))
    msg = edge_pb2.ProbeRequest(tensors=[air.to_air("x", np.ones(1000, np.float32))])
    table.apply("ue->es0", "uplink", msg, 10)
    table.links["ue->es0"]["uplink"].profile = ChannelProfile(model="awgn", snr_db=-10)
    msg = edge_pb2.ProbeRequest(tensors=[air.to_air("x", np.ones(1000, np.float32))])
    table.apply("ue->es0", "uplink", msg, 10)
    (entry,) = [e for e in table.stats().entries if e.direction == "uplink"]
    assert entry.mean_snr_db == pytest.approx(10 * math.log10((1000 + 0.1) / 2), abs=1e-6)  # 26.99 dB, not 10
    (down,) = [e for e in table.stats().entries if e.direction == "downlink"]
    assert math.isnan(down.mean_snr_db)
