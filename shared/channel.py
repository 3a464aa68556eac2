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
``|h|`` of the complex gain: the phase is assumed removed by the receiver's CSI.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import ClassVar, TypeVar

import numpy as np


class ChannelConfigError(ValueError):
    """A channel setting a person gave is invalid (unknown model, NaN SNR, bad block length...)."""


# --- models -------------------------------------------------------------------------------------------


#: The channel models by name (toxiproxy-style registry): ``MODELS[name]`` is the model's class; its class
#: attributes say what it does (``noisy``: adds AWGN; ``fading``: draws a gain per block of the profile's
#: coherence length). Register a new model with :func:`register`.
MODELS: dict[str, type[Ideal]] = {}


def register(name: str) -> Callable[[type[_M]], type[_M]]:
    """Class decorator: make a model class known as ``name`` (in :data:`MODELS` and in profiles' ``model``)."""
    def add(cls: type[_M]) -> type[_M]:
        cls.name = name
        MODELS[name] = cls
        return cls

    return add


@dataclass(frozen=True)
class Ideal:
    """No fading, no noise: ``h = 1``, ``N0 = 0``."""

    name: ClassVar[str] = "ideal"
    noisy: ClassVar[bool] = False
    fading: ClassVar[bool] = False

    @classmethod
    def from_profile(cls, profile: ChannelProfile) -> Ideal:
        """The model object with the profile's parameters (only Rician has one, ``k_factor``)."""
        return cls()

    def generate(self, n_blocks: int, rng: np.random.Generator) -> np.ndarray:
        """Fading amplitudes ``[n_blocks]`` (all ones)."""
        return np.ones(n_blocks)


_M = TypeVar("_M", bound=Ideal)
register("ideal")(Ideal)


@register("awgn")
@dataclass(frozen=True)
class AWGN(Ideal):
    """Additive white Gaussian noise, no fading (``h = 1``)."""

    noisy: ClassVar[bool] = True


@register("rayleigh")
@dataclass(frozen=True)
class Rayleigh(AWGN):
    """Rayleigh block fading: ``h = |g|``, ``g ~ CN(0, 1)``, so ``E[h²] = 1``; one draw per block."""

    fading: ClassVar[bool] = True

    def generate(self, n_blocks: int, rng: np.random.Generator) -> np.ndarray:
        g = rng.normal(0.0, math.sqrt(0.5), size=(n_blocks, 2))
        return np.hypot(g[:, 0], g[:, 1])


@register("rician")
@dataclass(frozen=True)
class Rician(AWGN):
    """Rician block fading with factor ``K``: ``h = |sqrt(K/(K+1)) + g|``, ``g ~ CN(0, 1/(K+1))``."""

    fading: ClassVar[bool] = True
    k_factor: float = 1.0

    @classmethod
    def from_profile(cls, profile: ChannelProfile) -> Rician:
        return cls(profile.k_factor)

    def generate(self, n_blocks: int, rng: np.random.Generator) -> np.ndarray:
        los = math.sqrt(self.k_factor / (self.k_factor + 1.0))
        g = rng.normal(0.0, math.sqrt(0.5 / (self.k_factor + 1.0)), size=(n_blocks, 2))
        return np.hypot(los + g[:, 0], g[:, 1])


# --- profiles -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChannelProfile:
    """What one direction of a link does: model, SNR (dB, per unit power), fading block length in
    symbols (0 = the whole tensor is one block), Rician K, and the CSI estimation error's std."""

    name: str = ""
    model: str = "ideal"
    snr_db: float = math.inf
    coherence_symbols: int = 0
    k_factor: float = 0.0
    csi_error: float = 0.0

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ChannelConfigError(f"unknown channel model {self.model!r}; known: {', '.join(MODELS)}")
        if not isinstance(self.snr_db, (int, float)) or math.isnan(self.snr_db):
            raise ChannelConfigError(f"SNR must be a number of dB, got {self.snr_db!r}")
        if self.noisy and not (-100.0 <= self.snr_db <= 200.0):
            raise ChannelConfigError(f"SNR {self.snr_db} dB is outside the supported range [-100, 200] dB")
        if not isinstance(self.coherence_symbols, int) or self.coherence_symbols < 0:
            raise ChannelConfigError(f"coherence length must be a whole number of symbols >= 0, got {self.coherence_symbols!r}")
        if not math.isfinite(self.k_factor) or self.k_factor < 0:
            raise ChannelConfigError(f"Rician K must be finite and >= 0, got {self.k_factor}")
        if not math.isfinite(self.csi_error) or self.csi_error < 0:
            raise ChannelConfigError(f"CSI error must be finite and >= 0, got {self.csi_error}")

    @property
    def noise_power(self) -> float:
        """N0 for unit signal power (0 for the ideal link)."""
        return 10.0 ** (-self.snr_db / 10.0) if self.noisy else 0.0

    @property
    def noisy(self) -> bool:
        """Whether the model adds noise (at ``snr_db``)."""
        return MODELS[self.model].noisy

    @property
    def fading(self) -> bool:
        """Whether the model draws a gain per block of ``coherence_symbols`` (else ``h = 1`` throughout)."""
        return MODELS[self.model].fading

    @property
    def block_length(self) -> int:
        """Fading block length in symbols: ``coherence_symbols`` for a fading model, else 0 (one block)."""
        return self.coherence_symbols if self.fading else 0

    def model_object(self) -> Ideal:
        """The model of :data:`MODELS` with this profile's parameters."""
        return MODELS[self.model].from_profile(self)


IDEAL = ChannelProfile(name="ideal")


def profile_from_mapping(name: str, raw: Mapping[str, object]) -> ChannelProfile:
    """A profile from a TOML table / dict; unknown keys are an error."""
    known = {f.name for f in fields(ChannelProfile)} - {"name"}
    unknown = set(raw) - known
    if unknown:
        raise ChannelConfigError(f"profile {name!r}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
    values = dict(raw)
    for key in ("snr_db", "k_factor", "csi_error"):
        if key in values:
            if not isinstance(values[key], (int, float)) or isinstance(values[key], bool):
                raise ChannelConfigError(f"profile {name!r}: {key} must be a number, got {values[key]!r}")
            values[key] = float(values[key])  # type: ignore[arg-type]
    return ChannelProfile(name=name, **values)  # type: ignore[arg-type]


@dataclass(frozen=True)
class ProfileBook:
    """Named profiles plus which profile each link direction starts with (``links["default"]`` for any)."""

    profiles: dict[str, ChannelProfile] = field(default_factory=dict)
    links: dict[str, dict[str, str]] = field(default_factory=dict)

    def get(self, name: str) -> ChannelProfile:
        if name not in self.profiles:
            raise ChannelConfigError(f"unknown profile {name!r}; known: {', '.join(sorted(self.profiles))}")
        return self.profiles[name]


BUILTIN_PROFILES = {
    p.name: p
    for p in (
        IDEAL,
        ChannelProfile("awgn-30", "awgn", 30.0),
        ChannelProfile("awgn-10", "awgn", 10.0),
        ChannelProfile("awgn-0", "awgn", 0.0),
        ChannelProfile("awgn-minus10", "awgn", -10.0),
        ChannelProfile("rayleigh-10", "rayleigh", 10.0, coherence_symbols=256),
        ChannelProfile("rician-k5-10", "rician", 10.0, coherence_symbols=256, k_factor=5.0),
    )
}


def load_profiles(path: str | Path | None) -> ProfileBook:
    """Read a profiles TOML file (``[profiles.NAME]`` tables, optional ``[links.LINK]`` with ``uplink`` /
    ``downlink`` profile names; ``[links.default]`` applies to every link). Built-in profiles are always there.
    Raises :class:`ChannelConfigError` with the file name for malformed TOML or bad values."""
    profiles = dict(BUILTIN_PROFILES)
    links: dict[str, dict[str, str]] = {}
    if path is None:
        return ProfileBook(profiles, links)
    try:
        raw = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ChannelConfigError(f"{path}: {exc}") from None
    unknown = set(raw) - {"profiles", "links"}
    if unknown:
        raise ChannelConfigError(f"{path}: unknown tables {sorted(unknown)}; expected [profiles.*] and [links.*]")
    for name, table in raw.get("profiles", {}).items():
        if not isinstance(table, dict):
            raise ChannelConfigError(f"{path}: profiles.{name} must be a table")
        try:
            profiles[name] = profile_from_mapping(name, table)
        except (ChannelConfigError, TypeError) as exc:
            raise ChannelConfigError(f"{path}: {exc}") from None
    book = ProfileBook(profiles, links)
    for link, table in raw.get("links", {}).items():
        if not isinstance(table, dict) or set(table) - {"uplink", "downlink"}:
            raise ChannelConfigError(f"{path}: links.{link} may only set uplink and downlink profile names")
        for direction, name in table.items():
            try:
                book.get(str(name))
            except ChannelConfigError as exc:
                raise ChannelConfigError(f"{path}: links.{link}.{direction}: {exc}") from None
        links[link] = {k: str(v) for k, v in table.items()}
    return book


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
    unit power). ``fading``: ``[Tf]`` amplitudes to apply instead of drawing them (CSI handed out earlier),
    with ``fading_estimate`` the receiver's CSI of them. Raises :class:`ChannelConfigError` for a power
    vector of the wrong length or with negative/non-finite entries.
    """
    xf = np.asarray(x, dtype=np.float32)
    flat = xf.reshape(-1)
    n = flat.size
    tp = n_blocks(n, power_block_length)
    lp = power_block_length or n
    if block_power is None or len(block_power) == 0:
        p = np.ones(tp, dtype=np.float32)
    else:
        p = np.asarray(block_power, dtype=np.float32)
        if p.shape != (tp,):
            raise ChannelConfigError(f"power allocation has {p.size} entries for {tp} blocks of {lp} symbols")
        if not np.isfinite(p).all() or (p < 0).any():
            raise ChannelConfigError("power allocation entries must be finite and >= 0")
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
    scale = float(np.sqrt(np.dot(flat, flat) / n)) if n else 1.0
    scale = scale if scale > 0 else 1.0
    n0 = profile.noise_power
    if tf == 1 and tp == 1:  # one block: scalar gains, a few passes over the data
        g, g_hat = float(h[0] * math.sqrt(p[0])), float(h_hat[0] * math.sqrt(p[0]))
        y = flat * np.float32(g / scale)
        if n0 > 0:
            noise = rng.standard_normal(n, dtype=np.float32)
            noise *= np.float32(math.sqrt(n0))
            y += noise
        if g_hat > 0:
            y *= np.float32(scale / g_hat)
        else:
            y[:] = 0.0
        eff = math.inf if n0 == 0 else (10 * math.log10(g * g / n0) if g > 0 else -math.inf)
        return Transmission(y.reshape(xf.shape), n, tf, energy, eff)
    if tp == 1 or tf == 1 or lp == lc:  # power and fading share one block grid: block-level arithmetic
        length = lc if tf > 1 else lp
        g_b = h * np.sqrt(p if tp > 1 else np.full(tf, p[0])) if tf > 1 else np.sqrt(p) * h[0]
        gh_b = h_hat * np.sqrt(p if tp > 1 else np.full(tf, p[0])) if tf > 1 else np.sqrt(p) * h_hat[0]
        counts = np.full(len(g_b), float(length))
        counts[-1] = n - length * (len(g_b) - 1)
        y = flat * _per_symbol((g_b / scale).astype(np.float32), n, length)
        inverse = np.where(gh_b > 0, scale / np.where(gh_b > 0, gh_b, 1.0), 0.0).astype(np.float32)
        mean_gain = float((g_b**2 * counts).sum() / n)
    else:  # misaligned grids: per-symbol gains
        gain = _per_symbol(h, n, lc) * np.sqrt(_per_symbol(p, n, lp))
        gain_hat = _per_symbol(h_hat, n, lc) * np.sqrt(_per_symbol(p, n, lp))
        y = gain * (flat / np.float32(scale))
        inverse = np.where(gain_hat > 0, np.float32(scale) / np.where(gain_hat > 0, gain_hat, np.float32(1.0)), np.float32(0.0))
        mean_gain = float(np.mean(np.square(gain, dtype=np.float64)))
        length = 0
    if n0 > 0:
        noise = rng.standard_normal(n, dtype=np.float32)
        noise *= np.float32(math.sqrt(n0))
        y += noise
    y *= inverse if length == 0 else _per_symbol(inverse, n, length)
    eff = math.inf if n0 == 0 else (10 * math.log10(mean_gain / n0) if mean_gain > 0 else -math.inf)
    return Transmission(y.reshape(xf.shape), n, tf, energy, eff)
