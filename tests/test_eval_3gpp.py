"""``meg-lab eval`` on 3GPP channels: the lone UE's replay, the digital baseline's per-slot block error, the
channels' names, and the whole path on a tiny model (a numpy trace of known H; one lab-extra run through Sionna)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from meg_lab import evaluate
from meg_lab.eval_channels import (
    LoneUe,
    TraceSpec,
    effective_snr_db,
    parse_channels,
    png_delivered,
    send_png_on_trace,
    trace_for,
)
from shared.channel.cell import CellConfig
from shared.channel.mcs import digital_re, select_mcs
from shared.channel.models import ChannelConfigError
from shared.channel.profiles import ChannelProfile
from shared.channel.trace import Trace, TraceMeta, load_trace, save_trace
from shared.channel.transmit import transmit


def flat_gains_trace(amplitudes: np.ndarray) -> Trace:
    """A flat trace (one real gain per slot, numerology 1) straight from ``amplitudes`` [slots]."""
    h = np.asarray(amplitudes, dtype=np.float64).reshape(-1, 1).astype(np.complex64)
    return Trace(h, TraceMeta(model="block", per="flat", numerology=1), "test-flat")


def test_lone_ue_on_a_flat_trace_is_block_fading() -> None:
    """Item i sits in slot starts[i] (a seed fits in one slot): its replay is block fading with that slot's gain,
    and the same noise draws as shared.channel.transmit.transmit give the same received values."""
    amps = np.random.default_rng(3).rayleigh(np.sqrt(0.5), 40)
    ue = LoneUe(flat_gains_trace(amps), n_items=4)
    assert ue.starts == [0, 10, 20, 30]  # spread over the trace
    x = np.random.default_rng(1).normal(size=(4, 128)).astype(np.float32)
    rayleigh = ChannelProfile(model="rayleigh", snr_db=5.0, coherence_symbols=64)
    for i in range(4):
        got = ue.send(x[i], i, 5.0, np.random.default_rng([7, i]))
        want = transmit(x[i], rayleigh, np.random.default_rng([7, i]), fading=np.full(2, amps[ue.starts[i]])).received
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # unit gain everywhere: AWGN
    ones = LoneUe(flat_gains_trace(np.ones(8)), n_items=2)
    awgn = ChannelProfile(model="awgn", snr_db=0.0)
    got = ones.send(x[0], 1, 0.0, np.random.default_rng(5))
    np.testing.assert_allclose(got, transmit(x[0], awgn, np.random.default_rng(5)).received, rtol=1e-5, atol=1e-5)


def test_lone_ue_lays_res_over_the_carrier_slot_after_slot() -> None:
    """A per-PRB trace: RE j of an item is on PRB (j // 144) mod 51 of slot start + j // 7344."""
    cell = CellConfig(bandwidth_mhz=20.0, numerology=1)
    assert (cell.prbs, cell.re_per_prb) == (51, 144)
    slots = 6
    h = (np.arange(slots)[:, None] * 100 + np.arange(51)[None, :] + 1).astype(np.complex64)
    h = h / np.sqrt(np.mean(np.abs(h) ** 2))
    trace = Trace(h, TraceMeta(model="TDL-A", per="prb", numerology=1, bandwidth_mhz=20.0, prbs=51), "test-prb")
    ue = LoneUe(trace, n_items=3)
    assert ue.starts == [0, 2, 4]
    n_re = 7344 + 300
    gains, slot = ue.gains(1, n_re)
    j = np.arange(n_re)
    np.testing.assert_array_equal(slot, 2 + j // 7344)
    np.testing.assert_array_equal(gains, h[2 + j // 7344, (j % 7344) // 144])


def test_effective_snr_and_the_digital_blocks() -> None:
    """Flat: the effective SNR is the SNR and the PNG arrives iff the AWGN rule (select_mcs) says so; a fade in one
    of its slots loses the image; frequency selectivity lowers the effective SNR below the mean (Jensen)."""
    assert effective_snr_db(np.ones(10), 7.0) == pytest.approx(7.0)
    assert effective_snr_db(np.array([0.2, 1.8]), 7.0) < 7.0
    ones = LoneUe(flat_gains_trace(np.ones(64)), n_items=2)
    for snr in (-10.0, -6.5, -5.9, 0.0, 25.0):
        assert send_png_on_trace(ones, [3000, 3000], snr) == [select_mcs(snr) is not None] * 2
    # item 1 starts at slot 32; its PNG at 0 dB spans some slots; fade the second of them
    mcs = select_mcs(0.0)
    assert mcs is not None
    span = math.ceil(digital_re(8 * 3000, mcs) / 7344)
    assert span >= 2
    amps = np.ones(64)
    amps[33] = 0.3
    faded = LoneUe(flat_gains_trace(amps), n_items=2)
    assert png_delivered(faded, 0, 3000, 0.0) and not png_delivered(faded, 1, 3000, 0.0)
    amps[32 + span] = 0.01  # the slot after its last one: no matter
    assert png_delivered(LoneUe(flat_gains_trace(amps), n_items=2), 0, 3000, 0.0)


def test_channel_names() -> None:
    chans = parse_channels("awgn, TDL-C,cdl-c", speeds=(3, 120), seconds=0.5, seed=4)
    assert chans[0] == "awgn"
    specs = [c for c in chans if isinstance(c, TraceSpec)]
    assert [s.label for s in specs] == ["tdl-c@3kmh", "tdl-c@120kmh", "cdl-c@3kmh", "cdl-c@120kmh"]
    assert specs[0].seconds == 0.5 and specs[0].seed == 4 and specs[0].model == "TDL-C"
    with pytest.raises(ChannelConfigError, match=r"unknown channel 'tdl-x'.*known: awgn, rayleigh, tdl-a"):
        parse_channels("awgn,tdl-x")
    with pytest.raises(ChannelConfigError, match="twice"):
        parse_channels("tdl-a", speeds=(3, 3))
    with pytest.raises(ChannelConfigError, match="speeds"):
        parse_channels("tdl-a", speeds=(-1,))


def test_cli_refuses_an_unknown_channel_and_keeps_the_old_sweeps(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"unknown channel 'umi'"):
        evaluate.main(["--out", str(tmp_path), "--channels", "awgn,umi"])
    with pytest.raises(SystemExit, match="--snrs"):
        evaluate.main(["--out", str(tmp_path), "--snrs", "a,b"])
    assert not any(tmp_path.iterdir())  # refused before anything was loaded or written
    import argparse

    p = argparse.ArgumentParser()
    evaluate.add_arguments(p)
    # no new flag: paper 2's sweeps exactly as before (what benchmarks/results/eval was made with)
    assert evaluate.sweep_from_args(p.parse_args(["--out", "x"])) == evaluate.FULL
    assert evaluate.sweep_from_args(p.parse_args(["--out", "x", "--quick"])) == evaluate.QUICK
    s = evaluate.sweep_from_args(p.parse_args(["--out", "x", "--snrs=-10:30:5", "--fcs", "0.5", "--n", "16",
                                               "--channels", "tdl-a", "--speeds", "3,30"]))
    assert s.snrs == (-10.0, -5.0, 0.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0) and s.fcs == (0.5,) and s.n == 16
    assert [c.label for c in s.channels if isinstance(c, TraceSpec)] == ["tdl-a@3kmh", "tdl-a@30kmh"]


def _rows(path: Path) -> list[dict[str, str]]:
    with (path / "results.csv").open() as f:
        return list(csv.DictReader(f))


def test_eval_on_a_unit_gain_trace_equals_awgn(random_model_dir: Path, tmp_path: Path) -> None:
    """The whole 3GPP path on the random model, 2 prompts, 1 SNR: a cached trace of H = 1 everywhere (numpy, in
    the cache under the spec's name) gives the AWGN rows (same noise seeds), the digital image arrives."""
    spec = TraceSpec("TDL-A", 30.0, seconds=0.01)
    cache = tmp_path / "tr" / "traces"
    cache.mkdir(parents=True)
    meta = TraceMeta(model="TDL-A", per="prb", numerology=1, bandwidth_mhz=20.0, prbs=51, carrier_ghz=3.5,
                     speed_kmh=30.0, delay_spread_ns=100.0, seed=0, seconds=0.01, generator="test: H = 1")
    save_trace(cache / spec.file_name, np.ones((20, 51), dtype=np.complex64), meta)
    assert trace_for(spec, cache).meta.generator == "test: H = 1"  # the cache is used, Sionna is not called
    awgn = evaluate.run(random_model_dir, tmp_path / "awgn", evaluate.Sweep(2, (3.0,), (0.5,), ("awgn",), fid=False))
    tr = evaluate.run(random_model_dir, tmp_path / "tr", evaluate.Sweep(2, (3.0,), (0.5,), (spec,), fid=False),
                      command="test")
    assert [r["channel"] for r in tr] == ["tdl-a@30kmh"] * len(awgn)
    # the random model ships the residual codec at fc 0.5 only
    assert [r["scheme"] for r in tr] == [r["scheme"] for r in awgn] == ["centralized", "raw-latent", "meg-residual",
                                                                       "digital-png"]
    for a, b in zip(awgn, tr):
        assert b["psnr_db"] == pytest.approx(a["psnr_db"], abs=2e-3), (a, b)
        assert (b["symbols"], b["outage"], b["digital_bytes"]) == (a["symbols"], a["outage"], a["digital_bytes"])
    assert [r["channel"] for r in _rows(tmp_path / "tr")] == ["tdl-a@30kmh"] * 4
    import json

    info = json.loads((tmp_path / "tr" / "run.json").read_text())
    assert info["command"] == "test" and info["traces"]["tdl-a@30kmh"]["start_slots"] == [0, 10]
    for name in ("psnr_vs_snr.png", "fid_vs_snr.png"):
        assert (tmp_path / "tr" / name).stat().st_size > 0
    # a deep fade under item 1 (slot 10): its pixels and latent suffer (the fixture's codec is untrained: its
    # seed's quality need not fall, but it changes), its PNG is lost
    h = np.ones((20, 51), dtype=np.complex64)
    h[10] = 0.05
    h /= np.sqrt(np.mean(np.abs(h) ** 2))
    save_trace(cache / spec.file_name, h, meta)
    faded = evaluate.run(random_model_dir, tmp_path / "tr", evaluate.Sweep(2, (3.0,), (0.5,), (spec,), fid=False))
    for a, b in zip(awgn, faded):
        if b["scheme"] == "digital-png":
            assert b["outage"] == 0.5 and math.isfinite(b["psnr_db"])
        elif b["scheme"] == "meg-residual":
            assert abs(b["psnr_db"] - a["psnr_db"]) > 0.1, (a, b)
        else:
            assert b["psnr_db"] < a["psnr_db"] - 1, (a, b)


@pytest.mark.slow  # Sionna's import alone is ~8 s
def test_eval_through_sionna(random_model_dir: Path, tmp_path: Path) -> None:
    """The lab extra's path: the CLI makes a short TDL-C trace with make-trace's code, caches it, replays it."""
    pytest.importorskip("sionna")
    out = tmp_path / "eval"
    argv = ["--model", str(random_model_dir), "--out", str(out), "--n", "2", "--snrs", "10", "--fcs", "0.5",
            "--no-fid", "--channels", "tdl-c", "--speeds", "120", "--trace-seconds", "0.02"]
    assert evaluate.main(argv) == 0
    rows = _rows(out)
    assert {r["channel"] for r in rows} == {"tdl-c@120kmh"} and len(rows) == 4
    assert all(math.isfinite(float(r["psnr_db"])) for r in rows if r["scheme"] != "digital-png")
    spec = TraceSpec("TDL-C", 120.0, seconds=0.02)
    f = out / "traces" / spec.file_name
    tr = load_trace(f)
    assert (tr.meta.model, tr.meta.speed_kmh, tr.meta.prbs, tr.slots) == ("TDL-C", 120.0, 51, 40)
    assert tr.meta.generator.startswith("sionna")
    from meg_lab.make_trace import generate

    h, _ = generate("TDL-C", 120.0, 3.5, 20.0, 1, 0.02, 0)  # make-trace's function, the same seed: the same file
    np.testing.assert_array_equal(tr.h, h)
    mtime = f.stat().st_mtime_ns
    assert evaluate.main(argv) == 0 and f.stat().st_mtime_ns == mtime  # the second run reuses the cache
    assert _rows(out) == rows
