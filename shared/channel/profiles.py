"""Channel profiles: a model with its SNR, coherence length and CSI error, by name (built-in or from a TOML file)."""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from shared.channel.cell import CellConfig, cell_from_mapping
from shared.channel.models import MODELS, ChannelConfigError, Ideal

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
    #: a trace file (shared.channel.trace) replayed instead of drawn fading; snr_db is then its mean SNR
    trace: str = ""
    trace_offset_s: float = 0.0  # where in the trace the replay starts
    trace_gain_db: float = 0.0  # an SNR / path-loss offset on top of snr_db

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
        if self.trace:
            from shared.channel.trace import check_trace_profile

            check_trace_profile(self)

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
    if "trace" in values:
        values.setdefault("model", "awgn")  # the trace brings the fading; the model adds the noise
        if "snr_db" not in values:
            raise ChannelConfigError(f"profile {name!r}: a trace needs snr_db, the mean SNR it is scaled to")
    for key in ("snr_db", "k_factor", "csi_error", "trace_offset_s", "trace_gain_db"):
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
    #: ``[cells.NAME]``: the cell of ES ``NAME`` (``default``: of every ES not named); none = no time on the air
    cells: dict[str, CellConfig] = field(default_factory=dict)

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
    ``downlink`` profile names; ``[links.default]`` applies to every link; optional ``[cells.NAME]``, the cells of
    :mod:`shared.channel.cell`, ``[cells.default]`` for every ES not named). Built-in profiles are always there.
    Raises :class:`ChannelConfigError` with the file name for malformed TOML or bad values."""
    profiles = dict(BUILTIN_PROFILES)
    links: dict[str, dict[str, str]] = {}
    if path is None:
        return ProfileBook(profiles, links)
    try:
        raw = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ChannelConfigError(f"{path}: {exc}") from None
    unknown = set(raw) - {"profiles", "links", "cells"}
    if unknown:
        raise ChannelConfigError(f"{path}: unknown tables {sorted(unknown)}; expected [profiles.*], [links.*] and [cells.*]")
    for name, table in raw.get("profiles", {}).items():
        if not isinstance(table, dict):
            raise ChannelConfigError(f"{path}: profiles.{name} must be a table")
        try:
            profiles[name] = profile_from_mapping(name, table)
        except (ChannelConfigError, TypeError) as exc:
            raise ChannelConfigError(f"{path}: {exc}") from None
    cells: dict[str, CellConfig] = {}
    raw_cells = raw.get("cells", {})
    if not isinstance(raw_cells, dict) or not all(isinstance(t, dict) for t in raw_cells.values()):
        raise ChannelConfigError(f"{path}: cells.NAME must be tables (e.g. [cells.default], [cells.es0])")
    try:  # a named cell starts from the default cell's settings
        if "default" in raw_cells:
            cells["default"] = cell_from_mapping("default", raw_cells["default"])
        for name, table in raw_cells.items():
            if name != "default":
                cells[name] = cell_from_mapping(name, table, cells.get("default"))
    except (ChannelConfigError, TypeError) as exc:
        raise ChannelConfigError(f"{path}: {exc}") from None
    book = ProfileBook(profiles, links, cells)
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
