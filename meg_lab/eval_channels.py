"""``meg-lab eval``'s 3GPP channels: TR 38.901 TDL/CDL traces (Sionna, the lab extra) replayed for a lone UE.

**The traces.** A channel ``tdl-a`` … ``tdl-e``, ``cdl-a`` … ``cdl-e`` at a speed is the trace ``meg-lab
make-trace`` writes (the same function, :func:`meg_lab.make_trace.generate`): by default a 3.5 GHz carrier of
20 MHz at numerology 1 (51 PRBs, slots of 0.5 ms), one complex gain per PRB and slot, 100 ns RMS delay spread,
2 s (4,000 slots), Sionna seed = ``--seed``; i.e. exactly ``meg-lab make-trace --model TDL-C --speed-kmh 120
--seconds 2 --seed 0``. Files are cached under ``OUT/traces/`` (reused when their metadata match).

**The replay** (:class:`LoneUe`): the cell is that carrier with the default overhead (144 data REs per PRB and
slot, 7,344 per slot); each generated result of the batch is its own transmission, its ``⌈n/2⌉`` REs laid over
the whole carrier PRB after PRB, slot after slot (:meth:`shared.channel.trace.Allocation.contiguous`: what a
lone UE of the cell is granted) and sent by :func:`shared.channel.trace.transmit_on_grid` — the function the
proxy's replay uses — at the profile's mean SNR, zero-forced with perfect receiver CSI. Item ``i`` of ``n``
starts at slot ``i · ⌊slots / n⌋`` (spread over the trace, so the items see different fades; 125 slots = 62.5 ms
apart for n = 16, beyond the coherence time even at 3 km/h, ≈ 40 ms), the same slots for every scheme and SNR
(a paired comparison: a scheme's curve is one set of fades at rising SNR). A seed (64 REs) or a latent (128 REs)
lies in one PRB of one slot: flat fading; the image's pixels (6,144 REs) span 43 PRBs of one slot: frequency
selective.

**The digital baseline on a fading trace** (:func:`send_png_on_trace`): the MCS is the one the *mean* SNR
affords (:func:`shared.channel.mcs.select_mcs`, the proxy's rule; no CSI at the transmitter, like the analog
schemes), the PNG's ``8·bytes`` bits take ``⌈bits / SE⌉`` REs laid like any transmission, and each slot's
REs are one transport block. A block decodes when its *effective SNR* — the SNR whose gapped Shannon rate equals
the mean rate of its REs, ``Γ·(2^{mean_j log2(1 + SNR_j/Γ)} − 1)`` with ``SNR_j = |H_j|²·SNR`` and the MCS table's
gap Γ = 1.5 dB (a mutual-information effective SNR map, MIESM, with Shannon's curve) — meets the MCS's threshold;
otherwise it is lost, and an image with a lost block is lost (one shot, no HARQ: the analog schemes get one shot
too; with HARQ the loss would become extra air time, which this quality evaluation does not count). Its row's
``outage`` is the fraction of images lost; PSNR and FID are over the delivered images (empty when none arrived).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.channel.cell import CellConfig
from shared.channel.mcs import SNR_GAP_DB, select_mcs
from shared.channel.models import ChannelConfigError
from shared.channel.trace import Allocation, Trace, TraceError, element_gains, load_trace, save_trace, transmit_on_grid

#: The block-fading channels of paper 2's evaluation (``shared.channel.models``).
BASIC_CHANNELS = ("awgn", "rayleigh")
#: ``--channels`` names of the TR 38.901 models (lower case) -> the trace model.
TRACE_CHANNELS = {f"{fam}-{x}".lower(): f"{fam}-{x}" for fam in ("TDL", "CDL") for x in "ABCDE"}
DEFAULT_SPEEDS = (3.0, 30.0, 120.0)


@dataclass(frozen=True)
class TraceSpec:
    """How one 3GPP channel's trace is made (the flags of ``meg-lab make-trace``)."""

    model: str  # "TDL-C"
    speed_kmh: float
    carrier_ghz: float = 3.5
    bandwidth_mhz: float = 20.0
    numerology: int = 1
    seconds: float = 2.0
    seed: int = 0
    delay_spread_ns: float = 100.0

    @property
    def label(self) -> str:
        """The ``channel`` column of results.csv: ``tdl-c@120kmh``."""
        return f"{self.model.lower()}@{self.speed_kmh:g}kmh"

    @property
    def title(self) -> str:
        return f"{self.model} {self.speed_kmh:g} km/h"

    @property
    def file_name(self) -> str:
        return (f"{self.model.lower()}-{self.speed_kmh:g}kmh-{self.carrier_ghz:g}GHz-{self.bandwidth_mhz:g}MHz-"
                f"mu{self.numerology}-{self.seconds:g}s-seed{self.seed}.npz")

    def command(self, out: str) -> str:
        """The ``meg-lab make-trace`` command that writes the same file."""
        return (f"meg-lab make-trace --model {self.model} --speed-kmh {self.speed_kmh:g} --carrier-ghz "
                f"{self.carrier_ghz:g} --bandwidth-mhz {self.bandwidth_mhz:g} --numerology {self.numerology} "
                f"--seconds {self.seconds:g} --seed {self.seed} --delay-spread-ns {self.delay_spread_ns:g} --out {out}")


def parse_channels(channels: str | Sequence[str], speeds: Sequence[float] = DEFAULT_SPEEDS,
                   **trace: float) -> list[str | TraceSpec]:
    """``awgn,rayleigh,tdl-a,...`` -> the sweep's channels in order: a basic channel's name, or one
    :class:`TraceSpec` per speed of a 3GPP model (``trace``: TraceSpec's other fields). Raises
    ChannelConfigError naming an unknown channel or a bad speed."""
    names = [c.strip().lower() for c in (channels.split(",") if isinstance(channels, str) else channels) if c.strip()]
    if not names:
        raise ChannelConfigError("--channels names no channel")
    out: list[str | TraceSpec] = []
    for name in names:
        if name in BASIC_CHANNELS:
            out.append(name)
        elif name in TRACE_CHANNELS:
            if not speeds:
                raise ChannelConfigError(f"channel {name!r} needs at least one --speeds value (km/h)")
            for v in speeds:
                if not math.isfinite(v) or v < 0:
                    raise ChannelConfigError(f"--speeds must be finite numbers of km/h >= 0, got {v}")
                out.append(TraceSpec(TRACE_CHANNELS[name], float(v), **trace))  # type: ignore[arg-type]
        else:
            raise ChannelConfigError(f"unknown channel {name!r} in --channels; known: {', '.join(BASIC_CHANNELS)}, "
                                     f"{', '.join(TRACE_CHANNELS)}")
    labels = [c if isinstance(c, str) else c.label for c in out]
    if len(set(labels)) != len(labels):
        raise ChannelConfigError(f"--channels/--speeds name a channel twice: {', '.join(labels)}")
    return out


def trace_for(spec: TraceSpec, cache: Path) -> Trace:
    """The trace of ``spec``: from ``cache`` when a file of it is there (and its metadata say so), else made
    with Sionna by :func:`meg_lab.make_trace.generate` and saved there."""
    path = cache / spec.file_name
    if path.exists():
        try:
            tr = load_trace(path)
        except TraceError:
            tr = None
        m = tr.meta if tr is not None else None
        if m is not None and (m.model, m.speed_kmh, m.carrier_ghz, m.bandwidth_mhz, m.numerology, m.seed,
                              m.delay_spread_ns, m.per) == (spec.model, spec.speed_kmh, spec.carrier_ghz,
                                                            spec.bandwidth_mhz, spec.numerology, spec.seed,
                                                            spec.delay_spread_ns, "prb"):
            assert tr is not None
            return tr
    from meg_lab.make_trace import generate

    h, meta = generate(spec.model, spec.speed_kmh, spec.carrier_ghz, spec.bandwidth_mhz, spec.numerology,
                       spec.seconds, spec.seed, spec.delay_spread_ns, "prb")
    cache.mkdir(parents=True, exist_ok=True)
    save_trace(path, h, meta)
    return load_trace(path)


class LoneUe:
    """A lone UE in one cell on a trace: where each item of a batch goes on the grid and what it receives."""

    def __init__(self, trace: Trace, n_items: int, cell: CellConfig | None = None) -> None:
        self.trace = trace
        self.cell = cell or CellConfig(bandwidth_mhz=trace.meta.bandwidth_mhz or 20.0, numerology=trace.meta.numerology)
        trace.check_cell(self.cell.numerology, self.cell.prbs)
        stride = max(1, trace.slots // max(1, n_items))
        #: start slot of item i: spread evenly over the trace
        self.starts = [i * stride for i in range(n_items)]

    def allocation(self, i: int, n_re: int) -> Allocation:
        """The REs of item ``i``'s transmission of ``n_re`` REs (the whole carrier, slot after slot)."""
        return Allocation.contiguous(n_re, self.starts[i], self.cell.prbs, self.cell.re_per_prb)

    def gains(self, i: int, n_re: int) -> tuple[np.ndarray, np.ndarray]:
        """``(H [n_re] complex, slot [n_re])`` of item ``i``'s REs."""
        alloc = self.allocation(i, n_re)
        return element_gains(self.trace, alloc), alloc.slots

    def send(self, x: np.ndarray, i: int, snr_db: float, rng: np.random.Generator) -> np.ndarray:
        """Item ``i`` (any shape, ``n`` real values) over its REs at mean SNR ``snr_db``; the equalised estimate."""
        h, _ = self.gains(i, -(-int(x.size) // 2))
        return transmit_on_grid(x, h, snr_db, rng).received


def effective_snr_db(g2: np.ndarray, snr_db: float) -> float:
    """The MIESM effective SNR (dB) of REs of power gains ``g2`` ``[m]`` at mean SNR ``snr_db``:
    ``Γ·(2^{mean log2(1 + |H|²·SNR/Γ)} − 1)`` with the MCS table's gap Γ (so a flat channel gives ``snr_db``)."""
    gap = 10.0 ** (SNR_GAP_DB / 10.0)
    rate = float(np.mean(np.log2(1.0 + np.asarray(g2, dtype=np.float64) * 10.0 ** (snr_db / 10.0) / gap)))
    lin = gap * (2.0 ** rate - 1.0)
    return 10.0 * math.log10(lin) if lin > 0 else -math.inf


def png_delivered(ue: LoneUe, i: int, png_bytes: int, snr_db: float) -> bool:
    """Whether item ``i``'s PNG of ``png_bytes`` arrives (see the module docstring): at the mean SNR's MCS, every
    slot's transport block must have an effective SNR at or above the MCS's threshold."""
    mcs = select_mcs(snr_db)
    if mcs is None:
        return False
    from shared.channel.mcs import digital_re

    n_re = digital_re(8 * png_bytes, mcs)
    h, slots = ue.gains(i, n_re)
    g2 = np.abs(h).astype(np.float64) ** 2
    bounds = np.flatnonzero(np.diff(slots)) + 1
    return all(effective_snr_db(block, snr_db) >= mcs.threshold_db - 1e-9 for block in np.split(g2, bounds))


def send_png_on_trace(ue: LoneUe, sizes: Sequence[int], snr_db: float) -> list[bool]:
    """Which of the PNGs (of ``sizes`` bytes, item ``i`` = PNG ``i``) arrive at mean SNR ``snr_db``."""
    return [png_delivered(ue, i, b, snr_db) for i, b in enumerate(sizes)]
