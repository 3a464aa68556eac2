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

Channels (``--channels``): ``awgn`` and ``rayleigh`` (block fading, L = 64 symbols), the default; and the
3GPP TR 38.901 models ``tdl-a`` … ``tdl-e``, ``cdl-a`` … ``cdl-e`` at each of ``--speeds`` km/h (default 3, 30,
120): a Sionna trace made as ``meg-lab make-trace`` makes it (3.5 GHz, 20 MHz, numerology 1, per PRB, 100 ns
delay spread, ``--trace-seconds`` long, Sionna seed ``--seed``; cached in ``OUT/traces/``), each result replayed
on it by a lone UE of the cell (consecutive REs of the whole carrier, slot after slot, with
``shared.channel.trace.transmit_on_grid``, the proxy's replay). Their rows' ``channel`` is e.g.
``tdl-c@120kmh``. On a trace the digital baseline's MCS is still the mean SNR's, and each slot's transport
block is lost when its effective SNR (MIESM with Shannon's gapped rate) falls below that MCS's threshold:
``outage`` is then the fraction of images lost, PSNR and FID are over the delivered ones (details:
:mod:`meg_lab.eval_channels`).

The reference ("perfectly received") image of each prompt is the same generation over an ideal link.
Writes ``results.csv``, ``psnr_vs_snr.png``, ``fid_vs_snr.png`` (one panel per channel), ``psnr_fc_snr.png``,
``fid_fc_snr.png`` (AWGN only) and ``table_ii.md`` (symbols per scheme and model sizes) into ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from meg_lab.eval_channels import (
    BASIC_CHANNELS,
    DEFAULT_SPEEDS,
    LoneUe,
    TraceSpec,
    parse_channels,
    send_png_on_trace,
    trace_for,
)
from shared.channel.mcs import select_mcs
from shared.channel.models import MODELS, ChannelConfigError
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
    #: a basic channel's name, or a 3GPP trace (:class:`meg_lab.eval_channels.TraceSpec`)
    channels: tuple[str | TraceSpec, ...] = BASIC_CHANNELS
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


def send_on_trace(x: torch.Tensor, ue: LoneUe, snr_db: float, rng: np.random.Generator) -> torch.Tensor:
    """Send item ``i`` of the batch ``[B, ...]`` as the lone UE's transmission ``i`` on its trace."""
    return torch.stack([torch.from_numpy(ue.send(item.numpy(), i, snr_db, rng)) for i, item in enumerate(x)])


def _sender(ue: LoneUe | None, profile: ChannelProfile | None, snr_db: float,
            rng: np.random.Generator) -> Callable[[torch.Tensor], torch.Tensor]:
    """What sends a batch on this row's channel: the lone UE's trace, else the profile's block fading."""
    if ue is not None:
        return lambda x: send_on_trace(x, ue, snr_db, rng)
    assert profile is not None
    return lambda x: send_each(x, profile, rng)


def send_png(pngs: list[bytes], snr_db: float) -> torch.Tensor | None:
    """The digital baseline's downlink of PNG images at ``snr_db``: the images ``[B, 3, H, W]`` exactly as sent
    when the SNR affords an MCS, ``None`` (every image lost: the outage) below MCS 0's threshold."""
    if select_mcs(snr_db) is None:
        return None
    return torch.cat([png_to_image(p) for p in pngs])


def run(model: Path, out: Path, sweep: Sweep, seed: int = 0, command: str = "") -> list[dict[str, Any]]:
    """Evaluate every scheme on every channel × SNR of ``sweep``; write results.csv, the plots, table_ii.md and
    run.json (with ``command``) into ``out``; return the rows."""
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
    rows: list[dict[str, Any]] = []
    traces: dict[str, dict[str, Any]] = {}
    subset_fid: dict[tuple[int, ...], float] = {}  # the digital baseline's FID by the set of images delivered
    for spec in sweep.channels:
        ue = None
        if isinstance(spec, TraceSpec):
            tr = trace_for(spec, out / "traces")
            ue = LoneUe(tr, sweep.n)
            traces[spec.label] = {"file": str(out / "traces" / spec.file_name), "generator": tr.meta.generator,
                                  "make_trace": spec.command(spec.file_name), "slots": tr.slots,
                                  "prbs": tr.meta.prbs, "doppler_hz": round(float(tr.meta.extra.get("doppler_hz", 0)), 2),
                                  "start_slots": ue.starts}
        channel = spec.label if isinstance(spec, TraceSpec) else spec
        for snr in sweep.snrs:
            profile = None if ue else ChannelProfile(model=channel, snr_db=snr,
                                                     coherence_symbols=COHERENCE if MODELS[channel].fading else 0)
            for scheme, design, fc in schemes:
                rng = np.random.default_rng([seed, int(snr * 10) + 1000, len(rows)])
                send = _sender(ue, profile, snr, rng)
                if scheme == "digital-png" and ue is not None:
                    ok = send_png_on_trace(ue, [len(p) for p in pngs], snr)
                    keep = [i for i, d in enumerate(ok) if d]
                    got = torch.cat([png_to_image(pngs[i]) for i in keep]) if keep else None
                    if fid and got is not None and len(keep) >= 2 and tuple(keep) not in subset_fid:
                        subset_fid[tuple(keep)] = round(fid(got * 2 - 1), 3)  # the same images: the same FID
                    rows.append({
                        "channel": channel, "snr_db": snr, "scheme": scheme, "design": "-", "fc": fc, "symbols": 0,
                        "psnr_db": float("nan") if got is None else round(psnr(got, images[keep], per_image=True, max_db=100.0), 3),
                        "fid": subset_fid.get(tuple(keep), float("nan")),
                        "n": sweep.n, "outage": round(1.0 - len(keep) / len(ok), 4), "digital_bytes": png_bytes,
                    })
                    continue
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
                    received, symbols = send(images).clamp(0, 1), images[0].numel()
                elif scheme == "raw-latent":
                    received, symbols = decode(parts, send(latents)), latents[0].numel()
                else:
                    s = seeds[design, fc]
                    with torch.no_grad():
                        z = codecs[design][fc].decode(send(s)).reshape(latents.shape)
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
    plot(rows, out, {s.label: s.title for s in sweep.channels if isinstance(s, TraceSpec)})
    write_table_ii(parts, codecs, model, out)
    info: dict[str, object] = {"seconds": round(time.perf_counter() - t0, 1), "n": sweep.n, "snrs": sweep.snrs,
                               "fcs": sweep.fcs, "prompts": prompts[:8]}
    if traces:  # the 3GPP runs say what they ran (the basic runs' run.json keeps its old keys)
        info = {"command": command, **info, "fid": sweep.fid, "seed": seed,
                "channels": [s.label if isinstance(s, TraceSpec) else s for s in sweep.channels], "traces": traces}
    (out / "run.json").write_text(json.dumps(info, indent=2))
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


def plot(rows: list[dict[str, Any]], out: Path, titles: dict[str, str] | None = None) -> None:
    """PSNR and FID vs SNR, one panel per channel (``titles``: the 3GPP channels' panel titles by label; with
    any, panels follow the sweep's order, a row per model and a column per speed), and the fc × SNR maps (AWGN)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = titles or {}
    seen = list(dict.fromkeys(str(r["channel"]) for r in rows))
    channels = seen if titles else sorted(seen)
    ncols = len(channels)
    if titles:  # a column per speed: the speeds of the first model
        models = [c.split("@")[0] for c in channels if c in titles]
        ncols = max(1, models.count(models[0]))
    nrows = math.ceil(len(channels) / ncols)
    labels = sorted({(str(r["scheme"]), float(r["fc"])) for r in rows}, key=lambda s: (s[0] != "centralized", s[0], s[1]))
    for metric, fname, ylabel in (("psnr_db", "psnr_vs_snr.png", "PSNR vs perfect image (dB)"),
                                  ("fid", "fid_vs_snr.png", "FID vs perfect images")):
        size = (6 * ncols, 4.2 * nrows) if not titles else (4.6 * ncols, 3.3 * nrows)
        fig, axes = plt.subplots(nrows, ncols, figsize=size, squeeze=False)
        flat = list(axes.reshape(-1))
        extra: list[Any] = []  # the first panel's outage line, for the legend
        for ax, ch in zip(flat, channels):
            for scheme, fc in labels:
                pts = sorted((float(r["snr_db"]), float(r[metric])) for r in rows
                             if r["channel"] == ch and r["scheme"] == scheme and float(r["fc"]) == fc)
                if not pts or all(np.isnan(v) for _, v in pts):
                    continue
                name = scheme if scheme in ("centralized", "raw-latent", "digital-png") else f"{scheme} fc={fc:g}"
                if scheme == "digital-png" and ch in titles:
                    name += " (delivered)"
                ax.plot(*zip(*pts), **_style(scheme, fc), marker="o", ms=3, label=name)
            if ch in titles:
                line = _plot_outage(ax, rows, ch)
                if ax is flat[0] and line is not None:
                    extra.append(line)
                ax.set_title(f"{titles[ch]} (lone UE, perfect CSI)", fontsize=9)
            else:
                ax.set_title(f"{ch.upper()}" + (f" (block fading, L={COHERENCE})" if MODELS[ch].fading else ""))
            ax.set_xlabel("mean SNR (dB)" if ch in titles else "SNR (dB)")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
        for ax in flat[len(channels):]:
            ax.set_visible(False)
        handles, names = flat[0].get_legend_handles_labels()
        if handles:
            flat[0].legend(handles + extra, names + [h.get_label() for h in extra], fontsize=6 if titles else 7, ncol=2)
        fig.tight_layout()
        fig.savefig(out / fname, dpi=72 if titles else 90)
        plt.close(fig)
        if titles:  # nine panels: a 256-colour palette keeps the file small enough for the README (< 200 KB)
            from PIL import Image

            with Image.open(out / fname) as im:
                small = im.convert("RGB").quantize(256)
            small.save(out / fname, optimize=True)
    # Figs. 8-9: metric over (fc, SNR) for the MEG codecs on AWGN
    for metric, fname in (("psnr_db", "psnr_fc_snr.png"), ("fid", "fid_fc_snr.png")):
        designs = sorted({str(r["design"]) for r in rows if str(r["scheme"]).startswith("meg-") and r["channel"] == "awgn"})
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


def _plot_outage(ax: Any, rows: list[dict[str, Any]], channel: str) -> Any:
    """The digital baseline's lost images (%) on a twin axis of a 3GPP panel."""
    pts = sorted((float(r["snr_db"]), 100 * float(r["outage"])) for r in rows
                 if r["channel"] == channel and r["scheme"] == "digital-png")
    if not pts:
        return None
    twin = ax.twinx()
    (line,) = twin.plot(*zip(*pts), color="tab:orange", alpha=0.45, linewidth=1, marker="x", ms=3, label="digital-png lost (%)")
    twin.set_ylim(-3, 103)
    twin.set_ylabel("digital images lost (%)", fontsize=7, color="tab:orange")
    twin.tick_params(axis="y", labelsize=7, colors="tab:orange")
    return line


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
    parser.add_argument("--seed", type=int, default=0, help="prompts, noise and the 3GPP traces' Sionna seed")
    parser.add_argument("--channels", default=",".join(BASIC_CHANNELS),
                        help="comma-separated: awgn, rayleigh (block fading, L=64), and the TR 38.901 traces "
                             "tdl-a..tdl-e, cdl-a..cdl-e (each at every --speeds; needs Sionna). Default awgn,rayleigh")
    parser.add_argument("--speeds", default=",".join(f"{v:g}" for v in DEFAULT_SPEEDS),
                        help="UE speeds in km/h of the 3GPP channels (default 3,30,120)")
    parser.add_argument("--snrs", help="comma-separated SNRs in dB, or START:STOP:STEP; write --snrs=-10:30:5 when it starts with a minus (default -30:30:5; --quick "
                                       "-20,-10,0,10,30)")
    parser.add_argument("--fcs", help="comma-separated compression rates of the MEG codecs (default all shipped; "
                                      "--quick 0.5)")
    parser.add_argument("--trace-seconds", type=float, default=2.0,
                        help="length of each 3GPP trace (3.5 GHz, 20 MHz, numerology 1, per PRB; cached in OUT/traces)")


def parse_floats(text: str, flag: str) -> tuple[float, ...]:
    """``a,b,c`` or ``start:stop:step`` (stop included) -> floats; SystemExit naming ``flag`` otherwise."""
    try:
        if ":" in text:
            start, stop, step = (float(v) for v in text.split(":"))
            if not step > 0 or stop < start:
                raise ValueError
            k = math.floor((stop - start) / step + 1e-9)
            values = tuple(round(start + i * step, 6) for i in range(k + 1))
        else:
            values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise SystemExit(f"meg-lab eval: {flag} must be comma-separated numbers or START:STOP:STEP, got {text!r}") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise SystemExit(f"meg-lab eval: {flag} must name finite numbers, got {text!r}")
    return values


def argv_is_eval() -> bool:
    """Whether this process was started as ``meg-lab eval ...`` (so ``sys.argv[2:]`` are its flags)."""
    return len(sys.argv) > 1 and sys.argv[1] == "eval"


def sweep_from_args(args: argparse.Namespace) -> Sweep:
    """The sweep the parsed flags ask for (no flags: :data:`FULL`; ``--quick``: :data:`QUICK`); SystemExit naming
    the flag for a bad value or an unknown channel."""
    sweep = QUICK if args.quick else FULL
    if not (math.isfinite(args.trace_seconds) and args.trace_seconds > 0):
        raise SystemExit(f"meg-lab eval: --trace-seconds must be > 0, got {args.trace_seconds}")
    if args.n is not None and args.n < 2:
        raise SystemExit(f"meg-lab eval: --n must be at least 2 prompts, got {args.n}")
    try:
        channels = tuple(parse_channels(args.channels, parse_floats(args.speeds, "--speeds"),
                                        seconds=args.trace_seconds, seed=args.seed))
    except ChannelConfigError as exc:
        raise SystemExit(f"meg-lab eval: {exc}") from None
    return Sweep(args.n or sweep.n, parse_floats(args.snrs, "--snrs") if args.snrs else sweep.snrs,
                 parse_floats(args.fcs, "--fcs") if args.fcs else sweep.fcs, channels, sweep.fid and not args.no_fid)


def run_cli(args: argparse.Namespace) -> int:
    """Run the sweep of the parsed flags and write everything into ``args.out``."""
    sweep = sweep_from_args(args)
    from shared.model.loader import default_model_path

    model = Path(args.model) if args.model else default_model_path()
    command = shlex.join(["meg-lab", *sys.argv[1:]]) if argv_is_eval() else ""
    run(model, Path(args.out), sweep, args.seed, command)
    print(f"wrote {args.out}/results.csv and plots")
    return 0
