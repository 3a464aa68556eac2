"""Mixed step counts on one ES engine: continuous batching vs equal-request batching vs one at a time.

The first public benchmark of mixed step counts for diffusion serving (DESIGN.md §7): meg-tiny requests of four
classes — txt2img at 10, 25 and 50 DDIM steps and img2img at 25 steps, strength 0.6 (15 steps run) — arrive
open-loop (Poisson, the same seeded arrival times for every arm) and are served by one
:class:`edge_server.engine.Engine` under three policies:

* ``continuous``: iteration-level batching (the ES's engine): a request joins the running batch at the next
  step and leaves when its own schedule ends (max batch 16);
* ``equal``: Triton-style dynamic batching: a batch is formed, when none runs, of the queued requests *equal*
  to the oldest (same steps, task, strength) and runs to its end (max batch 16);
* ``one``: one request at a time.

A request is its DDIM loop plus its VAE decode (the prompt embeddings are made once, before timing); latency
counts from its *intended* arrival time (no coordinated omission). The offered load is ``--load`` times the
one-at-a-time capacity measured first (default 1.5: one at a time falls behind by design).

Writes ``benchmarks/results/serving/mixed.json`` (``mixed-quick.json`` with ``--quick``) and
``docs/img/serving-mixed.png``: images/s and p50/p99 latency per class and policy. From the repo root:
``python -m benchmarks.bench_mixed [--requests N] [--load X] [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge_server.engine import Engine, EngineParts
from shared.model.denoise import DenoiseJob, DenoiseModel
from shared.model.ops import ModelParts

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "serving"
PLOT = ROOT / "docs" / "img" / "serving-mixed.png"
CLASSES = {"txt2img-10": (10, False), "txt2img-25": (25, False), "txt2img-50": (50, False), "img2img-25": (25, True)}
POLICIES = {"continuous": ("continuous", 16), "equal": ("equal", 16), "one": ("continuous", 1)}
STRENGTH = 0.6


def _jobs(parts: ModelParts, view: EngineParts, n: int, seed: int) -> list[tuple[str, DenoiseJob]]:
    rng = np.random.default_rng(seed)
    conds = [parts.embed(p) for p in ("a red circle", "a blue square", "two yellow stars", "a green triangle")]
    size = parts.geometry.image_size
    init = parts.encode_images(torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(seed)))
    names = list(CLASSES)
    out = []
    for i in range(n):
        name = names[int(rng.integers(len(names)))]
        steps, img2img = CLASSES[name]
        out.append((name, DenoiseJob(cond=conds[i % len(conds)], steps=steps, guidance=parts.meg.guidance, seed=i,
                                     init_latent=init if img2img else None, strength=STRENGTH if img2img else 0.0)))
    return out


def _serve(engine: Engine, view: EngineParts, work: list[tuple[str, DenoiseJob]], arrivals: list[float]
           ) -> dict[str, Any]:
    """Send ``work`` at ``arrivals`` (seconds from now), one thread per request; latencies from the intended time."""
    lat: dict[str, list[float]] = {name: [] for name in CLASSES}
    t0 = time.perf_counter() + 0.05

    def one(name: str, job: DenoiseJob, due: float) -> None:
        view.decode_images(engine.submit(job))
        lat[name].append(time.perf_counter() - due)

    threads = []
    for (name, job), at in zip(work, arrivals, strict=True):
        due = t0 + at
        time.sleep(max(0.0, due - time.perf_counter()))
        t = threading.Thread(target=one, args=(name, job, due))
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    every = [x for xs in lat.values() for x in xs]
    row: dict[str, Any] = {"images_per_s": len(every) / wall, "wall_s": wall, "p50_s": float(np.percentile(every, 50)),
           "p99_s": float(np.percentile(every, 99)), "unet_calls": engine.unet_calls}
    row["per_class"] = {name: {"n": len(xs), "p50_s": float(np.percentile(xs, 50)), "p99_s": float(np.percentile(xs, 99))}
                        for name, xs in lat.items() if xs}
    return row


def plot(result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = result["arms"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [1, 2.2]})
    names = list(arms)
    ax1.bar(names, [arms[n]["images_per_s"] for n in names], color=["#4c72b0", "#dd8452", "#8c8c8c"])
    for i, n in enumerate(names):
        ax1.text(i, arms[n]["images_per_s"], f"{arms[n]['images_per_s']:.2f}", ha="center", va="bottom", fontsize=8)
    ax1.set(ylabel="images / s", title=f"offered {result['rate_per_s']:.2f}/s")
    x = np.arange(len(CLASSES))
    for k, (n, color) in enumerate(zip(names, ("#4c72b0", "#dd8452", "#8c8c8c"), strict=True)):
        pc = arms[n]["per_class"]
        p50 = [pc.get(c, {}).get("p50_s", np.nan) for c in CLASSES]
        p99 = [pc.get(c, {}).get("p99_s", np.nan) for c in CLASSES]
        ax2.bar(x + (k - 1) * 0.27, p99, width=0.27, color=color, alpha=0.35)
        ax2.bar(x + (k - 1) * 0.27, p50, width=0.27, color=color, label=f"{n} (p50; pale: p99)")
    ax2.set_xticks(x, list(CLASSES))
    ax2.set(ylabel="latency (s)", yscale="log", title="latency per class (from intended arrival)")
    ax2.legend(fontsize=7)
    fig.suptitle(f"meg-tiny, {result['requests']} open-loop requests, mixed 10/25/50-step txt2img + img2img", fontsize=9)
    fig.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=110)
    plt.close(fig)


def main(requests: int, load: float, quick: bool, seed: int = 0) -> dict[str, Any]:
    parts = ModelParts.load(None, "cpu")
    # one-at-a-time capacity: each class alone, once, on an engine of batch 1
    engine = Engine(lambda: DenoiseModel.from_parts(parts), max_batch=1, max_queue=1)
    view = EngineParts(parts, engine)
    calib = _jobs(parts, view, len(CLASSES) * 3, seed + 1)
    service: dict[str, list[float]] = {}
    for name, job in calib:
        t = time.perf_counter()
        view.decode_images(engine.submit(job))
        service.setdefault(name, []).append(time.perf_counter() - t)
    engine.close()
    mean_service = statistics.mean(statistics.median(v) for v in service.values())
    rate = load / mean_service
    work = _jobs(parts, view, requests, seed)
    gaps = np.random.default_rng(seed).exponential(1 / rate, size=requests)
    arrivals = list(np.cumsum(gaps) - gaps[0])
    arms = {}
    for name, (batching, max_batch) in POLICIES.items():
        engine = Engine(lambda: DenoiseModel.from_parts(parts), max_batch=max_batch, max_queue=requests,
                        batching=batching)
        view = EngineParts(parts, engine)
        try:
            arms[name] = _serve(engine, view, work, arrivals)
        finally:
            engine.close()
        print(f"{name}: {arms[name]['images_per_s']:.2f} images/s, p50 {arms[name]['p50_s']:.2f} s, "
              f"p99 {arms[name]['p99_s']:.2f} s", flush=True)
    result = {
        "what": "meg-tiny on one engine (in-process, CPU), open-loop Poisson arrivals, classes txt2img 10/25/50 "
                f"steps and img2img 25 steps at strength {STRENGTH}; a request = DDIM + VAE decode",
        "quick": quick, "requests": requests, "load_x_one_at_a_time_capacity": load, "rate_per_s": rate,
        "service_s_alone": {k: statistics.median(v) for k, v in service.items()}, "arms": arms,
        "load_average_at_end": os.getloadavg(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                    "python": sys.version.split()[0]},
    }
    out = OUT / ("mixed-quick.json" if quick else "mixed.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    if not quick:
        plot(result)
    return result


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=160)
    ap.add_argument("--load", type=float, default=1.5, help="offered load, times the one-at-a-time capacity")
    ap.add_argument("--quick", action="store_true", help="24 requests: a smoke, not a measurement")
    a = ap.parse_args()
    main(24 if a.quick else a.requests, a.load, a.quick)
