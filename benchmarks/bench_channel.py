"""Channel emulator speed, measured side by side in one run.

1. Proxy overhead: the median latency of a ``Probe`` RPC carrying a 64 KiB seed (16,384 float32 values),
   sent directly to the ES and through the proxy (ideal link: parse + forward; AWGN: + channel math; Rayleigh
   block fading), each a real process, interleaved call by call so machine noise hits all variants alike.
2. Channel model throughput: real symbols per second of ``shared.channel.transmit.transmit`` on one core.

Writes ``benchmarks/results/channel.json``; the README cites it. Run from the repo root: ``python -m benchmarks.bench_channel [CALLS]``.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import grpc
import numpy as np

from shared.channel.profiles import ChannelProfile
from shared.channel.transmit import transmit
from shared.model.random_pipeline import save_random_pipeline
from shared.pb import edge_pb2, edge_pb2_grpc
from shared.wire import air

OUT = Path(__file__).resolve().parent / "results" / "channel.json"


def _latencies(n_calls: int) -> dict[str, object]:
    """Real processes, as deployed: one ``meg-edge`` (tiny random model; ``Probe`` needs none) and one
    ``meg-channel`` per channel variant in front of it; this process is the UE (sync gRPC client)."""
    from tests.support.procs import running, script

    with tempfile.TemporaryDirectory() as tmp:
        model = save_random_pipeline(Path(tmp) / "model")
        with contextlib.ExitStack() as stack:
            _, es_port = stack.enter_context(running([script("meg-edge"), "serve", "--listen", "127.0.0.1:0", "--model", str(model)], "meg.v1.EdgeService"))
            ports = {"direct": es_port}
            for name, flags in {"ideal": [], "awgn": ["--snr-db", "10"],
                                "rayleigh": ["--snr-db", "10", "--channel-model", "rayleigh", "--coherence", "256"]}.items():
                argv = [script("meg-channel"), "serve", "--listen", "127.0.0.1:0", "--upstream", f"127.0.0.1:{es_port}", *flags]
                _, ports[f"proxy-{name}"] = stack.enter_context(running(argv, "meg.v1.ChannelControl"))
            channels = {k: grpc.insecure_channel(f"127.0.0.1:{p}") for k, p in ports.items()}
            stubs = {k: edge_pb2_grpc.EdgeServiceStub(c) for k, c in channels.items()}
            seed = air.to_air("seed", np.random.default_rng(0).normal(size=16384).astype(np.float32))
            req = edge_pb2.ProbeRequest(tensors=[seed])
            assert len(seed.data) == 64 * 1024
            times: dict[str, list[float]] = {k: [] for k in stubs}
            for i in range(n_calls + 50):
                for k, stub in stubs.items():
                    t0 = time.perf_counter()
                    stub.Probe(req, timeout=10)
                    if i >= 50:  # warm-up
                        times[k].append(time.perf_counter() - t0)
            for c in channels.values():
                c.close()
    med = {k: statistics.median(v) * 1e6 for k, v in times.items()}
    return {
        "calls_per_variant": n_calls,
        "median_us": {k: round(v, 1) for k, v in med.items()},
        "added_median_us": {k: round(v - med["direct"], 1) for k, v in med.items() if k != "direct"},
        "ratio_to_direct": {k: round(v / med["direct"], 2) for k, v in med.items() if k != "direct"},
    }


def _proxy_work(repeats: int = 2000) -> dict[str, float]:
    """The proxy's own per-message work for the 64 KiB seed (parse, channel, stamp, serialise), in µs,
    apart from the gRPC hop: what the added latency would be with a free network stack."""
    from channel_emulator.link import LinkTable
    from shared.channel.profiles import IDEAL, load_profiles

    seed = air.to_air("seed", np.random.default_rng(0).normal(size=16384).astype(np.float32))
    raw = edge_pb2.ProbeRequest(tensors=[seed]).SerializeToString()
    out = {}
    for name, prof in {"ideal": IDEAL, "awgn": ChannelProfile(model="awgn", snr_db=10.0),
                       "rayleigh": ChannelProfile(model="rayleigh", snr_db=10.0, coherence_symbols=256)}.items():
        table = LinkTable(load_profiles(None), prof, prof)
        t0 = time.perf_counter()
        for _ in range(repeats):
            msg = edge_pb2.ProbeRequest.FromString(raw)
            table.apply("ue->es0", "uplink", msg, len(raw))
            msg.SerializeToString()
        out[name] = round((time.perf_counter() - t0) / repeats * 1e6, 1)
    return out


def _throughput(n: int = 4_000_000, repeats: int = 5) -> dict[str, float]:
    x = np.random.default_rng(0).normal(size=n).astype(np.float32)
    out = {}
    for name, prof in {
        "awgn": ChannelProfile(model="awgn", snr_db=10.0),
        "rayleigh_L256": ChannelProfile(model="rayleigh", snr_db=10.0, coherence_symbols=256),
        "rician_L256": ChannelProfile(model="rician", snr_db=10.0, coherence_symbols=256, k_factor=5.0),
    }.items():
        rng = np.random.default_rng(1)
        best = min(_timed(lambda p=prof, r=rng: transmit(x, p, r)) for _ in range(repeats))
        out[name] = round(n / best / 1e6, 1)
    return out


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> int:
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 400
    lat = _latencies(calls)
    thr = _throughput()
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "proxy_overhead_64KiB_seed": lat,
        "proxy_work_per_message_us": _proxy_work(),
        "channel_throughput_Msymbols_per_s_one_core": thr,
        "goals": {"added_median_us_max": 300, "throughput_Msymbols_per_s_min": 50},
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
