"""Time on the air, measured side by side in one run (real processes; this process is the UEs).

1. **Accuracy**: a ``Probe`` of n float32 values sent by k UEs at once (a channel each) through a proxy with a
   narrow cell (5 MHz, 15 kHz: 25 PRB, 3,600 RE per 1 ms slot; 5 ms delay each way), against the same Probe
   through a proxy with no cell in front of the same ES (the hop's own cost cancels). Per (n, k): the reported
   time on the air (queueing + air + delay, both directions, from ``meg-airtime``) and the measured extra
   latency, the error's median and p95.
2. **The proxy's own latency with zero air time**: a 64 KiB Probe direct to the ES, through a proxy with no
   cell, with a cell on the ``account`` clock (everything computed, nothing waited for) and with a wide cell
   (100 MHz, 30 kHz) on the ``enforce`` clock, interleaved call by call.

Writes ``benchmarks/results/airtime.json``; the README cites it. From the repo root:
``python -m benchmarks.bench_airtime [--calls N] [--quick]``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import grpc
import numpy as np

from shared.channel.airtime import parse_airtime
from shared.model.random_pipeline import save_random_pipeline
from shared.pb import edge_pb2, edge_pb2_grpc
from shared.wire import air
from shared.wire.headers import AIRTIME_HEADER, UE_HEADER

OUT = Path(__file__).resolve().parent / "results" / "airtime.json"
OPTIONS = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
NARROW = ["--bandwidth-mhz", "5", "--numerology", "0", "--delay-ms", "5"]


def _probe(n: int) -> edge_pb2.ProbeRequest:
    return edge_pb2.ProbeRequest(tensors=[air.to_air("x", np.random.default_rng(n).standard_normal(n).astype(np.float32))])


def _call(stub: edge_pb2_grpc.EdgeServiceStub, req: edge_pb2.ProbeRequest, ue: str) -> tuple[float, float]:
    """(seconds, reported queueing + air + delay over both directions; 0 without a cell)."""
    t0 = time.perf_counter()
    _, call = stub.Probe.with_call(req, timeout=120, metadata=((UE_HEADER, ue),))
    took = time.perf_counter() - t0
    md = dict(call.trailing_metadata() or ())
    if AIRTIME_HEADER not in md:
        return took, 0.0
    a = parse_airtime(md[AIRTIME_HEADER])
    return took, sum(float(d["queue_s"]) + float(d["air_s"]) + float(d["delay_s"]) for d in a.values())


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


def main(argv: list[str] | None = None) -> int:
    from tests.support.procs import running, script

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=30, help="calls per point (default 30)")
    ap.add_argument("--quick", action="store_true", help="a smoke run: few sizes, UE counts and calls")
    args = ap.parse_args(argv)
    sizes = [16_384, 262_144] if args.quick else [16_384, 131_072, 786_432]
    ues = [1, 4] if args.quick else [1, 4, 16]
    calls = 3 if args.quick else args.calls
    result: dict[str, object] = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                             "python": sys.version.split()[0]}, "calls": calls,
                              "quick": args.quick}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        model = save_random_pipeline(Path(tmp) / "model")
        _, es_port = stack.enter_context(running([script("meg-edge"), "serve", "--listen", "127.0.0.1:0", "--model",
                                                  str(model)], "meg.v1.EdgeService"))

        def proxy(*flags: str) -> int:
            argv = [script("meg-channel"), "serve", "--listen", "127.0.0.1:0", "--upstream", f"127.0.0.1:{es_port}", *flags]
            return int(stack.enter_context(running(argv, "meg.v1.ChannelControl"))[1])

        ports = {"direct": es_port, "proxy, no cell": proxy(), "proxy, cell, account clock": proxy(*NARROW, "--clock", "account"),
                 "proxy, 100 MHz cell, enforce": proxy("--bandwidth-mhz", "100", "--numerology", "1")}
        narrow = proxy(*NARROW)

        def stubs(port: int, k: int) -> list[edge_pb2_grpc.EdgeServiceStub]:
            chans = [stack.enter_context(grpc.insecure_channel(f"127.0.0.1:{port}", options=OPTIONS)) for _ in range(k)]
            return [edge_pb2_grpc.EdgeServiceStub(c) for c in chans]

        # 1. accuracy over sizes and UE counts
        accuracy = []
        base_stub = stubs(ports["proxy, no cell"], 1)[0]
        for k in ues:
            cell_stubs = stubs(narrow, k)
            with concurrent.futures.ThreadPoolExecutor(k) as pool:
                for n in sizes:
                    req = _probe(n)
                    for i, s in enumerate(cell_stubs):
                        _call(s, req, f"ue{i}")  # warm, connected
                    _call(base_stub, req, "base")
                    errors, reported, measured = [], [], []
                    for _ in range(calls):
                        base = _call(base_stub, req, "base")[0]
                        runs = list(pool.map(_call, cell_stubs, [req] * k, [f"ue{i}" for i in range(k)]))
                        for took, rep in runs:
                            errors.append((took - base) - rep)
                            reported.append(rep)
                            measured.append(took - base)
                    abs_err = [abs(e) for e in errors]
                    point = {"values": n, "ues": k, "reported_s_median": statistics.median(reported),
                             "measured_extra_s_median": statistics.median(measured),
                             "error_s_median": statistics.median(errors), "abs_error_s_p95": _pct(abs_err, 95),
                             "abs_error_rel_p95": _pct([a / r for a, r in zip(abs_err, reported, strict=True) if r > 0], 95)}
                    accuracy.append(point)
                    print(json.dumps(point), file=sys.stderr, flush=True)
        result["accuracy"] = {"cell": "5 MHz, 15 kHz (25 PRB), FDD, round robin, delay 5 ms each way", "points": accuracy}

        # 2. the proxy's own latency with zero air time
        req = _probe(16_384)
        own = {name: stubs(port, 1)[0] for name, port in ports.items()}
        times: dict[str, list[float]] = {name: [] for name in own}
        for i in range(calls * 10 + 20):
            for name, s in own.items():
                took = _call(s, req, "ue")[0]
                if i >= 20:
                    times[name].append(took)
        med = {name: statistics.median(t) for name, t in times.items()}
        result["own_latency"] = {"probe_values": 16_384, "calls": len(times["direct"]),
                                 "median_ms": {k: v * 1e3 for k, v in med.items()},
                                 "p95_ms": {k: _pct(t, 95) * 1e3 for k, t in times.items()},
                                 "added_vs_direct_ms": {k: (v - med["direct"]) * 1e3 for k, v in med.items()}}
        print(json.dumps(result["own_latency"]), file=sys.stderr)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
