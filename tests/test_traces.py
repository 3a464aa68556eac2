"""Channel traces (``shared.channel.trace``, ``meg-lab make-trace``): the file round trip, the generator's statistics
in the replay (mean power, Jakes time correlation at two speeds, frequency correlation from the delay profile),
block fading as a flat trace, the replay's signal model, bad traces refused with the file and field named.

Traces from Sionna need the lab extra (``sionna-no-rt``): those tests skip, saying so, where it is missing. One
module-scoped fixture pays Sionna's import and draws every Sionna trace the tests use (small: at most 4,000
slots of 11 PRBs)."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from meg_lab.cli import main as lab_main
from shared.channel.models import ChannelConfigError
from shared.channel.profiles import ChannelProfile
from shared.channel.trace import (
    Allocation,
    Trace,
    TraceError,
    TraceMeta,
    TraceReplay,
    block_trace,
    element_gains,
    load_trace,
    save_trace,
    transmit_on_grid,
)
from shared.channel.transmit import transmit
from tests.support.procs import script

# --- Sionna traces (lab extra) --------------------------------------------------------------------------------

#: Two speeds at 3.5 GHz on a 10 MHz carrier at 60 kHz (11 PRB, 0.25 ms slots): f_D = 97 Hz and 389 Hz.
SPEEDS = {30.0: 1.0, 120.0: 0.5}  # km/h -> seconds of trace (about 100 and 200 Doppler periods)


@pytest.fixture(scope="module")
def sionna_traces(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Traces drawn once: TDL-A at both speeds (in-process ``generate``), one made by the ``meg-lab make-trace``
    command (in-process ``main``) and, for comparison, the same draw made by calling Sionna directly."""
    pytest.importorskip("sionna", reason="the lab extra (sionna-no-rt) is not installed: no Sionna traces")
    from meg_lab.make_trace import generate

    out: dict[str, Any] = {"tdl": {v: generate("TDL-A", v, 3.5, 10, 2, s, seed=7) for v, s in SPEEDS.items()}}
    path = tmp_path_factory.mktemp("traces") / "tdl-c.npz"
    rc = lab_main(["make-trace", "--model", "TDL-C", "--speed-kmh", "60", "--carrier-ghz", "2.6", "--bandwidth-mhz",
                   "5", "--numerology", "0", "--seconds", "0.2", "--seed", "11", "--delay-spread-ns", "300",
                   "--per", "subcarrier", "--out", str(path)])
    assert rc == 0
    out["made"] = path
    out["direct"] = _sionna_directly("C", 60.0, 2.6e9, 300e-9, prbs=25, scs=15e3, slots=200, seed=11)
    return out


def _sionna_directly(letter: str, speed_kmh: float, fc: float, ds: float, prbs: int, scs: float, slots: int,
                     seed: int) -> np.ndarray:
    """Sionna's TDL sampled once per slot at every subcarrier, written out here without meg's code:
    ``[slots, 12·prbs]`` complex, normalised to mean |H|² = 1."""
    import sionna.phy
    from sionna.phy.channel import cir_to_ofdm_channel, subcarrier_frequencies
    from sionna.phy.channel.tr38901 import TDL

    sionna.phy.config.seed = seed
    v = speed_kmh / 3.6
    tdl = TDL(letter, delay_spread=ds, carrier_frequency=fc, min_speed=v, max_speed=v, device="cpu")
    slot_s = 1e-3 * 15e3 / scs
    a, tau = tdl(1, slots, 1.0 / slot_s)
    h = cir_to_ofdm_channel(subcarrier_frequencies(12 * prbs, scs, device="cpu"), a, tau).reshape(slots, -1).numpy()
    return h / np.sqrt(np.mean(np.abs(h) ** 2))


def test_make_trace_round_trip_equals_sionna_called_directly(sionna_traces: dict[str, Any]) -> None:
    trace = load_trace(sionna_traces["made"])
    direct = sionna_traces["direct"]
    assert trace.h.shape == direct.shape == (200, 300)
    np.testing.assert_allclose(trace.h, direct, rtol=0, atol=2e-5)
    m = trace.meta
    assert (m.model, m.per, m.numerology, m.prbs, m.bandwidth_mhz, m.speed_kmh, m.carrier_ghz, m.seed) == (
        "TDL-C", "subcarrier", 0, 25, 5.0, 60.0, 2.6, 11)
    assert m.delay_spread_ns == 300.0 and m.generator.startswith("sionna-no-rt ") and m.seconds == pytest.approx(0.2)
    # the replay reads the same H for the same slot and element (with the start offset and the wrap-around)
    slots, sc = np.array([0, 5, 199, 200, 201]), np.array([0, 17, 299, 3, 150])
    np.testing.assert_allclose(trace.gains(slots, sc), direct[slots % 200, sc], rtol=0, atol=2e-6)
    np.testing.assert_array_equal(trace.gains(slots, sc, offset_slots=30), trace.h[(slots + 30) % 200, sc])


def test_mean_power_of_the_replay_is_one(sionna_traces: dict[str, Any]) -> None:
    """A lone UE's transmissions back to back (8,192 REs each, from a start offset on, wrapping around): mean |H|²
    over their REs = 1 ± 2 %, and the mean effective SNR of the replays is the profile's."""
    for h, meta in sionna_traces["tdl"].values():
        replay = TraceReplay(Trace(h, meta), snr_db=10.0, offset_s=0.1)
        per_slot = meta.prbs * 144
        rng = np.random.default_rng(0)
        gains, snrs = [], []
        for i in range(int(1.3 * h.size * 144 / 8192)):  # 1.3 times through the trace
            alloc = Allocation.contiguous(8192, i * 8192 // per_slot, meta.prbs, 144)
            gains.append(np.abs(replay.gains(alloc)) ** 2)
            snrs.append(replay.transmit(rng.normal(size=2 * 8192), alloc, rng).effective_snr_db)
        assert np.mean(np.concatenate(gains)) == pytest.approx(1.0, abs=0.02)
        assert 10 * np.log10(np.mean(10 ** (np.array(snrs) / 10))) == pytest.approx(10.0, abs=0.1)


@pytest.mark.parametrize("speed", list(SPEEDS))
def test_time_correlation_follows_jakes(sionna_traces: dict[str, Any], speed: float) -> None:
    """E[H(t) H*(t+τ)] of each PRB (averaged over the PRBs) against J0(2π f_D τ) for f_D·τ up to 1."""
    from scipy.special import j0

    h, meta = sionna_traces["tdl"][speed]
    fd = speed / 3.6 * 3.5e9 / 299_792_458.0
    assert meta.extra["doppler_hz"] == pytest.approx(fd)
    lags = np.arange(int(1.0 / (fd * meta.slot_s)) + 1)
    rho = np.array([np.mean((h[: len(h) - k] * np.conj(h[k:])).real) for k in lags])
    expected = j0(2 * np.pi * fd * lags * meta.slot_s)
    assert len(lags) >= 10
    assert np.abs(rho - expected).max() < 0.12, np.round(np.c_[rho, expected], 3)
    # and it is not flat: the correlation has fallen past J0's first zero by f_D·τ = 0.5
    assert rho[int(0.5 / (fd * meta.slot_s))] < 0.0


def test_frequency_correlation_matches_the_delay_profile(sionna_traces: dict[str, Any]) -> None:
    """E[H(f) H*(f+Δ)] over PRB spacings Δ against Σ_k P_k exp(j2πΔτ_k) of the TDL's taps (in the file's meta)."""
    for h, meta in sionna_traces["tdl"].values():
        delays = np.array(meta.extra["tap_delays_ns"]) * 1e-9
        powers = np.array(meta.extra["tap_powers"]) / np.sum(meta.extra["tap_powers"])
        prb_hz = 12 * 60e3
        k = np.arange(meta.prbs)
        got = np.array([np.mean(h[:, : meta.prbs - d] * np.conj(h[:, d:])) for d in k])
        expected = np.array([np.sum(powers * np.exp(2j * np.pi * d * prb_hz * delays)) for d in k])
        assert np.abs(got - expected).max() < 0.1, np.round(np.c_[np.abs(got), np.abs(expected)], 3)
        assert np.abs(expected - 1).max() > 0.5  # 100 ns over 7 MHz: far from flat, so the check has teeth


def test_cdl_trace_is_made_and_normalised(tmp_path: Path) -> None:
    pytest.importorskip("sionna", reason="the lab extra (sionna-no-rt) is not installed")
    from meg_lab.make_trace import generate

    h, meta = generate("CDL-C", 3.0, 3.5, 5, 0, 0.05, seed=1, per="prb")
    save_trace(tmp_path / "c.npz", h, meta)
    trace = load_trace(tmp_path / "c.npz")
    assert trace.h.shape == (50, 25) and trace.meta.model == "CDL-C"
    assert float(np.mean(np.abs(trace.h) ** 2)) == pytest.approx(1.0, abs=1e-4)


# --- imports (no Sionna needed) -----------------------------------------------------------------------------------


def test_csv_import_through_the_console_script(tmp_path: Path) -> None:
    csv = tmp_path / "snr.csv"
    csv.write_text("time_s,snr_db\n0,10\n0.5,0\n1.0,20\n")
    out = tmp_path / "snr.npz"
    r = subprocess.run([script("meg-lab"), "make-trace", "--from-csv", str(csv), "--numerology", "0", "--seconds",
                        "1.5", "--out", str(out)], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    trace = load_trace(out)
    assert trace.h.shape == (1500, 1) and trace.meta.per == "flat" and trace.meta.generator == "csv import"
    power_db = 10 * np.log10(np.abs(trace.h[:, 0]) ** 2)
    # held from each time to the next; the shape kept (relative dB), the recorded mean in the metadata
    assert np.ptp(power_db[:500]) < 1e-4 and power_db[0] - power_db[600] == pytest.approx(10, abs=1e-3)
    assert power_db[1200] - power_db[0] == pytest.approx(10, abs=1e-3)
    assert trace.meta.mean_snr_db == pytest.approx(10 * math.log10((10 + 1 + 100) / 3), abs=1e-6)


def test_mahimahi_import(tmp_path: Path) -> None:
    """1500-byte opportunities: 10 per ms for 100 ms (120 Mbit/s), none for 100 ms, 1 per ms (12 Mbit/s)."""
    lines = [str(ms) for ms in range(100) for _ in range(10)] + [str(ms) for ms in range(200, 300)]
    (tmp_path / "cell.mm").write_text("\n".join(lines) + "\n")
    out = tmp_path / "mm.npz"
    assert lab_main(["make-trace", "--from-mahimahi", str(tmp_path / "cell.mm"), "--window-ms", "100",
                     "--bandwidth-mhz", "20", "--numerology", "0", "--out", str(out)]) == 0
    trace = load_trace(out)
    g = np.abs(trace.h[:, 0]) ** 2
    assert trace.slots == 300 and (g[100:200] == 0).all()  # the empty window is an outage
    from shared.channel.mcs import SNR_GAP_DB

    snr = [10 ** (SNR_GAP_DB / 10) * (2 ** (r / 20e6) - 1) for r in (120e6, 12e6)]
    assert g[0] / g[250] == pytest.approx(snr[0] / snr[1], rel=1e-5)


def test_make_trace_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert lab_main(["make-trace", "--out", str(tmp_path / "x.npz")]) == 2
    assert "exactly one of --model, --from-csv, --from-mahimahi" in capsys.readouterr().err
    (tmp_path / "bad.csv").write_text("0,1\nzero,2\n")
    assert lab_main(["make-trace", "--from-csv", str(tmp_path / "bad.csv"), "--out", str(tmp_path / "x.npz")]) == 1
    assert "bad.csv: line 2 is not time_s,snr_db" in capsys.readouterr().err
    assert not (tmp_path / "x.npz").exists()


# --- replay math (numpy only) -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "csi_error"), [("rayleigh", 0.0), ("rician", 0.0), ("awgn", 0.0)])
def test_flat_trace_reproduces_block_fading(model: str, csi_error: float) -> None:
    """Block fading = a flat piecewise-constant real trace: same RNG, same received values (float32 rounding)."""
    profile = ChannelProfile("p", model, 7.0, coherence_symbols=16, k_factor=3.0, csi_error=csi_error)
    x = np.random.default_rng(1).normal(0, 2.5, size=(4, 8, 9)).astype(np.float32)  # 288 values, 18 blocks
    want = transmit(x, profile, np.random.default_rng(5))
    rng = np.random.default_rng(5)
    blocks = profile.model_object().generate(math.ceil(x.size / 16), rng) if profile.fading else np.ones(1)
    h, meta = block_trace(blocks)
    lc = profile.block_length
    allocation = Allocation.contiguous(x.size // 2, 0, 1, lc // 2) if lc else Allocation.contiguous(x.size // 2, 0, 1,
                                                                                                      x.size)
    got = transmit_on_grid(x, element_gains(Trace(h, meta), allocation), profile.snr_db, rng)
    np.testing.assert_allclose(got.received, want.received, rtol=1e-5, atol=1e-5)
    assert got.effective_snr_db == pytest.approx(want.effective_snr_db, abs=1e-6)
    assert got.energy == want.energy and got.symbols == want.symbols and got.resource_elements == 144


def test_replay_signal_model() -> None:
    """y = H·sqrt(p)·x + n per RE: exact with no noise; the residual after ZF has variance N0/|H|² per component;
    a wrong CSI rotates and scales the estimate by H/Ĥ; an odd count pads the last RE's quadrature."""
    rng = np.random.default_rng(3)
    m = 20_000
    h = (rng.normal(size=m) + 1j * rng.normal(size=m)) / np.sqrt(2)
    x = rng.normal(size=2 * m).astype(np.float32)
    clean = transmit_on_grid(x, h, 10.0, rng, noisy=False)
    np.testing.assert_allclose(clean.received, x, rtol=1e-4, atol=1e-4)
    noisy = transmit_on_grid(x, h, 10.0, np.random.default_rng(4))
    scale = float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))
    err = (noisy.received - x) / scale
    per_re = np.repeat(np.abs(h) ** 2, 2)
    assert np.mean(err**2 * per_re) == pytest.approx(0.1, rel=0.03)  # N0 = 10^(-10/10)
    assert noisy.effective_snr_db == pytest.approx(10 + 10 * math.log10(np.mean(np.abs(h) ** 2)), abs=1e-6)
    # CSI off by a phase of 90 degrees: I and Q swap (with a sign)
    rotated = transmit_on_grid(x[:4], np.ones(2), 10.0, rng, h_hat=np.full(2, 1j), noisy=False)
    np.testing.assert_allclose(rotated.received, [x[1], -x[0], x[3], -x[2]], rtol=1e-5)
    odd = transmit_on_grid(x[:5], h[:3], 30.0, rng, noisy=False)
    assert odd.received.shape == (5,) and odd.resource_elements == 3
    np.testing.assert_allclose(odd.received, x[:5], rtol=1e-4, atol=1e-5)
    with pytest.raises(ChannelConfigError, match="need 3 resource elements, got gains for 2"):
        transmit_on_grid(x[:5], h[:2], 10.0, rng)


def test_power_allocation_and_outage_elements() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=8).astype(np.float32)
    h = np.array([1, 0.5j, 0, 2], dtype=np.complex128)
    r = transmit_on_grid(x, h, 20.0, rng, block_power=np.array([1.0, 0.0]), power_block_length=4, noisy=False)
    assert r.energy == 4.0
    np.testing.assert_allclose(r.received[:4], x[:4], rtol=1e-5)
    assert (r.received[4:] == 0).all()  # no power, and an RE of H = 0: received as 0
    noisy = transmit_on_grid(x, h, 20.0, rng, block_power=np.array([1.0, 0.0]), power_block_length=4)
    assert noisy.effective_snr_db == pytest.approx(10 * math.log10((2 * 1 + 2 * 0.25) / 8 / 0.01))


def test_allocation_from_scheduler_units() -> None:
    """REs follow the grant units in order from a lead offset; each PRB's REs go over its 12 subcarriers."""
    a = Allocation.from_units([(3, 0), (3, 1), (4, 0)], n_re=20, re_per_prb=8, lead=4)
    assert a.slots.tolist() == [3] * 4 + [3] * 8 + [4] * 8
    assert a.subcarriers[:4].tolist() == [4, 5, 6, 7] and a.subcarriers[4:12].tolist() == list(range(12, 20))
    with pytest.raises(TraceError, match="3 grant units of 8 REs cannot carry 20 REs from offset 5"):
        Allocation.from_units([(3, 0), (3, 1), (4, 0)], n_re=20, re_per_prb=8, lead=5)
    c = Allocation.contiguous(300, first_slot=10, prbs=2, re_per_prb=100)
    assert c.slots.tolist() == [10] * 200 + [11] * 100
    assert c.subcarriers[99:102].tolist() == [3, 12, 13]  # RE 99 of PRB 0 (99 mod 12), then PRB 1


def test_trace_replay_scales_to_the_profile_snr() -> None:
    h = np.exp(1j * np.linspace(0, 6, 40)).reshape(40, 1).astype(np.complex64)
    trace = Trace(h, TraceMeta(model="flat", per="flat", numerology=1))
    replay = TraceReplay(trace, snr_db=12.0, offset_s=0.005, gain_db=-2.0)
    assert replay.offset_slots == 10 and replay.effective_snr_db == 10.0
    alloc = Allocation.contiguous(4, 35, prbs=1, re_per_prb=2)
    np.testing.assert_array_equal(replay.gains(alloc), h[[5, 5, 6, 6], 0])  # 35 + 10 wraps to 5
    r = replay.transmit(np.ones(8, np.float32), alloc, np.random.default_rng(0))
    assert r.effective_snr_db == pytest.approx(10.0, abs=1e-5)


# --- bad traces ---------------------------------------------------------------------------------------------------


def _write(path: Path, h: np.ndarray, meta: dict[str, Any]) -> Path:
    np.savez(path, h=h, meta=np.array(json.dumps({"format": "meg-trace", "version": 1, **meta})))
    return path


GOOD = {"model": "TDL-A", "per": "prb", "numerology": 1, "prbs": 3, "bandwidth_mhz": 5.0}


@pytest.mark.parametrize(("h", "meta", "message"), [
    (np.ones((4, 3, 2), np.complex64), GOOD, "h must be a 2-D array [slots, elements], got shape (4, 3, 2)"),
    (np.ones((4, 5), np.complex64), GOOD, "h has 5 elements per slot but meta.per = 'prb' with meta.prbs = 3 needs 3"),
    (np.array([[1, 1, 1], [1, np.nan, 1]], np.complex64), GOOD, "NaN or infinite gain (first at slot 1, element 1)"),
    (np.full((4, 3), 3, np.complex64), GOOD, "mean |H|^2 = 9; a trace is normalised to 1"),
    (np.ones((4, 3), np.complex64), {**GOOD, "model": "TDL-Z"}, "meta.model 'TDL-Z' is unknown; known: TDL-A"),
    (np.ones((4, 3), np.complex64), {**GOOD, "numerology": 5}, "meta.numerology 5 is not an FR1 numerology"),
    (np.ones((4, 3), np.complex64), {k: v for k, v in GOOD.items() if k != "per"}, "meta.per is missing"),
    (np.ones((4, 3), np.complex64), {**GOOD, "speed_kmh": -3}, "meta.speed_kmh must be a finite number >= 0"),
])
def test_bad_traces_name_the_file_and_field(tmp_path: Path, h: np.ndarray, meta: dict[str, Any], message: str) -> None:
    path = _write(tmp_path / "bad.npz", h, meta)
    with pytest.raises(TraceError) as info:
        load_trace(path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value), str(info.value)


def test_unreadable_files_and_a_numerology_that_does_not_match_the_cell(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="no such trace file"):
        load_trace(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(TraceError, match="junk.npz: not a readable trace file"):
        load_trace(tmp_path / "junk.npz")
    np.savez(tmp_path / "other.npz", gains=np.ones(3))
    with pytest.raises(TraceError, match=r"holds arrays h and meta, found \['gains'\]"):
        load_trace(tmp_path / "other.npz")
    trace = load_trace(_write(tmp_path / "ok.npz", np.ones((4, 3), np.complex64), GOOD))
    trace.check_cell(1, 3)
    with pytest.raises(TraceError, match=r"ok.npz: meta.numerology 1 does not match the cell's numerology 0"):
        trace.check_cell(0)
    with pytest.raises(TraceError, match=r"ok.npz: meta.prbs 3 \(prb gains of a 5 MHz carrier\) is fewer than the "
                                         r"cell's 25 PRBs"):
        trace.check_cell(1, 25)
    assert not trace.h.flags.writeable


def test_save_refuses_a_bad_trace_and_leaves_no_file(tmp_path: Path) -> None:
    meta = TraceMeta(model="TDL-A", per="prb", numerology=0, prbs=2)
    with pytest.raises(TraceError, match="NaN"):
        save_trace(tmp_path / "t.npz", np.array([[1, np.nan]], np.complex64), meta)
    assert list(tmp_path.iterdir()) == []


# --- replay in the proxy's link table (in process, a virtual clock) ---------------------------------------------


def _synthetic_trace(path: Path, slots: int = 100, prbs: int = 25, seed: int = 0) -> Path:
    """A per-PRB trace of a 5 MHz carrier at 15 kHz, i.i.d. CN(0, 1) gains (no Sionna needed)."""
    rng = np.random.default_rng(seed)
    h = (rng.normal(size=(slots, prbs)) + 1j * rng.normal(size=(slots, prbs))) / np.sqrt(2)
    from shared.channel.trace import normalise

    save_trace(path, normalise(h), TraceMeta(model="TDL-A", per="prb", numerology=0, bandwidth_mhz=5.0, prbs=prbs,
                                             generator="test"))
    return path


def test_link_table_replays_the_trace_on_the_tensors_resource_elements(tmp_path: Path) -> None:
    """A trace profile in the proxy's LinkTable: the tensor's ⌈n/2⌉ REs start in the slot of its arrival (+ the
    profile's offset) and fill the carrier PRB by PRB (5 MHz: 25 PRB × 144 RE); the received values are exactly
    transmit_on_grid's on those gains with the recorded noise seed."""
    from channel_emulator.link import LinkTable
    from channel_emulator.replay import REPLAY
    from shared.channel.profiles import IDEAL, profile_from_mapping
    from shared.channel.scheduler import VirtualClock
    from shared.channel.trace import estimate_gains
    from shared.pb import edge_pb2
    from shared.wire import air

    path = _synthetic_trace(tmp_path / "t.npz")
    profile = profile_from_mapping("moving", {"trace": str(path), "snr_db": 15, "csi_error": 0.1,
                                              "trace_offset_s": 0.003})
    assert profile.model == "awgn"
    clock = VirtualClock(50.0)
    REPLAY.restart(clock.now)
    try:
        table = LinkTable(load_profiles_book(profile), IDEAL, profile)
        x = np.random.default_rng(2).normal(size=9000).astype(np.float32)  # 4,500 RE: PRB 0..24 of slot 11, 6 of 12
        clock.advance_to(50.0105)  # in slot 10: the first slot it may use is 11
        msg = edge_pb2.ProbeResponse(tensors=[air.to_air("x", x)])
        assert table.apply("u->es0", "downlink", msg, msg.ByteSize())
        applied = msg.tensors[0].applied
        alloc = Allocation.contiguous(4500, 11, 25, 144)
        assert alloc.slots[-1] == 12 and applied.blocks == 2
        trace = load_trace(path)
        h = trace.gains(alloc.slots, trace.element_of(alloc.subcarriers), offset_slots=3)
        np.testing.assert_array_equal(h[:144], trace.h[14, 0])  # PRB 0 of slot 11 + 3
        rng = np.random.default_rng(applied.noise_seed)
        want = transmit_on_grid(x, h, 15.0, rng, h_hat=estimate_gains(h, 0.1, rng))
        np.testing.assert_array_equal(air.air_array(msg.tensors[0]), want.received)
        assert applied.effective_snr_db == pytest.approx(want.effective_snr_db)
    finally:
        REPLAY.restart(__import__("time").monotonic)


def test_csi_of_a_trace_link_is_what_the_next_transmission_gets(tmp_path: Path) -> None:
    """GetCSI's per-PRB gains (of the next slot on) pin the next transmission: it starts there, whatever the clock
    says by then, and its receiver equalises with exactly the reported CSI."""
    from channel_emulator.link import LinkTable
    from channel_emulator.replay import REPLAY
    from shared.channel.profiles import IDEAL, profile_from_mapping
    from shared.channel.scheduler import VirtualClock
    from shared.pb import edge_pb2
    from shared.wire import air

    path = _synthetic_trace(tmp_path / "t.npz", seed=4)
    profile = profile_from_mapping("moving", {"trace": str(path), "snr_db": 200, "csi_error": 0.2})
    clock = VirtualClock(0.0)
    REPLAY.restart(clock.now)
    try:
        table = LinkTable(load_profiles_book(profile), IDEAL, profile)
        table.link("u->es0")
        x = np.random.default_rng(3).normal(size=2 * 144 * 30).astype(np.float32)  # 30 PRBs' worth
        clock.advance_to(0.0204)  # slot 20: the CSI is of slot 21 on
        reported, coherence = REPLAY.csi("u->es0", "downlink", profile, symbols=x.size)
        assert coherence == 288 and reported.shape == (30,)
        clock.advance_to(0.0507)  # the transmission comes later: it still gets the reported units
        msg = edge_pb2.ProbeResponse(tensors=[air.to_air("x", x)])
        table.apply("u->es0", "downlink", msg, msg.ByteSize())
        got = air.air_array(msg.tensors[0]).astype(np.float64)
        trace = load_trace(path)
        units = np.arange(30)
        h_true = np.abs(trace.h[21 + units // 25, units % 25])
        # noiseless ZF with Ĥ: |x̂| / |x| per RE = |H| / |Ĥ| — with |Ĥ| the reported value, |H| the trace's
        ratio = np.hypot(got[0::2], got[1::2]) / np.hypot(x[0::2], x[1::2])
        np.testing.assert_allclose(ratio.reshape(30, 144) * reported[:, None], np.repeat(h_true[:, None], 144, 1),
                                   rtol=2e-4)
        assert np.abs(reported - h_true).std() > 0.05  # the CSI error is there (so the check is not trivial)
        assert not REPLAY.pins  # used once
    finally:
        REPLAY.restart(__import__("time").monotonic)


def test_csi_of_a_per_subcarrier_trace_is_one_gain_per_resource_element(tmp_path: Path) -> None:
    """A per-subcarrier trace: GetCSI reports |Ĥ| of every RE of the next transmission (coherence_symbols 2: each
    gain covers one RE's two real symbols) and that transmission's receiver equalises each RE with exactly it."""
    from channel_emulator.link import LinkTable
    from channel_emulator.replay import REPLAY
    from shared.channel.profiles import IDEAL, profile_from_mapping
    from shared.channel.scheduler import VirtualClock
    from shared.channel.trace import normalise
    from shared.pb import edge_pb2
    from shared.wire import air

    rng = np.random.default_rng(9)
    h = (rng.normal(size=(40, 300)) + 1j * rng.normal(size=(40, 300))) / np.sqrt(2)  # 25 PRBs x 12 subcarriers
    path = save_trace(tmp_path / "sc.npz", normalise(h), TraceMeta(model="TDL-C", per="subcarrier", numerology=0,
                                                                  bandwidth_mhz=5.0, prbs=25, generator="test"))
    profile = profile_from_mapping("moving", {"trace": str(path), "snr_db": 200, "csi_error": 0.2})
    clock = VirtualClock(0.0)
    REPLAY.restart(clock.now)
    try:
        table = LinkTable(load_profiles_book(profile), IDEAL, profile)
        table.link("u->es0")
        x = np.random.default_rng(3).normal(size=2 * 5000 + 1).astype(np.float32)  # 5,001 REs (the last holds one value)
        clock.advance_to(0.0034)  # slot 3: the CSI is of slot 4 on
        reported, coherence = REPLAY.csi("u->es0", "downlink", profile, symbols=x.size)
        assert coherence == 2 and reported.shape == (5001,)
        clock.advance_to(0.0207)
        msg = edge_pb2.ProbeResponse(tensors=[air.to_air("x", x)])
        table.apply("u->es0", "downlink", msg, msg.ByteSize())
        got = air.air_array(msg.tensors[0]).astype(np.float64)
        trace = load_trace(path)
        alloc = Allocation.contiguous(5001, 4, 25, 144)  # 5 MHz at 15 kHz: 144 REs a PRB with the default overhead
        h_true = np.abs(trace.gains(alloc.slots, trace.element_of(alloc.subcarriers)))
        xs = np.append(x, 0.0)
        ratio = np.hypot(np.append(got, 0.0)[0::2], np.append(got, 0.0)[1::2]) / np.hypot(xs[0::2], xs[1::2])
        # |x̂|/|x| = |H|/|Ĥ| on every full RE (the last one carries only I: the phase error leaks into the lost Q)
        np.testing.assert_allclose((ratio * reported)[:5000], h_true[:5000], rtol=2e-4)
        assert np.abs(reported - h_true).std() > 0.05 and not REPLAY.pins
        with pytest.raises(ChannelConfigError, match="one gain per resource element"):
            REPLAY.csi("u->es0", "downlink", profile, symbols=2 * (1 << 16) + 2)
    finally:
        REPLAY.restart(__import__("time").monotonic)


def load_profiles_book(*profiles: ChannelProfile) -> Any:
    from shared.channel.profiles import BUILTIN_PROFILES, ProfileBook

    return ProfileBook({**BUILTIN_PROFILES, **{p.name: p for p in profiles}}, {})


def test_trace_profiles_in_a_profiles_file(tmp_path: Path) -> None:
    from shared.channel.profiles import load_profiles

    path = _synthetic_trace(tmp_path / "t.npz")
    good = tmp_path / "p.toml"
    good.write_text(f'[profiles.drive]\ntrace = "{path}"\nsnr_db = 12\ntrace_offset_s = 0.5\ntrace_gain_db = -3\n')
    p = load_profiles(good).get("drive")
    assert (p.model, p.trace, p.snr_db, p.trace_offset_s, p.trace_gain_db) == ("awgn", str(path), 12.0, 0.5, -3.0)
    for body, message in [
        (f'trace = "{tmp_path}/nope.npz"\nsnr_db = 3', "nope.npz: no such trace file"),
        (f'trace = "{path}"', "a trace needs snr_db, the mean SNR it is scaled to"),
        (f'trace = "{path}"\nsnr_db = 3\nmodel = "rayleigh"', "its model must be awgn"),
        (f'trace = "{path}"\nsnr_db = 3\ntrace_offset_s = -1', "trace_offset_s must be a finite number >= 0"),
    ]:
        bad = tmp_path / "bad.toml"
        bad.write_text(f"[profiles.drive]\n{body}\n")
        with pytest.raises(ChannelConfigError) as info:
            load_profiles(bad)
        assert str(info.value).startswith(f"{bad}: ") and message in str(info.value), str(info.value)


def test_block_gains_for_block_level_power_control() -> None:
    """Per-block amplitudes of a tensor on a trace (what eval-power --trace gives its policies): a block inside one
    PRB has that PRB's |H|; a block across two PRBs the RMS of its REs' gains."""
    from shared.channel.trace import block_gains

    h = np.array([[1.0, 2.0], [3.0, 0.5]], np.complex64) * np.exp(1j * 0.3)  # 2 slots x 2 PRBs, per PRB
    trace = Trace(h, TraceMeta(model="TDL-A", per="prb", numerology=0, prbs=2))
    # 40 values = 20 REs over PRBs of 8 REs: PRB 0 of slot 1 (REs 0-7), PRB 1 (8-15), PRB 0 of slot 0 (16-19; wraps)
    g = block_gains(trace, 40, 8, start_slot=1, prbs=2, re_per_prb=8)
    assert g.shape == (5,)
    np.testing.assert_allclose(g[:2], [3.0, 3.0], rtol=1e-6)  # blocks of 8 values = 4 REs, inside PRB 0
    np.testing.assert_allclose(g[2:4], [0.5, 0.5], rtol=1e-6)
    np.testing.assert_allclose(g[4], 1.0, rtol=1e-6)  # wrapped to slot 0
    mixed = block_gains(trace, 40, 24, start_slot=1, prbs=2, re_per_prb=8)  # 12 REs: 8 at 3.0, 4 at 0.5
    np.testing.assert_allclose(mixed[0], np.sqrt((8 * 9 + 4 * 0.25) / 12), rtol=1e-6)


@pytest.mark.slow
def test_eval_power_runs_on_a_trace(tmp_path: Path) -> None:
    """``meg-lab eval-power --trace``: the policies run on the trace's block gains (uniform, oracle, PPO)."""
    import csv

    trace = _synthetic_trace(tmp_path / "t.npz")
    r = subprocess.run([script("meg-lab"), "eval-power", "--quick", "--no-fid", "--budgets", "1", "--trace", str(trace),
                        "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    with open(tmp_path / "out" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["policy"] for row in rows] == ["uniform", "oracle", "ppo"]
    assert all(math.isfinite(float(row["psnr"])) for row in rows)


def test_make_trace_help_and_a_missing_lab_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        lab_main(["make-trace", "--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0 and out.startswith("usage: meg-lab make-trace ") and "--speed-kmh" in out
    monkeypatch.setitem(__import__("sys").modules, "sionna", None)
    assert lab_main(["make-trace", "--model", "TDL-A", "--out", str(tmp_path / "t.npz")]) == 2
    err = capsys.readouterr().err
    assert "needs sionna" in err and "pip install 'meg[lab]'" in err and not (tmp_path / "t.npz").exists()
