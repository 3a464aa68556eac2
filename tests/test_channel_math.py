"""Statistical checks of the channel functions in shared/channel.py."""

import math

import numpy as np
import pytest

from shared.channel import AWGN, ChannelConfigError, block_layout, make_model, transmit


def test_ideal_link_is_exact() -> None:
    x = np.random.default_rng(0).normal(size=(1, 4, 8, 8)).astype(np.float32)
    out = transmit(x, make_model("ideal", math.inf), np.random.default_rng(1))
    assert np.array_equal(out.received, x) and out.symbols == 256 and out.energy == 256


@pytest.mark.parametrize("snr_db", [-10.0, 0.0, 10.0, 30.0])
def test_awgn_noise_power_matches_snr(snr_db: float) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=200_000) * 3.0 + 1.0  # arbitrary power: the transmitter normalises it
    out = transmit(x, AWGN(snr_db=snr_db), np.random.default_rng(1))
    power = np.mean(x**2)
    noise = (out.received - x) / math.sqrt(power)  # back in normalised units
    n0 = 10 ** (-snr_db / 10)
    # the sample variance of 200k Gaussian draws is within ±2 % of N0 with overwhelming probability
    assert np.var(noise) == pytest.approx(n0, rel=0.02)
    assert abs(np.mean(noise)) < 5 * math.sqrt(n0 / x.size)


def test_block_power_is_applied_and_accounted() -> None:
    x = np.random.default_rng(0).normal(size=1000)
    p = np.array([4.0, 1.0, 0.25, 0.0])  # 4 blocks of 250 symbols
    out = transmit(x, AWGN(snr_db=10.0), np.random.default_rng(1), block_power=p, block_length=250)
    assert out.blocks == 4 and out.energy == pytest.approx(250 * p.sum())
    err = (out.received - x).reshape(4, 250)
    # zero-forcing: noise variance in block t scales as 1 / p_t
    v = err[:3].var(axis=1) / np.mean(x**2)
    assert v[0] < v[1] < v[2]
    assert np.all(out.received.reshape(4, 250)[3] == 0)  # no power, nothing received


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ChannelConfigError, match="unknown channel model"):
        make_model("rayleigh-typo", 10)
    with pytest.raises(ChannelConfigError, match="SNR must be a number"):
        make_model("awgn", float("nan"))
    with pytest.raises(ChannelConfigError, match=">= 0"):
        block_layout(10, -1)
    with pytest.raises(ChannelConfigError, match="3 entries for 4"):
        transmit(np.ones(8), AWGN(snr_db=0), np.random.default_rng(0), block_power=np.ones(3), block_length=2)
