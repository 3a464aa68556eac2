"""PPO power control (paper 2, §IV): env, training smoke test, the live policy's contract, baselines, eval CLI."""

from __future__ import annotations

import csv
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from shared.channel.power import P_MAX, P_MAX_FACTOR, block_sizes, oracle, power_cap, uniform

COHERENCE = 8  # the random model's latents are 4x4x4 = 64 symbols -> T = 8 blocks


@pytest.fixture(scope="module")
def latent_set(random_model_dir: Path):
    from meg_lab.power_env import make_latent_set
    from shared.model.loader import load_pipeline

    torch.set_num_threads(1)
    pipe, _ = load_pipeline(random_model_dir)
    return make_latent_set(pipe, 16, stream="train")


@pytest.fixture(scope="module")
def trained_policy(random_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from meg_lab.train_power import main

    out = tmp_path_factory.mktemp("ppo") / "ppo.zip"
    rc = main(["--model", str(random_model_dir), "--out", str(out), "--timesteps", "512", "--coherence",
               str(COHERENCE), "--latents", "16", "--seed", "3", "--threads", "1"])
    assert rc == 0 and out.exists()
    return out


def test_check_env_passes(latent_set) -> None:
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    from meg_lab.power_env import PowerEnv

    env = PowerEnv(latent_set, coherence=COHERENCE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_env(env, skip_render_check=True)
        sb3_check_env(env, warn=False)
    assert env.T == 8 and env.n == 64


@pytest.mark.parametrize("rule", ["share", "pmax"])
def test_episode_respects_budget_and_last_block_takes_the_rest(latent_set, rule: str) -> None:
    from meg_lab.power_env import PowerEnv

    env = PowerEnv(latent_set, coherence=COHERENCE, budgets=[0.5], action_rule=rule)
    env.reset(seed=1)
    rng = np.random.default_rng(0)
    for _ in range(5):
        env.reset()
        done, steps = False, 0
        while not done:
            _, reward, done, _, info = env.step(rng.uniform(0, 0.3, size=1).astype(np.float32))
            steps += 1
        p = info["p"]
        assert steps == env.T and (p >= 0).all() and (p <= P_MAX_FACTOR * 0.5 + 1e-12).all()
        energy = float((p * env.sizes).sum())
        assert energy <= 0.5 * env.n * (1 + 1e-9)
        if rule == "share":  # the floor keeps the budget spendable: it is all radiated
            assert energy == pytest.approx(0.5 * env.n)
        elif p[:-1] @ env.sizes[:-1] <= 0.5 * env.n - P_MAX_FACTOR * 0.5 * env.sizes[-1]:
            assert p[-1] == pytest.approx(P_MAX_FACTOR * 0.5)  # capped at p_max
        else:
            assert energy == pytest.approx(0.5 * env.n)  # the last block spent what was left
        assert np.isfinite(reward) and info["psnr"] > 0


def test_share_rule_includes_uniform_and_never_wastes_energy() -> None:
    """The trained rule: action 1/2 is uniform power at every budget; any actions spend exactly the budget within
    the cap min(4 · budget, P_MAX); at budget >= P_MAX the only allocation left is uniform (at most P_MAX)."""
    from shared.channel.power_ppo import UNIFORM_ACTION, action_to_power

    rng = np.random.default_rng(4)
    for n, length in ((256, 16), (60, 8), (16384, 16)):
        sizes = block_sizes(n, length)
        for budget in (0.1, 0.25, 1.0, 2.0, 3.0, 4.0, 8.0):
            for actions in (np.full(len(sizes), UNIFORM_ACTION["share"]), rng.uniform(0, 1, len(sizes)),
                            rng.choice([0.0, 1.0], len(sizes))):
                left, p = budget * n, np.zeros(len(sizes))
                for t in range(len(sizes)):
                    p[t] = action_to_power(float(actions[t]), t, sizes, left, budget, "share")
                    left -= p[t] * sizes[t]
                assert (p >= 0).all() and (p <= power_cap(budget) * (1 + 1e-12)).all()
                assert float(p @ sizes) / n == pytest.approx(min(budget, P_MAX), rel=1e-9)
                if actions[0] == UNIFORM_ACTION["share"] and (actions == actions[0]).all() or budget >= P_MAX:
                    np.testing.assert_allclose(p, min(budget, P_MAX), rtol=1e-9)
    with pytest.raises(ValueError, match="action rule"):
        action_to_power(0.5, 0, block_sizes(64, 8), 64.0, 1.0, "nope")


def test_oracle_is_capped_at_p_max() -> None:
    """The oracle plans no block above P_MAX (the channel would clip it): at budget P_MAX it is uniform."""
    rng = np.random.default_rng(2)
    x = np.ones(256)
    for budget in (0.5, 2.0, 4.0):
        h = rng.rayleigh(np.sqrt(0.5), size=16)
        p = oracle(x, h, 16, budget)
        assert (p <= power_cap(budget) + 1e-12).all() and float(p.sum() * 16) == pytest.approx(budget * 256)
    np.testing.assert_allclose(oracle(x, rng.rayleigh(np.sqrt(0.5), size=16), 16, P_MAX), P_MAX)


def test_env_fading_kinds(latent_set) -> None:
    """``flat``: one gain for every block of the seed (a seed in one PRB of a TDL trace); ``block``: one per block;
    ``mix``: both."""
    from meg_lab.power_env import PowerEnv

    kinds = {}
    for fading in ("flat", "block", "mix"):
        env = PowerEnv(latent_set, coherence=COHERENCE, fading=fading)
        env.reset(seed=5)
        kinds[fading] = [bool(np.all(env.h == env.h[0])) for _ in range(40) if env.reset() is not None]
    assert all(kinds["flat"]) and not any(kinds["block"]) and 5 < sum(kinds["mix"]) < 35
    with pytest.raises(ValueError, match="fading"):
        PowerEnv(latent_set, coherence=COHERENCE, fading="rician")


def test_oracle_beats_uniform_in_env(latent_set) -> None:
    from meg_lab.power_env import PowerEnv

    env = PowerEnv(latent_set, snr_db=10.0, coherence=COHERENCE, budgets=[0.5])
    env.reset(seed=123)
    mse_u, mse_o = [], []
    for _ in range(60):
        env.reset()
        u, o = env.score_allocations([uniform(env.x, env.h, COHERENCE, 0.5), oracle(env.x, env.h, COHERENCE, 0.5)])
        mse_u.append(u)
        mse_o.append(o)
    # the random model's decoder saturates, so the gap is small but systematic
    assert np.mean(mse_o) < 0.97 * np.mean(mse_u)
    assert np.mean(np.array(mse_o) < np.array(mse_u)) > 0.6


def test_trained_policy_contract(trained_policy: Path) -> None:
    from shared.channel.power_ppo import load_ppo_policy

    policy = load_ppo_policy(trained_policy)
    assert policy.metadata["coherence"] == COHERENCE and policy.metadata["snr_db"] == 10.0
    assert policy.metadata["action_rule"] == "share" and policy.metadata["fading"] == "mix"
    rng = np.random.default_rng(7)
    for n, budget in ((64, 0.25), (64, 1.0), (256, 2.0), (60, 0.5)):
        x = rng.normal(size=n).astype(np.float32)
        sizes = block_sizes(n, COHERENCE)
        h = rng.rayleigh(np.sqrt(0.5), size=len(sizes))
        p = policy(x, h, COHERENCE, budget)
        assert p.shape == (len(sizes),)
        assert (p >= 0).all() and (p <= power_cap(budget) + 1e-12).all()
        assert float(p @ sizes) == pytest.approx(budget * n)  # the share rule radiates the whole budget
        for t in range(len(sizes) - 1):  # causal: the future CSI and the future symbols change nothing up to t
            h2, x2 = h.copy(), x.copy()
            h2[t + 1:] = rng.rayleigh(np.sqrt(0.5), size=len(sizes) - t - 1)
            x2[int(sizes[: t + 1].sum()):] *= 3.0
            np.testing.assert_array_equal(policy(x2, h2, COHERENCE, budget)[: t + 1], p[: t + 1])
    assert (policy(x, h, COHERENCE, 0.0) == 0).all()


def test_policy_file_is_read_without_sb3_and_acts_as_sb3_does(trained_policy: Path) -> None:
    """The daemon reads the zip itself (base install, no stable-baselines3); its NumPy actor must give the
    action SB3's own deterministic policy gives, for the shipped file and a freshly trained one."""
    import json
    import subprocess
    import sys

    from stable_baselines3 import PPO

    from shared.channel.power_ppo import DEFAULT_POLICY_PATH, OBS_DIM, _NumpyActor, read_policy_file

    obs = np.random.default_rng(5).uniform(-1, 2, size=(64, OBS_DIM)).astype(np.float32)
    for path in (DEFAULT_POLICY_PATH, trained_policy):
        layers, meta = read_policy_file(path)
        model = PPO.load(str(path), device="cpu")
        assert meta == model.meg_power
        with torch.no_grad():
            expected = model.policy.get_distribution(torch.from_numpy(obs)).distribution.mean[:, 0].numpy()
        actor = _NumpyActor(layers)
        np.testing.assert_allclose([actor(o) for o in obs], expected, atol=1e-5)
    # with stable-baselines3 and gymnasium made unimportable, the live policy still loads
    code = ("import sys; sys.modules['stable_baselines3'] = None; sys.modules['gymnasium'] = None\n"
            "from edge_server.power_control import load_policy\n"
            "import numpy as np; h = np.linspace(0.2, 2.0, 16)\n"
            "import json; print(json.dumps(load_policy('ppo')(np.ones(256), h, 16, 1.0).tolist()))")
    r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    from shared.channel.power_ppo import load_ppo_policy

    expected_p = load_ppo_policy(DEFAULT_POLICY_PATH)(np.ones(256), np.linspace(0.2, 2.0, 16), 16, 1.0)
    assert np.array_equal(np.array(json.loads(r.stdout)), expected_p) and expected_p.sum() > 0


def test_policy_is_fast_for_sixteen_blocks(trained_policy: Path) -> None:
    from shared.channel.power_ppo import load_ppo_policy

    policy = load_ppo_policy(trained_policy)
    x, h = np.random.default_rng(0).normal(size=256), np.ones(16)
    policy(x, h, 16, 1.0)
    t0 = time.perf_counter()
    for _ in range(20):
        policy(x, h, 16, 1.0)
    assert (time.perf_counter() - t0) / 20 < 0.02


def test_eval_quick_writes_csv_and_plot(random_model_dir: Path, trained_policy: Path, tmp_path: Path) -> None:
    from meg_lab.eval_power import COLUMNS, main

    out = tmp_path / "eval"
    rc = main(["--quick", "--model", str(random_model_dir), "--policy", str(trained_policy), "--out", str(out),
               "--coherence", str(COHERENCE), "--budgets", "0.25,1"])
    assert rc == 0
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == COLUMNS
    assert {(r["budget"], r["policy"]) for r in rows} == {(b, p) for b in ("0.25", "1.0") for p in ("uniform", "oracle", "ppo")}
    assert all(float(r["energy_ratio"]) <= 1 + 1e-9 for r in rows)
    assert (out / "power.png").stat().st_size > 0


def test_shipped_policy_gives_valid_allocations_on_trace_gains(tmp_path: Path) -> None:
    """The committed policy file, read by the NumPy inference the daemon uses, on the block gains a seed gets on a
    per-PRB trace (``shared.channel.trace.block_gains``, as ``meg-lab eval-power --trace``): every block within
    ``[0, P_MAX]``, the mean power exactly the budget, for meg-tiny's seed (one PRB) and one spanning many PRBs."""
    from shared.channel.cell import CellConfig
    from shared.channel.power_ppo import DEFAULT_POLICY_PATH, load_ppo_policy, read_policy_file
    from shared.channel.trace import Trace, TraceMeta, block_gains

    assert DEFAULT_POLICY_PATH.stat().st_size < 512 * 1024  # KBs, not MBs
    _, meta = read_policy_file(DEFAULT_POLICY_PATH)
    assert meta["action_rule"] == "share" and meta["p_max"] == P_MAX
    policy = load_ppo_policy(DEFAULT_POLICY_PATH)
    rng = np.random.default_rng(11)
    cell = CellConfig(bandwidth_mhz=5.0, numerology=0)
    h = (rng.normal(size=(50, cell.prbs)) + 1j * rng.normal(size=(50, cell.prbs))) / np.sqrt(2)
    trace = Trace(h.astype(np.complex64), TraceMeta(model="TDL-A", per="prb", numerology=0, bandwidth_mhz=5.0,
                                                    prbs=cell.prbs))
    length = int(meta["coherence"])
    for n in (256, 4096):
        sizes = block_sizes(n, length)
        for budget in (0.25, 0.5, 1.0, 2.0, 4.0):
            for _ in range(3):
                g = block_gains(trace, n, length, int(rng.integers(trace.slots)), cell.prbs, cell.re_per_prb)
                x = rng.normal(size=n).astype(np.float32)
                p = policy(x, g, length, budget)
                assert p.shape == (len(sizes),) and np.isfinite(p).all()
                assert (p >= 0).all() and (p <= P_MAX + 1e-9).all() and (p <= power_cap(budget) + 1e-9).all()
                assert float(p @ sizes) / n == pytest.approx(budget, rel=1e-9)
            if budget >= P_MAX:
                np.testing.assert_allclose(p, budget)  # nothing to gain: uniform
