"""Channel emulator speed, measured side by side in one run.

1. Proxy overhead: the median latency of a ``Probe`` RPC carrying a 64 KiB seed (16,384 float32 values),
   sent directly to the ES and through the proxy (ideal link: parse + forward; AWGN: + channel math; Rayleigh
   block fading), interleaved call by call so machine noise hits all variants alike.
2. Channel model throughput: real symbols per second of ``shared.channel.transmit`` on one core.

Writes ``benchmarks/results/channel.json``; the README cites it. Run: ``python benchmarks/bench_channel.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import grpc  # noqa: E402
import numpy as np  # noqa: E402

from channel_emulator.link import LinkTable  # noqa: E402
from channel_emulator.proxy import create_proxy  # noqa: E402
from edge_server.servicer import EdgeServicer  # noqa: E402
from edge_server.settings import EdgeSettings  # noqa: E402
from shared import air  # noqa: E402
from shared.channel import IDEAL, ChannelProfile, load_profiles, transmit  # noqa: E402
from shared.pb import edge_pb2, edge_pb2_grpc  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "channel.json"


async def _latencies(n_calls: int) -> dict[str, object]:
    # the ES servicer's Probe needs no model: serve it with a bare server
    server = grpc.aio.server()
    edge_pb2_grpc.add_EdgeServiceServicer_to_server(EdgeServicer(None, EdgeSettings()), server)  # type: ignore[arg-type]
    es_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    variants = {
        "ideal": IDEAL,
        "awgn": ChannelProfile(model="awgn", snr_db=10.0),
        "rayleigh": ChannelProfile(model="rayleigh", snr_db=10.0, coherence_symbols=256),
    }
    proxies = {}
    for name, prof in variants.items():
        proxy, port, _ = await create_proxy("127.0.0.1:0", {"es0": f"127.0.0.1:{es_port}"}, LinkTable(load_profiles(None), prof, prof))
        proxies[name] = (proxy, port)
    targets = {"direct": es_port, **{f"proxy-{k}": p for k, (_, p) in proxies.items()}}
    channels = {k: grpc.aio.insecure_channel(f"127.0.0.1:{p}") for k, p in targets.items()}
    stubs = {k: edge_pb2_grpc.EdgeServiceStub(c) for k, c in channels.items()}
    seed = air.to_air("seed", np.random.default_rng(0).normal(size=16384).astype(np.float32))
    req = edge_pb2.ProbeRequest(tensors=[seed])
    assert len(seed.data) == 64 * 1024
    times: dict[str, list[float]] = {k: [] for k in stubs}
    for i in range(n_calls + 50):
        for k, stub in stubs.items():
            t0 = time.perf_counter()
            await stub.Probe(req, timeout=10)
            if i >= 50:  # warm-up
                times[k].append(time.perf_counter() - t0)
    for c in channels.values():
        await c.close()
    for proxy, _ in proxies.values():
        await proxy.stop(0)
    await server.stop(0)
    med = {k: statistics.median(v) * 1e6 for k, v in times.items()}
    return {
        "calls_per_variant": n_calls,
        "median_us": {k: round(v, 1) for k, v in med.items()},
        "added_median_us": {k: round(v - med["direct"], 1) for k, v in med.items() if k != "direct"},
        "ratio_to_direct": {k: round(v / med["direct"], 2) for k, v in med.items() if k != "direct"},
    }


def _throughput(n: int = 4_000_000, repeats: int = 5) -> dict[str, float]:
    x = np.random.default_rng(0).normal(size=n).astype(np.float32)
    out = {}
    for name, prof in {
        "awgn": ChannelProfile(model="awgn", snr_db=10.0),
        "rayleigh_L256": ChannelProfile(model="rayleigh", snr_db=10.0, coherence_symbols=256),
        "rician_L256": ChannelProfile(model="rician", snr_db=10.0, coherence_symbols=256, k_factor=5.0),
    }.items():
        rng = np.random.default_rng(1)
        best = min(_timed(lambda: transmit(x, prof, rng)) for _ in range(repeats))
        out[name] = round(n / best / 1e6, 1)
    return out


def _timed(fn: object) -> float:
    t0 = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - t0


def main() -> int:
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 400
    lat = asyncio.run(_latencies(calls))
    thr = _throughput()
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "proxy_overhead_64KiB_seed": lat,
        "channel_throughput_Msymbols_per_s_one_core": thr,
        "goals": {"added_median_us_max": 300, "throughput_Msymbols_per_s_min": 50},
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
