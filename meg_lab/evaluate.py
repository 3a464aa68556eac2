"""``meg-lab eval``: paper 2's evaluation (§V, Figs. 6–9, Table II) — PSNR and FID against the perfectly
received image, over SNR × scheme × channel.

Schemes, all sending one generated result over the same channel function the proxy uses
(:func:`shared.channel.transmit.transmit`, per-tensor power normalisation, zero-forcing receiver):

- ``centralized``: the ES sends the image pixels (Full-ES), ``H·W·3`` symbols;
- ``raw-latent``: the ES sends the denoised latent (EIUG at fc = 1), the UE decodes it;
- ``meg-paper`` / ``meg-residual`` at each fc: the ES sends the codec's seed (EIUG with C / C⁻¹);
- ``digital-png``: the digital baseline the papers skip (FULL-ES-PNG): the image as PNG bits at the MCS the
  SNR affords (:func:`shared.channel.mcs.select_mcs`, TS 38.214, the proxy's rule: the link's mean SNR picks
  it, ideal link adaptation) — exact after 8-bit rounding above MCS 0's threshold (−6.0 dB), **lost** below
  (``outage`` = 1, PSNR and FID empty: nothing arrived). ``digital_bytes`` is the PNGs' mean size.

The reference ("perfectly received") image of each prompt is the same generation over an ideal link.
Writes ``results.csv``, ``psnr_vs_snr.png``, ``fid_vs_snr.png``, ``psnr_fc_snr.png``, ``fid_fc_snr.png`` and
``table_ii.md`` (symbols per scheme and model sizes) into ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from shared.channel.mcs import select_mcs
from shared.channel.models import MODELS
from shared.channel.profiles import ChannelProfile
from shared.channel.transmit import transmit
from shared.model import vae
from shared.model.codec import FCS, SeedCodec, load_codecs
from shared.model.images import image_to_png, png_to_image, psnr

if TYPE_CHECKING:
    from shared.model.ops import ModelParts

COLUMNS = ("channel", "snr_db", "scheme", "design", "fc", "symbols", "psnr_db", "fid", "n", "outage", "digital_bytes")
COHERENCE = 64  # fading block length in symbols


@dataclass(frozen=True)
class Sweep:
    n: int
    snrs: tuple[float, ...]
    fcs: tuple[float, ...]
    channels: tuple[str, ...] = ("awgn", "rayleigh")
    fid: bool = True


FULL = Sweep(n=48, snrs=tuple(float(s) for s in range(-30, 31, 5)), fcs=FCS)
QUICK = Sweep(n=8, snrs=(-20.0, -10.0, 0.0, 10.0, 30.0), fcs=(0.5,))


@torch.no_grad()
def reference_set(parts: ModelParts, n: int, seed: int) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Held-out captions, their perfectly received latents ``[n, C, h, h]`` and images ``[n, 3, H, H]`` in [0, 1]."""
    from meg_lab import shapes

    prompts = [shapes.scene(seed, i, "eval").caption for i in range(n)]
    meg, size = parts.meg, parts.geometry.image_size
    latents = []
    for i in range(0, n, 32):
        out = parts.pipe(prompt=prompts[i:i + 32], num_inference_steps=meg.es_steps, guidance_scale=meg.guidance,
                         height=size, width=size, output_type="latent",
                         generator=torch.Generator("cpu").manual_seed(seed + i))
        latents.append(out.images.float().cpu())
    lat = torch.cat(latents)
    return prompts, lat, decode(parts, lat)


def decode(parts: ModelParts, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents ``[B, C, h, h]`` -> images ``[B, 3, H, H]`` in [0, 1] (the UE's D)."""
    return vae.to_unit(vae.decode(parts.pipe.vae, latents))


def send_each(x: torch.Tensor, profile: ChannelProfile, rng: np.random.Generator) -> torch.Tensor:
    """Send every item of the batch ``[B, ...]`` as its own transmission; returns what was received."""
    return torch.stack([torch.from_numpy(transmit(item.numpy(), profile, rng).received) for item in x])


def send_png(pngs: list[bytes], snr_db: float) -> torch.Tensor | None:
    """The digital baseline's downlink of PNG images at ``snr_db``: the images ``[B, 3, H, W]`` exactly as sent
    when the SNR affords an MCS, ``None`` (every image lost: the outage) below MCS 0's threshold."""
    if select_mcs(snr_db) is None:
        return None
    return torch.cat([png_to_image(p) for p in pngs])


def run(model: Path, out: Path, sweep: Sweep, seed: int = 0) -> list[dict[str, object]]:
    t0 = time.perf_counter()
    from shared.model.ops import ModelParts

    parts = ModelParts.load(str(model))
    codecs: dict[str, dict[float, SeedCodec]] = {d: load_codecs(model / "codec", d) for d in ("paper", "residual")}
    prompts, latents, images = reference_set(parts, sweep.n, seed)
    fid = None
    if sweep.fid:
        from meg_lab.fid import FID

        fid = FID(images * 2 - 1)
    schemes: list[tuple[str, str, float]] = [("centralized", "", 1.0), ("raw-latent", "", 1.0)]
    for design, table in codecs.items():
        schemes += [(f"meg-{design}", design, fc) for fc in sweep.fcs if fc in table]
    schemes.append(("digital-png", "", 1.0))
    seeds = {(d, fc): codecs[d][fc].encode(latents) for _, d, fc in schemes if d}
    pngs = [image_to_png(im) for im in images]
    png_bytes = round(sum(map(len, pngs)) / len(pngs))
    rows: list[dict[str, object]] = []
    for channel in sweep.channels:
        for snr in sweep.snrs:
            profile = ChannelProfile(model=channel, snr_db=snr, coherence_symbols=COHERENCE if MODELS[channel].fading else 0)
            for scheme, design, fc in schemes:
                rng = np.random.default_rng([seed, int(snr * 10) + 1000, len(rows)])
                if scheme == "digital-png":
                    got = send_png(pngs, snr)
                    rows.append({
                        "channel": channel, "snr_db": snr, "scheme": scheme, "design": "-", "fc": fc, "symbols": 0,
                        "psnr_db": float("nan") if got is None else round(psnr(got, images, per_image=True, max_db=100.0), 3),
                        "fid": round(fid(got * 2 - 1), 3) if fid and got is not None else float("nan"), "n": sweep.n,
                        "outage": 1.0 if got is None else 0.0, "digital_bytes": png_bytes,
                    })
                    continue
                if scheme == "centralized":
                    received, symbols = send_each(images, profile, rng).clamp(0, 1), images[0].numel()
                elif scheme == "raw-latent":
                    received, symbols = decode(parts, send_each(latents, profile, rng)), latents[0].numel()
                else:
                    s = seeds[design, fc]
                    with torch.no_grad():
                        z = codecs[design][fc].decode(send_each(s, profile, rng)).reshape(latents.shape)
                    received, symbols = decode(parts, z), s[0].numel()
                rows.append({
                    "channel": channel, "snr_db": snr, "scheme": scheme, "design": design or "-", "fc": fc,
                    "symbols": int(symbols), "psnr_db": round(psnr(received, images, per_image=True, max_db=100.0), 3),
                    "fid": round(fid(received * 2 - 1), 3) if fid else float("nan"), "n": sweep.n,
                    "outage": 0.0, "digital_bytes": 0,
                })
        print(f"{channel}: done in {time.perf_counter() - t0:.0f}s", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "results.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    plot(rows, out)
    write_table_ii(parts, codecs, model, out)
    (out / "run.json").write_text(json.dumps({"seconds": round(time.perf_counter() - t0, 1), "n": sweep.n,
                                              "snrs": sweep.snrs, "fcs": sweep.fcs, "prompts": prompts[:8]}, indent=2))
    return rows


def _style(scheme: str, fc: float) -> dict[str, object]:
    """Black pixels, red raw latent, blues (dashed) for the paper codec, greens for the residual one;
    darker = higher fc."""
    import matplotlib

    if scheme == "centralized":
        return {"color": "black", "linestyle": "-"}
    if scheme == "raw-latent":
        return {"color": "tab:red", "linestyle": "-", "linewidth": 2}
    if scheme == "digital-png":  # the cliff: a step at MCS 0's threshold
        return {"color": "tab:orange", "linestyle": ":", "linewidth": 2, "drawstyle": "steps-post"}
    cmap = matplotlib.colormaps["Blues" if scheme == "meg-paper" else "Greens"]
    return {"color": cmap(0.35 + 0.6 * fc), "linestyle": "--" if scheme == "meg-paper" else "-"}


def plot(rows: list[dict[str, object]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    channels = sorted({str(r["channel"]) for r in rows})
    labels = sorted({(str(r["scheme"]), float(r["fc"])) for r in rows}, key=lambda s: (s[0] != "centralized", s[0], s[1]))
    for metric, fname, ylabel in (("psnr_db", "psnr_vs_snr.png", "PSNR vs perfect image (dB)"),
                                  ("fid", "fid_vs_snr.png", "FID vs perfect images")):
        fig, axes = plt.subplots(1, len(channels), figsize=(6 * len(channels), 4.2), squeeze=False)
        for ax, ch in zip(axes[0], channels):
            for scheme, fc in labels:
                pts = sorted((float(r["snr_db"]), float(r[metric])) for r in rows
                             if r["channel"] == ch and r["scheme"] == scheme and float(r["fc"]) == fc)
                if not pts or all(np.isnan(v) for _, v in pts):
                    continue
                name = scheme if scheme in ("centralized", "raw-latent", "digital-png") else f"{scheme} fc={fc:g}"
                ax.plot(*zip(*pts), **_style(scheme, fc), marker="o", ms=3, label=name)
            ax.set_title(f"{ch.upper()}" + (f" (block fading, L={COHERENCE})" if MODELS[ch].fading else ""))
            ax.set_xlabel("SNR (dB)")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=7, ncol=2)
        fig.tight_layout()
        fig.savefig(out / fname, dpi=90)
        plt.close(fig)
    # Figs. 8-9: metric over (fc, SNR) for the MEG codecs on AWGN
    for metric, fname in (("psnr_db", "psnr_fc_snr.png"), ("fid", "fid_fc_snr.png")):
        designs = sorted({str(r["design"]) for r in rows if str(r["scheme"]).startswith("meg-")})
        if not designs:
            continue
        fig, axes = plt.subplots(1, len(designs), figsize=(5.5 * len(designs), 4), squeeze=False)
        for ax, design in zip(axes[0], designs):
            sel = [r for r in rows if r["design"] == design and r["channel"] == "awgn"]
            fcs = sorted({float(r["fc"]) for r in sel})
            snrs = sorted({float(r["snr_db"]) for r in sel})
            grid = np.full((len(snrs), len(fcs)), np.nan)
            for r in sel:
                grid[snrs.index(float(r["snr_db"])), fcs.index(float(r["fc"]))] = float(r[metric])
            im = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis" if metric == "psnr_db" else "magma_r",
                           extent=(min(fcs) - 0.1, max(fcs) + 0.1, min(snrs) - 2.5, max(snrs) + 2.5))
            ax.set_xlabel("compression rate fc")
            ax.set_ylabel("SNR (dB)")
            ax.set_title(f"meg-{design}, AWGN: {'PSNR (dB)' if metric == 'psnr_db' else 'FID'}")
            fig.colorbar(im, ax=ax)
        fig.tight_layout()
        fig.savefig(out / fname, dpi=90)
        plt.close(fig)


def write_table_ii(parts: ModelParts, codecs: dict[str, dict[float, SeedCodec]], model: Path, out: Path) -> None:
    g = parts.geometry
    base = sum(p.numel() for m in (parts.pipe.unet, parts.pipe.vae, parts.pipe.text_encoder) for p in m.parameters())
    lines = ["| scheme | transmitted symbols | model parameters |", "|---|---:|---:|",
             f"| centralized (pixels {g.image_size}×{g.image_size}×3) | {g.symbols('image'):,} | {base:,} |",
             f"| raw latent | {g.latent_values:,} | {base:,} |"]
    for design, table in codecs.items():
        for fc, codec in sorted(table.items()):
            lines.append(f"| MEG {design} fc={fc:g} | {codec.cfg.k:,} | {base + codec.parameters_count():,} |")
    (out / "table_ii.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    """``meg-lab eval ARGS`` as a function."""
    parser = argparse.ArgumentParser(prog="meg-lab eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run_cli(parser.parse_args(argv))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``meg-lab eval``."""
    parser.add_argument("--out", required=True, help="folder for results.csv, plots and table_ii.md")
    parser.add_argument("--model", help="StableDiffusionPipeline folder with codec/ (default: embedded meg-tiny)")
    parser.add_argument("--quick", action="store_true", help="8 prompts, 5 SNRs, fc 0.5 (about a minute)")
    parser.add_argument("--n", type=int, help="prompts per cell (default 48)")
    parser.add_argument("--no-fid", action="store_true", help="PSNR only")
    parser.add_argument("--seed", type=int, default=0)


def run_cli(args: argparse.Namespace) -> int:
    """Run the sweep of the parsed flags and write everything into ``args.out``."""
    sweep = QUICK if args.quick else FULL
    if args.n:
        sweep = Sweep(args.n, sweep.snrs, sweep.fcs, sweep.channels, sweep.fid)
    if args.no_fid:
        sweep = Sweep(sweep.n, sweep.snrs, sweep.fcs, sweep.channels, False)
    from shared.model.loader import default_model_path

    model = Path(args.model) if args.model else default_model_path()
    run(model, Path(args.out), sweep, args.seed)
    print(f"wrote {args.out}/results.csv and plots")
    return 0
