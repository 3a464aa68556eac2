"""Serving throughput of one ES under many UEs, side by side in one run (issues 10 and 24; docs/serving.md).

Arms, all meg-tiny txt2img at 25 DDIM steps (guidance as the model ships), interleaved round by round so that
machine noise hits every arm alike:

* ``offline-batched``: the stock diffusers pipeline as a user runs it — a plain script in its own process
  (``benchmarks/offline_reference.py``), main thread, one ``StableDiffusionPipeline`` call with all 16 prompts
  (text encoder + DDIM + VAE decode): the reference;
* ``offline-one``: the same script, one prompt per call, one call after another;
* ``served-N`` (N = 1, 4, 16): N virtual UEs (:mod:`ue_client.load`, closed loop, FULL-ES) through a real
  ``meg-channel`` (AWGN 20 dB) to a real ``meg-edge`` (its batching engine, max batch 16): images/s and
  latency p50/p99 of the measured requests (the first round of each arm, one request per UE, is warm-up).

Every arm also reports images per CPU-second of the processes involved (offline: the script's process over its
timed calls; served: the ES, the proxy and this process, the UEs' side), read from ``/proc``, and the served
arms the ES's own cores (its CPU-seconds per wall second: the engine should keep both cores of 2 busy).

Then the proxy's own ceiling: 64 KiB seeds (16,384 float32) per second that it forwards (``Probe``, echoed by
the ES, channel applied both ways) with 64 concurrent callers, against the ES's images/s at 16 UEs.

Writes ``benchmarks/results/serving/serving.json`` (``serving-quick.json`` with ``--quick``) and
``docs/img/serving.png``. From the repo root: ``python -m benchmarks.bench_serving [--rounds N] [--quick]``
(default 5 rounds, ~5 minutes on a quiet 2-core machine; ``--quick``: 1 round, 1 and 16 UEs, a smoke).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shared.model.ops import ModelParts
from shared.wire import air

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "serving" / "serving.json"
PLOT = ROOT / "docs" / "img" / "serving.png"
STEPS = 25
BATCH = 16
CONCURRENCY = (1, 4, 16)
#: measured requests per UE per round in the served arms (after one warm-up request per UE)
PER_UE = {1: 4, 4: 3, 16: 2}
PROMPTS = ["a red circle", "a blue square", "a green triangle", "two yellow stars", "a purple ring",
           "an orange cross", "a white diamond", "a small blue circle"]


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds so far of the processes ``pids`` (all their threads), from ``/proc``."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def offline(n_prompts: int, per_call: int, steps: int = STEPS, repeats: int = 1, model: str | None = None,
            device: str = "cpu") -> dict[str, float]:
    """The stock pipeline in a plain script of its own (:mod:`benchmarks.offline_reference`): images/s and
    images per CPU-second of ``n_prompts`` images, ``per_call`` prompts per call."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "offline_reference.py"), "--prompts", str(n_prompts),
         "--per-call", str(per_call), "--steps", str(steps), "--repeats", str(repeats), "--device", device,
         *(["--model", model] if model else [])],
        check=True, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    out = json.loads(done.stdout.strip().splitlines()[-1])
    return {k: out[k] for k in ("images_per_s", "images_per_cpu_s", "cpu_s", "wall_s", "cores")}


def served(parts: ModelParts, via: str, ues: int, round_: int, per_ue: int) -> dict[str, Any]:
    from ue_client.edge_client import EdgeClient
    from ue_client.load import LoadConfig, run_load

    cfg = LoadConfig(via=via, ues=ues, requests=ues * per_ue, warmup=ues, steps=STEPS, seed=1000 * round_,
                     ue_id=f"bench{ues}r{round_}-", timeout_s=600)
    summary, _ = run_load(parts, cfg, lambda ue: EdgeClient(via, timeout_s=600, ue_id=ue))
    assert summary["ok"] == summary["requests"], summary["errors"]
    lat = summary["latency_s"]
    return {"images_per_s": summary["throughput_rps"], "p50_s": lat["p50"], "p99_s": lat["p99"],  # type: ignore[index]
            "requests": summary["requests"]}


async def _probe_ceiling(via: str, callers: int, seconds: float) -> dict[str, float]:
    import grpc

    from shared.pb import edge_pb2, edge_pb2_grpc

    seed = air.to_air("seed", np.random.default_rng(0).normal(size=16384).astype(np.float32))
    assert len(seed.data) == 64 * 1024
    request = edge_pb2.ProbeRequest(tensors=[seed])
    done = 0
    async with grpc.aio.insecure_channel(via) as ch:
        stub = edge_pb2_grpc.EdgeServiceStub(ch)
        await stub.Probe(request, timeout=30)
        end = time.perf_counter() + seconds

        async def caller(i: int) -> None:
            nonlocal done
            md = (("meg-ue", f"probe{i}"),)
            while time.perf_counter() < end:
                await stub.Probe(request, timeout=30, metadata=md)
                done += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(caller(i) for i in range(callers)))
        elapsed = time.perf_counter() - t0
    return {"seeds_per_s": done / elapsed, "calls": done, "seconds": elapsed, "callers": callers}


def plot(result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    med = result["median"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    names = ["offline-one", *(f"served-{n}" for n in CONCURRENCY), "offline-batched"]
    x = np.arange(len(names))
    for off, key, label, color in ((-0.2, "images_per_s", "images / s (wall clock)", "#4c72b0"),
                                   (0.2, "images_per_cpu_s", "images / CPU-second (all processes)", "#55a868")):
        vals = [med[n][key] for n in names]
        ax1.bar(x + off, vals, width=0.4, color=color, label=label)
        for i, v in enumerate(vals):
            ax1.text(i + off, v, f"{v:.2f}", ha="center", va="bottom", fontsize=7)
    ax1.set_xticks(x, [n.replace("offline-batched", f"offline\nbatch {BATCH}").replace("-", "\n") for n in names],
                   fontsize=8)
    ax1.legend(fontsize=7, loc="upper left")
    ax1.set(ylabel="images", title=f"meg-tiny txt2img, {STEPS} steps (median of {result['rounds']} rounds)")
    xs = list(CONCURRENCY)
    ax2.plot(xs, [med[f"served-{n}"]["p50_s"] for n in xs], "o-", label="p50", color="#4c72b0")
    ax2.plot(xs, [med[f"served-{n}"]["p99_s"] for n in xs], "s--", label="p99", color="#c44e52")
    ax2.set_xscale("log", base=2)
    ax2.set_xticks(xs, [str(x) for x in xs])
    ax2.set(xlabel="concurrent UEs (closed loop, through the proxy)", ylabel="latency (s)", title="served latency")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=110)
    plt.close(fig)


def _drain(proc: Any) -> None:
    def run() -> None:
        with contextlib.suppress(ValueError, OSError):
            for _ in proc.stdout:
                pass

    threading.Thread(target=run, daemon=True).start()


def main(rounds: int = 5, quick: bool = False, model: str | None = None, device: str = "cpu") -> dict[str, Any]:
    """``model``/``device``: another pipeline folder and device for every arm (``benchmarks/gpu_check.sh``)."""
    from tests.support.procs import running, script

    parts = ModelParts.load(model, "cpu")  # the UEs' side (FULL-ES: they only check and keep the image)
    where = [*(["--model", model] if model else []), "--device", device]
    concurrency = (1, 16) if quick else CONCURRENCY
    per_ue = {1: 2, 16: 1} if quick else PER_UE
    arms: dict[str, list[dict[str, Any]]] = {}
    with contextlib.ExitStack() as stack:
        es_argv = [script("meg-edge"), "serve", "--listen", "127.0.0.1:0", "--max-batch", "16", "--max-queue", "64",
                   *where]
        es, es_port = stack.enter_context(running(es_argv, "meg.v1.EdgeService", timeout=300))
        _drain(es)  # the ES logs a line per request: keep its pipe from filling up
        ch_argv = [script("meg-channel"), "serve", "--listen", "127.0.0.1:0", "--upstream", f"127.0.0.1:{es_port}",
                   "--snr-db", "20"]
        ch, ch_port = stack.enter_context(running(ch_argv, "meg.v1.ChannelControl"))
        via = f"127.0.0.1:{ch_port}"
        pids = [os.getpid(), es.pid, ch.pid]
        for r in range(rounds):
            # the ratios' two sides run next to each other; every other round in reverse
            order = ["offline-batched", *(f"served-{n}" for n in reversed(concurrency)), "offline-one"]
            if r % 2:
                order.reverse()
            for arm in order:
                if arm == "offline-batched":
                    res = offline(BATCH, BATCH, model=model, device=device)
                elif arm == "offline-one":
                    res = offline(4, 1, model=model, device=device)
                else:
                    ues = int(arm.split("-")[1])
                    cpu0, es0, w0 = cpu_seconds(pids), cpu_seconds([es.pid]), time.perf_counter()
                    res = served(parts, via, ues, r, per_ue[ues])
                    wall = time.perf_counter() - w0
                    cpu = cpu_seconds(pids) - cpu0
                    images = res["requests"] + ues  # the warm-up round counts too (it ran inside the CPU window)
                    res.update(cpu_s=cpu, images_per_cpu_s=images / cpu, es_cores=(cpu_seconds([es.pid]) - es0) / wall)
                arms.setdefault(arm, []).append(res)
                print(f"round {r} {arm}: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                                     for k, v in res.items()), flush=True)
        probe = [asyncio.run(_probe_ceiling(via, 64, 1.0 if quick else 5.0)) for _ in range(1 if quick else 2)]
    top = f"served-{concurrency[-1]}"
    median = {arm: {k: statistics.median(x[k] for x in runs) for k in runs[0]} for arm, runs in arms.items()}
    ratio_rounds = [
        {"served16_over_offline_batched": arms[top][i]["images_per_s"] / arms["offline-batched"][i]["images_per_s"],
         "served16_over_served1": arms[top][i]["images_per_s"] / arms["served-1"][i]["images_per_s"],
         "served16_over_offline_one": arms[top][i]["images_per_s"] / arms["offline-one"][i]["images_per_s"],
         "offline_batched_over_one": arms["offline-batched"][i]["images_per_s"] / arms["offline-one"][i]["images_per_s"],
         "cpu_served16_over_offline_batched": arms[top][i]["images_per_cpu_s"]
         / arms["offline-batched"][i]["images_per_cpu_s"],
         "es_cores_at_16": arms[top][i]["es_cores"]}
        for i in range(rounds)
    ]
    ratios = {k: statistics.median(r[k] for r in ratio_rounds) for k in ratio_rounds[0]}
    proxy = {"seeds_per_s": statistics.median(p["seeds_per_s"] for p in probe), "runs": probe,
             "over_es_images_per_s_at_16": statistics.median(p["seeds_per_s"] for p in probe)
             / median[top]["images_per_s"]}
    result = {
        "what": f"meg-tiny FULL-ES txt2img, {STEPS} steps; served = through meg-channel (AWGN 20 dB) to meg-edge "
                "(batching engine, max batch 16); reference (offline-batched) = the stock diffusers pipeline in a "
                "plain script of its own (main thread, one call with the 16 prompts)",
        "quick": quick, "model": model or "meg-tiny", "device": device, "load_average_at_end": os.getloadavg(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                    "python": sys.version.split()[0]},
        "rounds": rounds, "arms": arms, "median": median, "ratios_median_of_rounds": ratios,
        "ratios_by_round": ratio_rounds, "proxy_ceiling_64KiB": proxy,
    }
    out = OUT.with_name(f"serving{'-' + device if device != 'cpu' else ''}{'-quick' if quick else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    if not quick and model is None:
        plot(result)
    print(json.dumps({"median": median, "ratios": ratios, "proxy_seeds_per_s": proxy["seeds_per_s"]}, indent=2))
    return result


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("rounds_pos", nargs="?", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="1 round, 1 and 16 UEs: a smoke, not a measurement")
    ap.add_argument("--model", help="pipeline folder for every arm (default: the embedded meg-tiny)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    a = ap.parse_args()
    main(1 if a.quick else a.rounds_pos or a.rounds, a.quick, a.model, a.device)
