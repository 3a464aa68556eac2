"""``meg-lab make-trace``: a channel trace file (``shared.channel.trace``) from a 3GPP TR 38.901 model or a recording.

From a model (Sionna, the lab extra's ``sionna-no-rt``): ``--model TDL-A|...|TDL-E|CDL-A|...|CDL-E`` at
``--speed-kmh`` on a ``--carrier-ghz`` carrier of ``--bandwidth-mhz`` at ``--numerology`` for ``--seconds``,
seeded by ``--seed``. The channel impulse response is sampled once per slot (Sionna's sum-of-sinusoids TDL,
its ray-based CDL with single omni antennas: SISO) and turned into the frequency response at each PRB's
centre (``--per prb``, the default) or at every subcarrier (``--per subcarrier``), then normalised to mean
``|H|²`` = 1. The tap delays and powers (TDL) are kept in the file's metadata.

From a recording (flat in frequency, one gain per slot; ``--numerology`` sets the slots):

- ``--from-csv FILE``: ``time_s,snr_db`` rows (a header line is allowed), held from each time to the next.
- ``--from-mahimahi FILE``: a Mahimahi trace — one line per 1500-byte delivery opportunity, its millisecond
  timestamp — turned into a rate over windows of ``--window-ms`` and that rate into an SNR by Shannon's formula
  with the gap of ``shared.channel.mcs`` over ``--bandwidth-mhz``: ``SNR = Γ·(2^(R/B) − 1)``; an empty window
  is an outage (no signal).

The metadata keep the recorded mean SNR (``mean_snr_db``); a profile that replays the trace sets its own mean
SNR with ``snr_db``.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from shared.channel.cell import NUMEROLOGIES, prb_count
from shared.channel.mcs import SNR_GAP_DB
from shared.channel.models import ChannelConfigError
from shared.channel.trace import (
    FADING_MODELS,
    SUBCARRIERS_PER_PRB,
    TraceError,
    TraceMeta,
    flat_trace,
    normalise,
    save_trace,
    snr_to_slots,
)

SPEED_OF_LIGHT = 299_792_458.0
MAHIMAHI_PACKET_BYTES = 1500
#: Slots generated per call of Sionna's frequency-response conversion (bounds the memory of long traces).
CHUNK_SLOTS = 2048


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The flags of ``meg-lab make-trace``."""
    ap.add_argument("--model", choices=FADING_MODELS, help="TR 38.901 model (Sionna)")
    ap.add_argument("--from-csv", metavar="FILE", help="import a time_s,snr_db CSV trace instead")
    ap.add_argument("--from-mahimahi", metavar="FILE", help="import a Mahimahi delivery-opportunity trace instead")
    ap.add_argument("--speed-kmh", type=float, default=3.0, help="UE speed (Doppler)")
    ap.add_argument("--carrier-ghz", type=float, default=3.5, help="carrier frequency")
    ap.add_argument("--bandwidth-mhz", type=float, default=20.0, help="channel bandwidth (TS 38.101-1 Table 5.3.2-1)")
    ap.add_argument("--numerology", type=int, default=1, choices=sorted(NUMEROLOGIES), help="mu: slots of 1 ms / 2^mu")
    ap.add_argument("--seconds", type=float, default=None, help="duration (default 1 s; an import: the recording's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--delay-spread-ns", type=float, default=100.0, help="RMS delay spread (TR 38.901 Table 7.7.3-1)")
    ap.add_argument("--per", choices=("prb", "subcarrier"), default="prb", help="one gain per PRB or per subcarrier")
    ap.add_argument("--direction", choices=("downlink", "uplink"), default="downlink", help="CDL: link direction")
    ap.add_argument("--window-ms", type=float, default=100.0, help="Mahimahi: rate averaging window")
    ap.add_argument("--out", required=True, help="trace file to write (.npz)")


def generate(model: str, speed_kmh: float, carrier_ghz: float, bandwidth_mhz: float, numerology: int, seconds: float,
             seed: int, delay_spread_ns: float = 100.0, per: str = "prb",
             direction: str = "downlink") -> tuple[np.ndarray, TraceMeta]:
    """H ``[slots, n]`` (complex64, mean ``|H|²`` = 1; ``n`` = PRBs or 12 · PRBs) and its metadata, drawn with
    Sionna. Deterministic in ``seed`` (Sionna's global seed is set)."""
    if model not in FADING_MODELS:
        raise ChannelConfigError(f"model must be one of {', '.join(FADING_MODELS)}, got {model!r}")
    for name, v, lo in (("speed_kmh", speed_kmh, 0.0), ("carrier_ghz", carrier_ghz, 1e-9), ("seconds", seconds, 1e-9),
                        ("delay_spread_ns", delay_spread_ns, 1e-9)):
        if not math.isfinite(v) or v < lo:
            raise ChannelConfigError(f"{name} must be a finite number {'> 0' if lo else '>= 0'}, got {v}")
    prbs = prb_count(bandwidth_mhz, numerology)
    slot_s = 1e-3 / (1 << numerology)
    slots = max(1, round(seconds / slot_s))
    if slots * prbs * (SUBCARRIERS_PER_PRB if per == "subcarrier" else 1) > 200_000_000:
        raise ChannelConfigError(f"{slots} slots x {prbs} PRBs ({per}) is too large a trace; shorten --seconds")
    import sionna  # the lab extra
    import sionna.phy
    import torch
    from sionna.phy.channel import cir_to_ofdm_channel, subcarrier_frequencies
    from sionna.phy.channel.tr38901 import CDL, TDL, Antenna

    sionna.phy.config.seed = seed
    fc, v = carrier_ghz * 1e9, speed_kmh / 3.6
    family, letter = model.split("-")
    extra: dict[str, Any] = {}
    channel: Any
    if family == "TDL":
        channel = TDL(letter, delay_spread=delay_spread_ns * 1e-9, carrier_frequency=fc, min_speed=v, max_speed=v,
                      device="cpu")
        extra = {"tap_delays_ns": [float(d) * 1e9 for d in channel.delays.cpu()],
                 "tap_powers": [float(p) for p in channel.mean_powers.cpu()], "los": bool(channel.los)}
    else:
        ant = Antenna(polarization="single", polarization_type="V", antenna_pattern="omni", carrier_frequency=fc,
                      device="cpu")
        channel = CDL(letter, delay_spread_ns * 1e-9, fc, ut_array=ant, bs_array=ant, direction=direction,
                      min_speed=v, max_speed=v, device="cpu")
        extra = {"direction": direction, "antennas": "SISO omni"}
    scs = NUMEROLOGIES[numerology] * 1e3
    freqs = subcarrier_frequencies(prbs * SUBCARRIERS_PER_PRB, scs, device="cpu")
    if per == "prb":  # each PRB's centre: between its subcarriers 5 and 6
        freqs = freqs.reshape(prbs, SUBCARRIERS_PER_PRB)[:, 5] + scs / 2
    with torch.no_grad():
        a, tau = channel(1, slots, 1.0 / slot_s)  # a: [1, 1, 1, 1, 1, paths, slots], tau: [1, 1, 1, paths]
        parts = [cir_to_ofdm_channel(freqs, a[..., i:i + CHUNK_SLOTS], tau, normalize=False)
                 .reshape(-1, freqs.numel()).numpy() for i in range(0, slots, CHUNK_SLOTS)]
    h = normalise(np.concatenate(parts, axis=0))
    meta = TraceMeta(model=model, per=per, numerology=numerology, bandwidth_mhz=float(bandwidth_mhz), prbs=prbs,
                     carrier_ghz=float(carrier_ghz), speed_kmh=float(speed_kmh), delay_spread_ns=float(delay_spread_ns),
                     seed=int(seed), seconds=slots * slot_s, generator=f"sionna-no-rt {sionna.__version__}",
                     extra={**extra, "doppler_hz": v * fc / SPEED_OF_LIGHT})
    return h, meta


def read_csv(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(time_s [k], snr_db [k])`` from a ``time_s,snr_db`` CSV (an optional header line)."""
    times, snrs = [], []
    with open(path, newline="") as f:
        for i, row in enumerate(csv.reader(f)):
            if not row or row[0].lstrip().startswith("#"):
                continue
            try:
                t, s = float(row[0]), float(row[1])
            except (ValueError, IndexError):
                if i == 0:  # a header
                    continue
                raise TraceError(f"{path}: line {i + 1} is not time_s,snr_db: {','.join(row)!r}") from None
            times.append(t)
            snrs.append(s)
    if not times:
        raise TraceError(f"{path}: no time_s,snr_db rows")
    return np.array(times), np.array(snrs)


def read_mahimahi(path: str | Path, window_ms: float, bandwidth_mhz: float) -> tuple[np.ndarray, np.ndarray]:
    """``(time_s [k], snr_db [k])`` of a Mahimahi trace: deliveries of 1500 bytes counted in windows of
    ``window_ms``, rate R = bits / window, ``SNR = Γ·(2^(R/B) − 1)`` (``-inf`` dB for an empty window)."""
    if not window_ms > 0:
        raise TraceError(f"window_ms must be > 0, got {window_ms}")
    stamps = []
    with open(path) as f:
        for i, line in enumerate(f):
            line = line.strip()
            if not line:
                continue
            try:
                stamps.append(int(line))
            except ValueError:
                raise TraceError(f"{path}: line {i + 1} is not a millisecond timestamp: {line!r}") from None
    if not stamps:
        raise TraceError(f"{path}: no delivery opportunities")
    ms = np.array(stamps, dtype=np.int64)
    if (np.diff(ms) < 0).any():
        raise TraceError(f"{path}: timestamps must not decrease")
    windows = math.ceil((ms[-1] + 1) / window_ms)
    counts = np.bincount((ms // window_ms).astype(np.int64), minlength=windows)[:windows]
    rate = counts * MAHIMAHI_PACKET_BYTES * 8 / (window_ms * 1e-3)
    b = bandwidth_mhz * 1e6
    with np.errstate(divide="ignore"):
        snr_db = 10 * np.log10(10 ** (SNR_GAP_DB / 10) * (np.power(2.0, rate / b) - 1.0))
    return np.arange(windows) * window_ms * 1e-3, snr_db


def import_trace(times: np.ndarray, snr_db: np.ndarray, numerology: int, seconds: float | None, generator: str,
                 source: str) -> tuple[np.ndarray, TraceMeta]:
    """A flat trace from an SNR series (sample-and-hold onto the slots)."""
    slots = snr_to_slots(times, snr_db, numerology, seconds)
    return flat_trace(slots, numerology, generator=generator, source=source)


def run(args: argparse.Namespace) -> int:
    """Make the trace and write it; prints one line describing it."""
    sources = [s for s in (args.model, args.from_csv, args.from_mahimahi) if s]
    if len(sources) != 1:
        print("meg-lab make-trace: give exactly one of --model, --from-csv, --from-mahimahi", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        if args.model:
            h, meta = generate(args.model, args.speed_kmh, args.carrier_ghz, args.bandwidth_mhz, args.numerology,
                               1.0 if args.seconds is None else args.seconds, args.seed, args.delay_spread_ns, args.per,
                               args.direction)
        elif args.from_csv:
            times, snr = read_csv(args.from_csv)
            h, meta = import_trace(times, snr, args.numerology, args.seconds, "csv import", str(args.from_csv))
        else:
            times, snr = read_mahimahi(args.from_mahimahi, args.window_ms, args.bandwidth_mhz)
            h, meta = import_trace(times, snr, args.numerology, args.seconds, "mahimahi import", str(args.from_mahimahi))
        out = save_trace(args.out, h, meta)
    except (ChannelConfigError, OSError) as exc:
        print(f"meg-lab make-trace: error: {exc}", file=sys.stderr)
        return 1
    what = f"{meta.model} {meta.speed_kmh:g} km/h" if args.model else f"{meta.generator} of {meta.source}"
    print(f"{out}: {what}, {h.shape[0]} slots x {h.shape[1]} {meta.per} gains (mu={meta.numerology}, "
          f"{meta.seconds:g} s), {out.stat().st_size / 1024:.0f} KiB in {time.perf_counter() - t0:.1f} s")
    return 0
