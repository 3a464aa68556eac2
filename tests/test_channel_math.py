"""Statistical checks of the channel models and functions in shared/channel.py."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from shared.channel.models import ChannelConfigError, Rayleigh, Rician
from shared.channel.profiles import IDEAL, ChannelProfile, load_profiles
from shared.channel.transmit import n_blocks, transmit


def test_ideal_link_is_exact() -> None:
    x = np.random.default_rng(0).normal(size=(1, 4, 8, 8)).astype(np.float32)
    out = transmit(x, IDEAL, np.random.default_rng(1))
    assert np.array_equal(out.received, x) and out.symbols == 256 and out.energy == 256


@pytest.mark.parametrize("snr_db", [-10.0, 0.0, 10.0, 30.0])
def test_awgn_noise_power_matches_snr(snr_db: float) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=200_000) * 3.0 + 1.0  # arbitrary power: the transmitter normalises it
    out = transmit(x, ChannelProfile(model="awgn", snr_db=snr_db), np.random.default_rng(1))
    noise = (out.received - x) / math.sqrt(np.mean(x**2))  # back in normalised units
    n0 = 10 ** (-snr_db / 10)
    # the sample variance of 200k Gaussian draws is within ±2 % of N0 with overwhelming probability
    assert np.var(noise) == pytest.approx(n0, rel=0.02)
    assert abs(np.mean(noise)) < 5 * math.sqrt(n0 / x.size)
    assert out.effective_snr_db == pytest.approx(snr_db)


@pytest.mark.parametrize("model", [Rayleigh(), Rician(0.0), Rician(5.0)])
def test_fading_has_unit_mean_power(model: object) -> None:
    h = model.generate(400_000, np.random.default_rng(2))  # type: ignore[attr-defined]
    assert np.all(h >= 0)
    # E|h|² = 1; the std of h² is ≤ 1, so the mean of 400k draws is within ±1 % (6 sigma)
    assert np.mean(h**2) == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("k", [1.0, 5.0, 20.0])
def test_rician_k_factor_by_moments(k: float) -> None:
    h2 = Rician(k).generate(400_000, np.random.default_rng(3)) ** 2
    gamma = np.var(h2) / np.mean(h2) ** 2  # = (1 + 2K) / (1 + K)²  for Rician
    root = math.sqrt(1 - gamma)
    assert root / (1 - root) == pytest.approx(k, rel=0.1)


def test_rayleigh_power_is_exponential() -> None:
    h2 = Rayleigh().generate(200_000, np.random.default_rng(4)) ** 2
    # P(|h|² > 1) = e^-1 for an exponential of mean 1
    assert np.mean(h2 > 1.0) == pytest.approx(math.exp(-1), abs=0.01)


def test_block_fading_structure_and_csi() -> None:
    prof = ChannelProfile(model="rayleigh", snr_db=200.0, coherence_symbols=100)
    x = np.random.default_rng(0).normal(size=1000)
    h = Rayleigh().generate(10, np.random.default_rng(5))
    # with CSI = the fading applied, a noiseless link is undone exactly; with a wrong CSI it is not
    exact = transmit(x, prof, np.random.default_rng(1), fading=h)
    assert exact.blocks == 10 and np.allclose(exact.received, x, atol=1e-3)
    wrong = transmit(x, prof, np.random.default_rng(1), fading=h, fading_estimate=h * 2)
    ratio = (wrong.received / x).reshape(10, 100)
    assert np.allclose(ratio, 0.5, atol=1e-3)  # constant within each block: the block structure
    # effective SNR reflects the fading drawn
    assert exact.effective_snr_db == pytest.approx(200 + 10 * math.log10(np.mean(h**2)), abs=1e-6)


def test_block_power_is_applied_and_accounted() -> None:
    x = np.random.default_rng(0).normal(size=1000)
    p = np.array([4.0, 1.0, 0.25, 0.0])  # 4 blocks of 250 symbols
    out = transmit(x, ChannelProfile(model="awgn", snr_db=10.0), np.random.default_rng(1), block_power=p, power_block_length=250)
    assert out.energy == pytest.approx(250 * p.sum())
    err = (out.received - x).reshape(4, 250)
    v = err[:3].var(axis=1) / np.mean(x**2)  # zero forcing: noise variance in block t scales as 1 / p_t
    assert v[0] < v[1] < v[2]
    assert np.all(out.received.reshape(4, 250)[3] == 0)  # no power, nothing received


def test_bad_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ChannelConfigError, match="unknown channel model"):
        ChannelProfile(model="rayleigh-typo", snr_db=10)
    with pytest.raises(ChannelConfigError, match="SNR must be a number"):
        ChannelProfile(model="awgn", snr_db=float("nan"))
    with pytest.raises(ChannelConfigError, match="coherence length"):
        ChannelProfile(model="rayleigh", snr_db=3, coherence_symbols=-5)
    with pytest.raises(ChannelConfigError, match=">= 0"):
        n_blocks(10, -1)
    with pytest.raises(ChannelConfigError, match="3 entries for 4"):
        transmit(np.ones(8), ChannelProfile(model="awgn", snr_db=0), np.random.default_rng(0), block_power=np.ones(3), power_block_length=2)
    bad = tmp_path / "bad.toml"
    bad.write_text("[profiles.x\nmodel = 'awgn'")
    with pytest.raises(ChannelConfigError, match="bad.toml"):
        load_profiles(bad)
    bad.write_text("[profiles.x]\nmodel = 'awgn'\nsnr_db = 3\ncoherence = 5\n")
    with pytest.raises(ChannelConfigError, match="unknown keys"):
        load_profiles(bad)
    bad.write_text("[profiles.x]\nmodel = 'awgn'\nsnr_db = 3\n[links.default]\nuplink = 'nope'\n")
    with pytest.raises(ChannelConfigError, match="unknown profile 'nope'"):
        load_profiles(bad)


def test_profiles_file(tmp_path: Path) -> None:
    f = tmp_path / "p.toml"
    f.write_text(
        "[profiles.city]\nmodel = 'rayleigh'\nsnr_db = 5\ncoherence_symbols = 64\ncsi_error = 0.1\n"
        "[links.default]\nuplink = 'awgn-30'\ndownlink = 'city'\n"
    )
    book = load_profiles(f)
    assert book.get("city") == ChannelProfile("city", "rayleigh", 5.0, 64, 0.0, 0.1)
    assert book.links["default"] == {"uplink": "awgn-30", "downlink": "city"}
    assert "ideal" in book.profiles  # built-ins stay


def test_models_are_a_registry_with_properties() -> None:
    from dataclasses import dataclass
    from typing import ClassVar

    from shared.channel.models import AWGN, MODELS, register

    assert list(MODELS)[:4] == ["ideal", "awgn", "rayleigh", "rician"]
    assert {n for n, m in MODELS.items() if m.fading} >= {"rayleigh", "rician"}
    assert not MODELS["awgn"].fading and MODELS["awgn"].noisy and not MODELS["ideal"].noisy
    rayleigh = ChannelProfile(model="rayleigh", snr_db=10.0, coherence_symbols=16)
    assert rayleigh.fading and rayleigh.block_length == 16 and isinstance(rayleigh.model_object(), Rayleigh)
    assert ChannelProfile(model="awgn", snr_db=10.0, coherence_symbols=16).block_length == 0
    assert ChannelProfile(model="rician", snr_db=0.0, k_factor=3.0).model_object() == Rician(3.0)

    @register("test-deep-fade")
    @dataclass(frozen=True)
    class DeepFade(AWGN):  # every block faded to 1/10: a new model is one class, found by name
        fading: ClassVar[bool] = True

        def generate(self, n_blocks: int, rng: np.random.Generator) -> np.ndarray:
            return np.full(n_blocks, 0.1)

    try:
        out = transmit(np.ones(64), ChannelProfile(model="test-deep-fade", snr_db=30.0, coherence_symbols=16),
                       np.random.default_rng(0))
        assert out.blocks == 4 and out.effective_snr_db == pytest.approx(10.0)
    finally:
        del MODELS["test-deep-fade"]
    with pytest.raises(ChannelConfigError, match="test-deep-fade"):
        ChannelProfile(model="test-deep-fade", snr_db=30.0)
