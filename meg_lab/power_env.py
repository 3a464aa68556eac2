"""Gymnasium environment for the PPO power controller (paper 2, §IV, Alg. 3): one seed download per episode.

An episode draws a seed (a latent of the set, optionally through a seed codec), a power budget and a
fading realisation ``h [T]`` (``fading``): ``"block"``: Rayleigh block fading, one independent draw per block
(``shared.channel.models.Rayleigh``); ``"flat"``: one Rayleigh draw for every block of the seed — what a seed that
fits in one PRB of one slot sees on a TDL/CDL trace (``shared.channel.trace.block_gains``: TDL-A's per-RE gain is
Rayleigh with ``E|H|² = 1``); ``"mix"``: either, with probability 1/2 each. Step ``t`` observes block ``t``
(:func:`shared.channel.power_ppo.observation`: ``h_t``, the block's signal energy, the energy left, ``t / T``, the
effective SNR) and turns the action ``a_t ∈ [0, 1]`` into ``p_t`` with
:func:`shared.channel.power_ppo.action_to_power` under ``action_rule`` (``"share"``: ``a = 1/2`` is uniform power,
0 drops the block, 1 is the cap ``min(4 · budget, P_MAX)``; the last block takes what is left). After the last block the seed is sent through :func:`shared.channel.transmit.transmit` with exactly those
powers and fading (zero-forcing receiver), decoded to an image by the real VAE decoder, and compared with the
perfectly received image (precomputed once per latent).

Reward (only at the end, 0 before): PSNR-based. ``reward="psnr"`` (default) gives
``(PSNR(policy) − PSNR(uniform)) / 10`` where the uniform allocation sees the same seed, fading and noise
(common random numbers): the uniform term does not depend on the actions, so the optimal policy is that of
``−distortion`` in dB, but the reward's variance is much lower. ``reward="psnr_abs"`` gives ``PSNR / 10 − 2``.
PSNR uses images in ``[-1, 1]`` (peak-to-peak 2): ``10 log10(4 / MSE)``, capped at :data:`MAX_PSNR`
(:func:`shared.model.images.psnr_from_mse`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import ClassVar

import gymnasium as gym
import numpy as np
import torch

from shared.channel.models import Rayleigh
from shared.channel.power import block_sizes, uniform
from shared.channel.power_ppo import (
    ACTION_RULES,
    DEFAULT_ACTION_RULE,
    OBS_DIM,
    OBS_HIGH,
    OBS_LOW,
    action_to_power,
    observation,
)
from shared.channel.profiles import ChannelProfile
from shared.channel.transmit import transmit
from shared.model import vae as vae_lib
from shared.model.images import psnr_from_mse

#: Budgets (average power per symbol, 1 = the profile's SNR) evaluated; training draws log-uniformly
#: over ``[TRAIN_BUDGET_RANGE]``.
EVAL_BUDGETS: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
TRAIN_BUDGET_RANGE: tuple[float, float] = (0.2, 5.0)
#: Fading an episode can draw (module docstring).
FADINGS: tuple[str, ...] = ("block", "flat", "mix")
MAX_PSNR = 60.0

SeedEncode = Callable[[np.ndarray], np.ndarray]  # latent [C, H, W] -> flat real symbols [n]
SeedDecode = Callable[[np.ndarray], np.ndarray]  # received symbols [n] -> latent [C, H, W]


#: PSNR in dB of image MSEs (images in ``[-1, 1]``), capped at :data:`MAX_PSNR`.
image_psnr = partial(psnr_from_mse, data_range=2.0, max_db=MAX_PSNR)


@dataclass
class LatentSet:
    """Seeds and what the UE would get from them: ``latents [N, C, H, W]`` (scaled by the VAE's
    ``scaling_factor``, i.e. what the ES sends), ``perfect [N, 3, S, S]`` (their decoded images in
    ``[-1, 1]``) and ``decode_images`` (scaled latents ``[B, C, H, W]`` -> images in ``[-1, 1]``)."""

    latents: torch.Tensor
    perfect: torch.Tensor
    decode_images: Callable[[torch.Tensor], torch.Tensor]


def vae_decoder(pipe) -> Callable[[torch.Tensor], torch.Tensor]:
    """Scaled latents ``[B, C, H, W]`` -> images in ``[-1, 1]`` with ``pipe``'s VAE (:func:`shared.model.vae.decode`)."""
    return partial(vae_lib.decode, pipe.vae)


@torch.no_grad()
def make_latent_set(pipe, count: int, stream: str = "train", seed: int = 0, batch: int = 32) -> LatentSet:
    """Seeds = VAE-encoded procedural renders (``meg_lab.shapes``, the meg-tiny data) of one stream: the
    posterior means times ``scaling_factor``; their decodes are the perfectly received images."""
    from meg_lab.shapes import batch as shapes_batch

    vae = pipe.vae
    sf = float(vae.config.scaling_factor)
    size = int(vae.config.sample_size) if isinstance(vae.config.sample_size, int) else 64
    decode = vae_decoder(pipe)
    zs, imgs = [], []
    for start in range(0, count, batch):
        _, x = shapes_batch(seed, start, min(batch, count - start), stream=stream)
        if x.shape[-1] != size:
            x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        z = vae.encode(x.to(device=vae.device, dtype=vae.dtype)).latent_dist.mean.float().cpu() * sf
        zs.append(z)
        imgs.append(decode(z))
    return LatentSet(torch.cat(zs), torch.cat(imgs), decode)


def identity_encode(z: np.ndarray) -> np.ndarray:
    return np.asarray(z, dtype=np.float32).reshape(-1)


class PowerEnv(gym.Env):
    """One seed download over ``T`` fading blocks; see the module docstring.

    ``budgets``: a fixed budget per episode drawn from this list, or ``None`` to draw log-uniformly over
    :data:`TRAIN_BUDGET_RANGE`. ``encode`` / ``decode``: the optional seed codec (default: identity,
    the latent's values are the symbols). ``fading``: one of :data:`FADINGS`; ``action_rule``: one of
    :data:`shared.channel.power_ppo.ACTION_RULES`.
    """

    metadata: ClassVar[dict[str, list[str]]] = {"render_modes": []}

    def __init__(
        self,
        latents: LatentSet,
        snr_db: float = 10.0,
        coherence: int = 16,
        budgets: Sequence[float] | None = None,
        encode: SeedEncode | None = None,
        decode: SeedDecode | None = None,
        reward: str = "psnr",
        fading: str = "block",
        action_rule: str = DEFAULT_ACTION_RULE,
    ) -> None:
        super().__init__()
        if reward not in ("psnr", "psnr_abs"):
            raise ValueError(f"unknown reward {reward!r}")
        if fading not in FADINGS:
            raise ValueError(f"unknown fading {fading!r}; known: {', '.join(FADINGS)}")
        if action_rule not in ACTION_RULES:
            raise ValueError(f"unknown action rule {action_rule!r}; known: {', '.join(ACTION_RULES)}")
        self.fading = fading
        self.action_rule = action_rule
        self.data = latents
        self.snr_db = float(snr_db)
        self.coherence = int(coherence)
        self.budgets = None if budgets is None else [float(b) for b in budgets]
        self.reward_kind = reward
        self.encode = encode or identity_encode
        shape = tuple(latents.latents.shape[1:])
        self.decode = decode or (lambda s: np.asarray(s, dtype=np.float32).reshape(shape))
        self.symbols = [self.encode(z.numpy()).astype(np.float32).reshape(-1) for z in latents.latents]
        self.n = self.symbols[0].size
        self.sizes = block_sizes(self.n, self.coherence)
        self.T = len(self.sizes)
        self.profile = ChannelProfile(model="rayleigh", snr_db=self.snr_db, coherence_symbols=self.coherence)
        self.observation_space = gym.spaces.Box(OBS_LOW, OBS_HIGH, shape=(OBS_DIM,), dtype=np.float32)
        self.action_space = gym.spaces.Box(0.0, 1.0, shape=(1,), dtype=np.float32)
        self._reset_episode(0, 1.0, np.ones(self.T), 0)

    # -- episode state --------------------------------------------------------------------------------

    def _reset_episode(self, idx: int, budget: float, h: np.ndarray, noise_seed: int) -> None:
        self.idx, self.budget, self.h, self.noise_seed = idx, budget, h, noise_seed
        self.x = self.symbols[idx]
        self.t = 0
        self.energy_left = budget * self.n
        self.p = np.zeros(self.T)

    def _obs(self) -> np.ndarray:
        t = min(self.t, self.T - 1)
        return observation(self.x, self.h, t, self.sizes, self.energy_left, self.budget, self.snr_db)

    def set_episode(self, idx: int, budget: float, h: np.ndarray, noise_seed: int) -> np.ndarray:
        """Start a given episode (evaluation with common random numbers); returns the first observation."""
        self._reset_episode(idx, float(budget), np.asarray(h, dtype=np.float64), int(noise_seed))
        return self._obs()

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        rng = self.np_random
        idx = int(rng.integers(len(self.symbols)))
        if self.budgets is not None:
            budget = float(self.budgets[int(rng.integers(len(self.budgets)))])
        else:
            lo, hi = np.log(TRAIN_BUDGET_RANGE[0]), np.log(TRAIN_BUDGET_RANGE[1])
            budget = float(np.exp(rng.uniform(lo, hi)))
        flat = self.fading == "flat" or (self.fading == "mix" and rng.random() < 0.5)
        h = np.repeat(Rayleigh().generate(1, rng), self.T) if flat else Rayleigh().generate(self.T, rng)
        self._reset_episode(idx, budget, h, int(rng.integers(2**62)))
        return self._obs(), {}

    def step(self, action):
        a = float(np.asarray(action, dtype=np.float64).reshape(-1)[0])
        t = self.t
        p_t = action_to_power(a, t, self.sizes, self.energy_left, self.budget, self.action_rule)
        self.p[t] = p_t
        self.energy_left -= p_t * self.sizes[t]
        self.t += 1
        if self.t < self.T:
            return self._obs(), 0.0, False, False, {}
        if self.reward_kind == "psnr":
            mine, base = self.score_allocations([self.p, uniform(self.x, self.h, self.coherence, self.budget)])
            info = {"mse": mine, "psnr": float(image_psnr(mine)), "psnr_uniform": float(image_psnr(base))}
            reward = (info["psnr"] - info["psnr_uniform"]) / 10.0
        else:
            mse = self.score_allocations([self.p])[0]
            info = {"mse": mse, "psnr": float(image_psnr(mse))}
            reward = info["psnr"] / 10.0 - 2.0
        info["p"] = self.p.copy()
        return self._obs(), float(reward), True, False, info

    # -- scoring --------------------------------------------------------------------------------------

    def received_latents(self, allocations: Sequence[np.ndarray]) -> torch.Tensor:
        """Received seeds ``[K, C, H, W]`` (decoded by the seed codec, not yet by the VAE) of the current
        episode's seed sent with each allocation (same fading, same noise draw)."""
        zs = []
        for p in allocations:
            rx = transmit(self.x, self.profile, np.random.default_rng(self.noise_seed),
                          block_power=np.asarray(p, dtype=np.float32), power_block_length=self.coherence,
                          fading=self.h).received
            zs.append(torch.from_numpy(np.asarray(self.decode(rx), dtype=np.float32)))
        return torch.stack(zs)

    def received_images(self, allocations: Sequence[np.ndarray]) -> torch.Tensor:
        """Decoded images ``[K, 3, S, S]`` of the current episode's seed sent with each allocation (same
        fading, same noise draw)."""
        return self.data.decode_images(self.received_latents(allocations))

    def score_allocations(self, allocations: Sequence[np.ndarray]) -> list[float]:
        """Image MSE vs the perfectly received image for each allocation (same fading and noise)."""
        img = self.received_images(allocations)
        return [float(v) for v in torch.mean((img - self.data.perfect[self.idx]) ** 2, dim=(1, 2, 3))]
