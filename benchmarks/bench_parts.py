"""What batching each cheap part saves: 16 requests' text encodes, VAE encodes, VAE decodes and seed-codec calls,
one at a time vs one batched call (meg-tiny, CPU, main thread; the engine runs them batched: ``EngineParts``).

``python -m benchmarks.bench_parts [--n 16] [--repeats 5] [--quick]`` -> ``benchmarks/results/serving/parts.json``
(``parts-quick.json``): per part, milliseconds per request one at a time and batched (best of the repeats), and
the fraction saved. With the 25-step UNet loop costing far more per request, these are the small terms; the
point is that none of them is a per-request cost the engine pays N times.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from shared.model.ops import ModelParts

OUT = Path(__file__).resolve().parent / "results" / "serving"


def _best(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main(n: int, repeats: int, quick: bool) -> dict[str, Any]:
    parts = ModelParts.load(None, "cpu")
    g = parts.geometry
    gen = torch.Generator().manual_seed(0)
    prompts = [f"a red circle number {i}" for i in range(n)]
    images = torch.rand(n, 3, g.image_size, g.image_size, generator=gen)
    latents = torch.randn(n, g.latent_channels, g.latent_size, g.latent_size, generator=gen)
    fc = parts.codec_rates()[len(parts.codec_rates()) // 2] if parts.codec_rates() else None
    cases: dict[str, tuple[Callable[[], object], Callable[[], object]]] = {
        "text encoder": (lambda: [parts.embed_batch([p]) for p in prompts], lambda: parts.embed_batch(prompts)),
        "VAE encoder": (lambda: [parts.encode_images(images[i:i + 1]) for i in range(n)],
                        lambda: parts.encode_images(images)),
        "VAE decoder": (lambda: [parts.decode_images(latents[i:i + 1]) for i in range(n)],
                        lambda: parts.decode_images(latents)),
    }
    if fc is not None:
        seeds = parts.compress(fc, latents)
        cases[f"codec encode fc={fc:g}"] = (lambda: [parts.compress(fc, latents[i:i + 1]) for i in range(n)],
                                            lambda: parts.compress(fc, latents))
        cases[f"codec decode fc={fc:g}"] = (lambda: [parts.decompress(fc, seeds[i:i + 1]) for i in range(n)],
                                            lambda: parts.decompress(fc, seeds))
    rows = {}
    with torch.no_grad():
        for name, (one, batched) in cases.items():
            one(), batched()  # warm-up
            t1, tb = _best(one, repeats), _best(batched, repeats)
            rows[name] = {"ms_per_request_one_at_a_time": 1e3 * t1 / n, "ms_per_request_batched": 1e3 * tb / n,
                          "saved": 1 - tb / t1}
            print(f"{name:22s} one at a time {1e3 * t1 / n:7.2f} ms/request, batched {1e3 * tb / n:7.2f} "
                  f"({100 * (1 - tb / t1):.0f}% saved)", flush=True)
    result = {"what": f"meg-tiny on the CPU, {n} requests, best of {repeats}", "n": n, "parts": rows,
              "threads": torch.get_num_threads(), "load_average": os.getloadavg(), "quick": quick}
    out = OUT / ("parts-quick.json" if quick else "parts.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="2 repeats: a smoke")
    a = ap.parse_args()
    main(a.n, 2 if a.quick else a.repeats, a.quick)
