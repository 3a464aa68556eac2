"""``meg-lab train-power``: train the PPO power controller (paper 2, Alg. 3) with stable-baselines3.

The environment is :class:`meg_lab.power_env.PowerEnv` (one seed download per episode at ``--snr-db`` over
``--fading``: Rayleigh block fading, flat per-seed Rayleigh gains (a seed in one PRB of a TDL trace) or a mix of
both; budgets drawn log-uniformly over [0.2, 5] unless ``--budget`` fixes one; actions mapped to powers by
``--action-rule``, whose action ``1/2`` is uniform power),
the seeds are VAE-encoded procedural renders of the ``train`` stream of ``meg_lab.shapes``, and the reward is
the PSNR gain over uniform power (same fading and noise). The saved file is an ordinary SB3 ``PPO`` zip
with the training settings in its ``meg_power`` attribute; load it with
:func:`shared.channel.power_ppo.load_ppo_policy`.

Deterministic for a given ``--seed`` and ``--threads`` on one machine (SB3 seeding, one environment).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from shared.channel.power import P_MAX, P_MAX_FACTOR
from shared.channel.power_ppo import (
    ACTION_RULES,
    DEFAULT_ACTION_RULE,
    DEFAULT_COHERENCE,
    DEFAULT_POLICY_PATH,
    DEFAULT_SNR_DB,
    UNIFORM_ACTION,
)


def default_model() -> str | None:
    from shared.model.loader import MEG_TINY_DIR

    return str(MEG_TINY_DIR) if (MEG_TINY_DIR / "model_index.json").exists() else None


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The flags of ``meg-lab train-power``."""
    ap.add_argument("--model", default=None, help="StableDiffusionPipeline folder (default: the embedded meg-tiny)")
    ap.add_argument("--out", default=str(DEFAULT_POLICY_PATH), help="policy file to write (.zip)")
    ap.add_argument("--timesteps", type=int, default=320_000, help="environment steps (one per fading block)")
    ap.add_argument("--snr-db", type=float, default=DEFAULT_SNR_DB, help="link SNR at unit power (dB)")
    ap.add_argument("--coherence", type=int, default=DEFAULT_COHERENCE, help="fading/power block length, symbols")
    ap.add_argument("--budget", type=float, default=None,
                    help="fixed average power budget per symbol (default: log-uniform over [0.2, 5] per episode)")
    ap.add_argument("--fading", choices=("block", "flat", "mix"), default="mix",
                    help="block: Rayleigh per block; flat: one Rayleigh gain per seed (TDL, seed in one PRB); mix: 1/2 each")
    ap.add_argument("--action-rule", choices=ACTION_RULES, default=DEFAULT_ACTION_RULE,
                    help="share: a = 1/2 is the fair share (uniform), 0 drops, 1 the cap; pmax: a * 4 * budget (v1)")
    ap.add_argument("--latents", type=int, default=512, help="training seeds (renders of the train stream)")
    ap.add_argument("--reward", choices=("psnr", "psnr_abs"), default="psnr",
                    help="psnr: PSNR gain over uniform power (same noise); psnr_abs: PSNR")
    ap.add_argument("--lr", type=float, default=3e-4, help="PPO learning rate")
    ap.add_argument("--n-steps", type=int, default=2048, help="PPO rollout length (steps per update)")
    ap.add_argument("--log-std", type=float, default=-1.6, help="initial log std of the Gaussian action")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--device", default="cpu", help="device of the VAE decoder (the PPO net stays on CPU)")


def train(args: argparse.Namespace, log=print) -> Path:
    import numpy as np
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.logger import Logger
    from stable_baselines3.common.monitor import Monitor

    from meg_lab.power_env import PowerEnv, make_latent_set
    from shared.model.loader import load_pipeline

    torch.set_num_threads(max(1, args.threads))
    model_path = args.model or default_model()
    if model_path is None:
        raise SystemExit("no --model given and the embedded meg-tiny weights are not installed")
    t0 = time.time()
    pipe, _ = load_pipeline(model_path, device=args.device)
    data = make_latent_set(pipe, args.latents, stream="train", seed=args.seed)
    env = Monitor(PowerEnv(data, snr_db=args.snr_db, coherence=args.coherence,
                           budgets=None if args.budget is None else [args.budget], reward=args.reward,
                           fading=args.fading, action_rule=args.action_rule))
    env.reset(seed=args.seed)
    inner = env.unwrapped
    log(f"model {model_path}: {len(data.latents)} seeds of {inner.n} symbols, T = {inner.T} blocks of "
        f"{args.coherence}, SNR {args.snr_db} dB, {args.fading} fading, rule {args.action_rule} "
        f"({time.time() - t0:.1f} s to prepare)")
    model = PPO(
        "MlpPolicy", env, seed=args.seed, device="cpu", verbose=0,
        n_steps=args.n_steps, batch_size=256, n_epochs=10, learning_rate=args.lr, gamma=1.0, gae_lambda=0.95,
        clip_range=0.2, ent_coef=0.0,
        policy_kwargs={"net_arch": {"pi": [64, 64], "vf": [64, 64]}, "log_std_init": args.log_std},
    )
    model.set_logger(Logger(folder=None, output_formats=[]))  # no SB3 log folders in /tmp
    with torch.no_grad():  # start at uniform power: the mean action is the rule's uniform action at every budget
        model.policy.action_net.weight.mul_(0.1)
        model.policy.action_net.bias.fill_(UNIFORM_ACTION[args.action_rule])
    model.meg_power = {
        "snr_db": args.snr_db, "coherence": args.coherence, "p_max_factor": P_MAX_FACTOR, "p_max": P_MAX,
        "action_rule": args.action_rule, "fading": args.fading,
        "budget": args.budget, "reward": args.reward, "model": str(model_path), "symbols": inner.n,
        "blocks": inner.T, "timesteps": args.timesteps, "seed": args.seed, "lr": args.lr, "n_steps": args.n_steps,
        "log_std": args.log_std,
    }
    t1 = time.time()
    chunk = max(args.timesteps // 10, args.n_steps)
    done = 0
    while done < args.timesteps:
        step = min(chunk, args.timesteps - done)
        model.learn(total_timesteps=step, reset_num_timesteps=False)
        done += step
        rets = env.get_episode_rewards()[-200:]
        log(f"  {done:>7} steps  {time.time() - t1:6.0f} s  mean reward (last {len(rets)} eps) "
            f"{np.mean(rets) if rets else float('nan'):+.4f}  (PSNR gain over uniform / 10 dB)")
    model.meg_power["train_seconds"] = round(time.time() - t1, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(str(out))
    out.with_suffix(".json").write_text(json.dumps(model.meg_power, indent=2) + "\n")
    log(f"saved {out} ({out.stat().st_size / 1024:.0f} KiB) after {time.time() - t1:.0f} s of training")
    return out


def main(argv: list[str] | None = None) -> int:
    """``meg-lab train-power ARGS`` as a function."""
    ap = argparse.ArgumentParser(prog="meg-lab train-power", description=__doc__.split("\n\n")[0])
    add_arguments(ap)
    return run(ap.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Train and save the policy of the parsed flags."""
    train(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
