"""Channel math in plain functions (paper 2, eq. 3, 28, 29), shared by the proxy and offline code.

A tensor of ``n`` real values is sent as ``n`` real symbols. The transmitter power-normalises it,
``s = x / rms(x)`` (so ``E[s²] = 1``; the scale ``rms(x)`` is side information that crosses losslessly),
and symbol ``i`` is received as

    y_i = h_{f(i)} · sqrt(p_{b(i)}) · s_i + n_i,    n_i ~ N(0, N0),   N0 = 10^(−SNR_dB / 10)

where ``f(i) = i // Lc`` is the fading block (``Lc`` = the profile's coherence length in symbols) and
``b(i) = i // Lp`` the power block (``Lp`` = the sender's block length; usually ``Lp = Lc``). The receiver
equalises with its CSI ``ĥ`` (zero forcing, ``ŝ_i = y_i / (ĥ sqrt(p))``; a block with no power carries
nothing and is received as 0) and undoes the normalisation. SNR is per unit power: with ``p = 1`` and
``|h| = 1`` the received SNR is exactly the profile's.

Models follow Sionna's habit: one small class each, ``generate`` (draw the fading, shape ``[T]``, real
amplitudes with ``E[h²] = 1``) split from :func:`transmit` (apply it). Real symbols see the amplitude
``|h|`` of the complex gain: the phase is assumed removed by the receiver's CSI."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from shared.channel.models import ChannelConfigError
from shared.channel.power import P_MAX
from shared.channel.profiles import ChannelProfile
from shared.wire.limits import MAX_POWER_BLOCKS

_F32_MAX = float(np.finfo(np.float32).max)

# --- transmission -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Transmission:
    """What one call of :func:`transmit` did: received values and the accounting."""

    received: np.ndarray  # same shape as the input, float32
    symbols: int
    blocks: int  # fading blocks used
    energy: float  # sum over power blocks of p_t × symbols in it
    effective_snr_db: float  # 10·log10(mean_i(h_i² p_i) / N0); inf for a noiseless link


def n_blocks(n: int, block_length: int) -> int:
    """Blocks of ``block_length`` symbols covering ``n`` (``0`` → one block)."""
    if block_length < 0:
        raise ChannelConfigError(f"block length must be >= 0 symbols, got {block_length}")
    return 1 if block_length == 0 or n == 0 else math.ceil(n / block_length)


def _per_symbol(values: np.ndarray, n: int, block_length: int) -> np.ndarray:
    """Expand per-block values ``[T]`` to per-symbol ``[n]``."""
    if values.size == 1:
        return np.broadcast_to(values.astype(np.float32), (n,))
    return np.repeat(values.astype(np.float32), block_length)[:n]


def estimate_csi(h: np.ndarray, csi_error: float, rng: np.random.Generator) -> np.ndarray:
    """What a receiver/transmitter learns of ``h``: ``|h + e|``, ``e ~ N(0, csi_error²)``; exact when 0."""
    if csi_error == 0:
        return h.copy()
    return np.abs(h + rng.normal(0.0, csi_error, size=h.shape))


def transmit(
    x: np.ndarray,
    profile: ChannelProfile,
    rng: np.random.Generator,
    block_power: np.ndarray | None = None,
    power_block_length: int = 0,
    fading: np.ndarray | None = None,
    fading_estimate: np.ndarray | None = None,
) -> Transmission:
    """Send ``x`` (any shape, ``n`` values) over ``profile``; returns the equalised, de-normalised estimate.

    ``block_power``: ``[Tp]`` powers ``p_t >= 0`` over blocks of ``power_block_length`` symbols (default:
    unit power; without it the block length is moot), each capped at :data:`~shared.channel.power.P_MAX` (the
    energy counts the capped power). At most :data:`MAX_POWER_BLOCKS` blocks. The power normalisation is computed
    in float64 and the output clipped to float32's range, so finite input never comes out Inf or NaN. ``fading``: ``[Tf]`` amplitudes to apply instead of drawing them (CSI handed out earlier),
    with ``fading_estimate`` the receiver's CSI of them. Raises :class:`ChannelConfigError` for a power
    vector of the wrong length or with negative/non-finite entries.
    """
    xf = np.asarray(x, dtype=np.float32)
    flat = xf.reshape(-1)
    n = flat.size
    if block_power is None or len(block_power) == 0:
        power_block_length = 0  # unit power throughout: one block, whatever block length was given
    tp = n_blocks(n, power_block_length)
    lp = power_block_length or n
    if tp > MAX_POWER_BLOCKS:
        raise ChannelConfigError(f"{tp} power blocks of {lp} symbols: at most {MAX_POWER_BLOCKS} per transmission")
    if block_power is None or len(block_power) == 0:
        p = np.ones(tp, dtype=np.float32)
    else:
        p = np.asarray(block_power, dtype=np.float64)
        if p.shape != (tp,):
            raise ChannelConfigError(f"power allocation has {p.size} entries for {tp} blocks of {lp} symbols")
        if not np.isfinite(p).all() or (p < 0).any():
            raise ChannelConfigError("power allocation entries must be finite and >= 0")
        p = np.minimum(p, P_MAX).astype(np.float32)
    lp_counts = np.full(tp, lp, dtype=np.float64)
    lp_counts[-1] = n - lp * (tp - 1)
    energy = float((p * lp_counts).sum())
    lc = profile.block_length
    tf = n_blocks(n, lc)
    lc = lc or n
    if fading is None:
        h = profile.model_object().generate(tf, rng)
        h_hat = estimate_csi(h, profile.csi_error, rng)
    else:
        h = np.asarray(fading, dtype=np.float64)[:tf]
        h_hat = h if fading_estimate is None else np.asarray(fading_estimate, dtype=np.float64)[:tf]
    if not profile.noisy and not profile.fading and bool(np.all(p > 0)):
        return Transmission(xf.copy(), n, tf, energy, math.inf)
    # in float64: the float32 sum of squares overflows for values beyond ~1e19
    scale = math.sqrt(float(np.einsum("i,i->", flat, flat, dtype=np.float64)) / n) if n else 1.0
    scale = scale if 0 < scale < math.inf else 1.0
    n0 = profile.noise_power
    if tf == 1 and tp == 1:  # one block: scalar gains, a few passes over the data
        g, g_hat = float(h[0] * math.sqrt(p[0])), float(h_hat[0] * math.sqrt(p[0]))
        y = flat * np.float32(g / scale) if abs(g / scale) < _F32_MAX else (flat / np.float32(scale)) * np.float32(g)
        if n0 > 0:
            noise = rng.standard_normal(n, dtype=np.float32)
            noise *= np.float32(math.sqrt(n0))
            y += noise
        if g_hat > 0:
            with np.errstate(over="ignore"):  # beyond float32's range: saturates, clipped by _finite
                y *= np.float32(min(scale / g_hat, _F32_MAX))  # a finite gain: 0 · gain stays 0, never NaN
        else:
            y[:] = 0.0
        eff = math.inf if n0 == 0 else (10 * math.log10(g * g / n0) if g > 0 else -math.inf)
        return Transmission(_finite(y).reshape(xf.shape), n, tf, energy, eff)
    if tp == 1 or tf == 1 or lp == lc:  # power and fading share one block grid: block-level arithmetic
        length = lc if tf > 1 else lp
        g_b = h * np.sqrt(p if tp > 1 else np.full(tf, p[0])) if tf > 1 else np.sqrt(p) * h[0]
        gh_b = h_hat * np.sqrt(p if tp > 1 else np.full(tf, p[0])) if tf > 1 else np.sqrt(p) * h_hat[0]
        counts = np.full(len(g_b), float(length))
        counts[-1] = n - length * (len(g_b) - 1)
        if bool(np.all(np.abs(g_b / scale) < _F32_MAX)):
            y = flat * _per_symbol((g_b / scale).astype(np.float32), n, length)
        else:  # values so small that gain / RMS leaves float32: normalise first
            y = (flat / np.float32(scale)) * _per_symbol(g_b.astype(np.float32), n, length)
        with np.errstate(over="ignore"):  # beyond float32's range: saturates, clipped at the end
            inverse = np.where(gh_b > 0, scale / np.where(gh_b > 0, gh_b, 1.0), 0.0).astype(np.float32)
        mean_gain = float((g_b**2 * counts).sum() / n)
    else:  # misaligned grids: per-symbol gains
        gain = _per_symbol(h, n, lc) * np.sqrt(_per_symbol(p, n, lp))
        gain_hat = _per_symbol(h_hat, n, lc) * np.sqrt(_per_symbol(p, n, lp))
        y = gain * (flat / np.float32(scale))
        with np.errstate(over="ignore"):
            inverse = np.where(gain_hat > 0, np.float32(scale) / np.where(gain_hat > 0, gain_hat, np.float32(1.0)),
                               np.float32(0.0))
        mean_gain = float(np.mean(np.square(gain, dtype=np.float64)))
        length = 0
    if n0 > 0:
        noise = rng.standard_normal(n, dtype=np.float32)
        noise *= np.float32(math.sqrt(n0))
        y += noise
    inverse = np.minimum(inverse, _F32_MAX)  # finite (a zero symbol times it stays 0, never NaN)
    with np.errstate(over="ignore"):  # a product beyond float32's range saturates; _finite clips it
        y *= inverse if length == 0 else _per_symbol(inverse, n, length)
    eff = math.inf if n0 == 0 else (10 * math.log10(mean_gain / n0) if mean_gain > 0 else -math.inf)
    return Transmission(_finite(y).reshape(xf.shape), n, tf, energy, eff)


def _finite(y: np.ndarray) -> np.ndarray:
    """``y`` clipped to float32's finite range in place (noise on a value near the top must not make it Inf)."""
    return np.clip(y, -_F32_MAX, _F32_MAX, out=y)
