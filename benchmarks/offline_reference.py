"""The serving benchmarks' offline reference: the stock diffusers pipeline as a user runs it — a plain script,
the main thread, one ``StableDiffusionPipeline`` call with all the prompts (text encoder + DDIM + VAE decode).

``python benchmarks/offline_reference.py [--model DIR] [--prompts N] [--per-call N] [--steps S] [--repeats R]``
prints one JSON line: images/s and CPU-seconds of this process over the timed calls (the best of ``--repeats``
runs; loading and one warm-up call are not timed). ``--per-call 1`` is the one-at-a-time arm. Nothing here
imports MEG's serving code: only the loader, to read the same model folder.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline

from shared.model.loader import load_pipeline

PROMPTS = ["a red circle", "a blue square", "a green triangle", "two yellow stars", "a purple ring",
           "an orange cross", "a white diamond", "a small blue circle"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="pipeline folder (default: the embedded meg-tiny)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--per-call", type=int, default=0, help="prompts per call (default: all in one call)")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    pipe, meg = load_pipeline(args.model, args.device)
    pipe = StableDiffusionPipeline(**{**pipe.components, "scheduler": DDIMScheduler.from_config(pipe.scheduler.config),
                                      "safety_checker": None, "feature_extractor": None,
                                      "requires_safety_checker": False})
    pipe.set_progress_bar_config(disable=True)
    per_call = args.per_call or args.prompts
    size = meg.image_size or pipe.unet.config.sample_size * 2 ** (len(pipe.vae.config.block_out_channels) - 1)

    def calls() -> None:
        for c in range(0, args.prompts, per_call):
            n = min(per_call, args.prompts - c)
            pipe(prompt=[PROMPTS[(c + i) % len(PROMPTS)] for i in range(n)], num_inference_steps=args.steps,
                 guidance_scale=meg.guidance, height=size, width=size, output_type="pt",
                 generator=[torch.Generator("cpu").manual_seed(c + i) for i in range(n)])
            if pipe.device.type == "cuda":
                torch.cuda.synchronize()

    with torch.no_grad():
        pipe(prompt=PROMPTS[0], num_inference_steps=2, guidance_scale=meg.guidance, height=size, width=size,
             output_type="pt")  # warm-up
        best: dict[str, float] = {}
        for _ in range(args.repeats):
            c0, w0 = sum(os.times()[:2]), time.perf_counter()
            calls()
            wall, cpu = time.perf_counter() - w0, sum(os.times()[:2]) - c0
            if not best or wall < best["wall_s"]:
                best = {"wall_s": wall, "cpu_s": cpu}
    print(json.dumps({"images": args.prompts, "per_call": per_call, "steps": args.steps, **best,
                      "images_per_s": args.prompts / best["wall_s"], "images_per_cpu_s": args.prompts / best["cpu_s"],
                      "cores": best["cpu_s"] / best["wall_s"], "threads": torch.get_num_threads()}), flush=True)


if __name__ == "__main__":
    main()
