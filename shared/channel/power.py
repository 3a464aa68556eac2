"""Transmit power allocation over fading blocks (paper 2, §IV): the policies the ES can use for a seed.

A seed of ``n`` real symbols is sent over ``T = ceil(n / L)`` blocks of ``L`` symbols with fading
amplitudes ``h [T]`` (CSI from the channel proxy). A policy returns ``p [T] >= 0`` with the energy budget
``sum_t L_t · p_t <= budget · n`` (``budget`` = average power per symbol; 1 = the profile's SNR) and
``p_t <= power_cap(budget)``. Every policy is a plain function of the same signature so offline evaluation and the
live daemon call the very same code.

- :func:`uniform`: ``p_t = budget`` (the baseline).
- :func:`oracle`: non-causal, knows every ``h_t``: minimises the zero-forcing MSE ``Σ_t L_t N0 / (h_t² p_t)``
  under the budget, giving ``p_t ∝ 1 / h_t`` (capped at :func:`power_cap`, the excess re-spread) — an oracle the
  papers never compare against.
- PPO (``shared.channel.power_ppo``, trained by ``meg-lab train-power``): causal, decides ``p_t`` from ``h_t``, the
  block's signal statistics and the budget left.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

#: Largest per-block power as a multiple of the average budget.
P_MAX_FACTOR = 4.0
#: Largest per-block power the channel itself lets through, relative to unit power (the profile's SNR is per
#: unit power): a sender cannot buy a noise-free link with huge powers. Above it a block goes at ``P_MAX``
#: (+6 dB) and its energy is counted at ``P_MAX`` (what was actually radiated). ``P_MAX_FACTOR`` of a unit budget.
P_MAX = P_MAX_FACTOR * 1.0


def power_cap(budget: float) -> float:
    """Largest useful power of one block for an average ``budget``: ``min(P_MAX_FACTOR · budget, P_MAX)``. Above
    ``P_MAX`` the channel clips the block (the energy over it is radiated for nothing); at ``budget >= P_MAX``
    it equals the budget, so the only allocation that spends the budget is uniform."""
    return float(min(P_MAX_FACTOR * float(budget), P_MAX))


class PowerPolicy(Protocol):
    def __call__(self, x: np.ndarray, h: np.ndarray, block_length: int, budget: float) -> np.ndarray: ...


def block_sizes(n: int, block_length: int) -> np.ndarray:
    """Symbols per block ``[T]`` for ``n`` symbols in blocks of ``block_length`` (0 = one block)."""
    if block_length <= 0 or block_length >= n:
        return np.array([n], dtype=np.float64)
    t = -(-n // block_length)
    sizes = np.full(t, float(block_length))
    sizes[-1] = n - block_length * (t - 1)
    return sizes


def uniform(x: np.ndarray, h: np.ndarray, block_length: int, budget: float) -> np.ndarray:
    """Equal power on every block: ``p_t = budget``."""
    return np.full(len(block_sizes(x.size, block_length)), float(budget))


def oracle(x: np.ndarray, h: np.ndarray, block_length: int, budget: float) -> np.ndarray:
    """Non-causal ZF-MSE-optimal allocation ``p_t ∝ 1/h_t``, capped at :func:`power_cap` (``budget``: the
    excess re-spread over the other blocks; at ``budget >= P_MAX`` that is uniform)."""
    sizes = block_sizes(x.size, block_length)
    inv = 1.0 / np.maximum(np.asarray(h, dtype=np.float64)[: len(sizes)], 1e-6)
    energy, cap = budget * sizes.sum(), power_cap(budget)
    p = np.zeros_like(inv)
    free = np.ones_like(inv, dtype=bool)
    for _ in range(len(inv)):  # water-filling of the caps: at most T rounds
        left = energy - (p[~free] * sizes[~free]).sum()
        p[free] = left * inv[free] / (inv[free] * sizes[free]).sum()
        over = free & (p > cap)
        if not over.any():
            break
        p[over] = cap
        free &= ~over
    return p


POLICIES: dict[str, Callable[..., np.ndarray]] = {"uniform": uniform, "oracle": oracle}
