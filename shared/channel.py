"""Channel math in plain functions (paper 2, eq. 3, 28, 29), shared by the proxy and offline code.

A tensor of ``n`` real values is sent as ``n`` real symbols. The transmitter power-normalises it,
``s = x / rms(x)`` (so ``E[s²] = 1``; the scale ``rms(x)`` is side information that crosses losslessly),
splits it into ``T = ceil(n / L)`` fading blocks of ``L`` symbols, and block ``t`` is received as

    y_t = h_t · sqrt(p_t) · s_t + n_t,    n_t ~ N(0, N0),   N0 = 10^(−SNR_dB / 10)

The receiver equalises with its CSI (zero forcing, ``ŝ_t = y_t / (h_t sqrt(p_t))``; a block with no
power carries nothing and is received as 0) and undoes the normalisation. SNR is per unit power: with
``p_t = 1`` and ``|h_t| = 1`` the received SNR is exactly the profile's.

Models follow Sionna's habit: one small class each, ``generate`` (draw the fading) split from ``apply``.
This module ships the ideal and AWGN links; fading models plug in as further :class:`ChannelModel`
subclasses with their own ``generate``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


class ChannelConfigError(ValueError):
    """A channel setting a person gave is invalid (unknown model, NaN SNR, bad block length...)."""


@dataclass(frozen=True)
class ChannelModel:
    """Ideal link: ``h_t = 1`` and no noise. Subclasses override :meth:`generate` / :attr:`noisy`."""

    snr_db: float = math.inf
    name: str = "ideal"
    noisy: bool = False

    def generate(self, n_blocks: int, rng: np.random.Generator) -> np.ndarray:
        """Fading gains for ``n_blocks`` blocks, shape ``[n_blocks]`` float64 with ``E[h²] = 1``."""
        return np.ones(n_blocks)

    @property
    def noise_power(self) -> float:
        """N0 for unit signal power."""
        return 0.0 if not self.noisy else 10.0 ** (-self.snr_db / 10.0)


@dataclass(frozen=True)
class AWGN(ChannelModel):
    """Additive white Gaussian noise at ``snr_db``, no fading (``h_t = 1``)."""

    name: str = "awgn"
    noisy: bool = True


MODELS: dict[str, type[ChannelModel]] = {"ideal": ChannelModel, "awgn": AWGN}


def make_model(name: str, snr_db: float) -> ChannelModel:
    """Build a model by name, checking the settings. Raises :class:`ChannelConfigError`."""
    if name not in MODELS:
        raise ChannelConfigError(f"unknown channel model {name!r}; known: {', '.join(sorted(MODELS))}")
    if not isinstance(snr_db, (int, float)) or math.isnan(snr_db):
        raise ChannelConfigError(f"SNR must be a number of dB, got {snr_db!r}")
    if name != "ideal" and not (-100.0 <= snr_db <= 200.0):
        raise ChannelConfigError(f"SNR {snr_db} dB is outside the supported range [-100, 200] dB")
    return MODELS[name](snr_db=float(snr_db))


@dataclass(frozen=True)
class Transmission:
    """What one call of :func:`transmit` did: received values and the accounting."""

    received: np.ndarray  # same shape as the input, float32
    symbols: int
    blocks: int
    energy: float  # sum_t p_t * (symbols in block t), normalised units


def block_layout(n: int, block_length: int) -> tuple[int, int]:
    """``(L, T)``: symbols per block (``0`` → one block of ``n``) and the number of blocks ``ceil(n/L)``."""
    if block_length < 0:
        raise ChannelConfigError(f"block length must be >= 0 symbols, got {block_length}")
    length = n if block_length == 0 else min(block_length, n)
    return length, max(1, math.ceil(n / max(length, 1)))


def transmit(
    x: np.ndarray,
    model: ChannelModel,
    rng: np.random.Generator,
    block_power: np.ndarray | None = None,
    block_length: int = 0,
    fading: np.ndarray | None = None,
) -> Transmission:
    """Send ``x`` (any shape, ``n`` values) over ``model``; returns the equalised, de-normalised estimate.

    ``block_power``: ``[T]`` powers ``p_t >= 0`` (default all ones). ``fading``: ``[T]`` gains to use instead
    of drawing them (the CSI reported earlier). Raises :class:`ChannelConfigError` for a power vector of
    the wrong length or with negative/non-finite entries.
    """
    flat = np.asarray(x, dtype=np.float64).reshape(-1)
    n = flat.size
    length, n_blocks = block_layout(n, block_length)
    if block_power is None or len(block_power) == 0:
        p = np.ones(n_blocks)
    else:
        p = np.asarray(block_power, dtype=np.float64)
        if p.shape != (n_blocks,):
            raise ChannelConfigError(f"power allocation has {p.size} entries for {n_blocks} fading blocks")
        if not np.isfinite(p).all() or (p < 0).any():
            raise ChannelConfigError("power allocation entries must be finite and >= 0")
    h = model.generate(n_blocks, rng) if fading is None else np.asarray(fading, dtype=np.float64)
    # per-symbol expansion of the per-block quantities
    idx = np.minimum(np.arange(n) // length, n_blocks - 1)
    counts = np.bincount(idx, minlength=n_blocks)
    energy = float((p * counts).sum())
    if not model.noisy and np.all(p > 0):
        return Transmission(np.asarray(x, dtype=np.float32).copy(), n, n_blocks, energy)
    scale = float(np.sqrt(np.mean(flat**2))) if n else 1.0
    scale = scale if scale > 0 else 1.0
    s = flat / scale
    gain = h[idx] * np.sqrt(p[idx])
    y = gain * s
    if model.noisy:
        y = y + rng.normal(0.0, math.sqrt(model.noise_power), size=n)
    with np.errstate(divide="ignore", invalid="ignore"):
        s_hat = np.where(gain > 0, y / np.where(gain > 0, gain, 1.0), 0.0)
    out = (s_hat * scale).astype(np.float32).reshape(np.shape(x))
    return Transmission(out, n, n_blocks, energy)
