"""The PPO power controller (paper 2, §IV, Alg. 3): observation, action → power rule, and the live policy.

One seed of ``n`` real symbols goes over ``T = ceil(n / L)`` fading blocks of ``L`` symbols. At block ``t``
the agent sees only what a causal transmitter knows (:func:`observation`):

====  ====================================================================================================
 0    ``h_t`` (CSI amplitude of the current block, clipped to ``[0, 4]``)
 1    ``ln h_t`` (clipped to ``[-6, 2]``)
 2    the block's signal energy relative to the blocks sent so far: ``mean(x_t²) / mean(x_0..t²)``
      (clipped to ``[0, 8]``; causal in ``x`` too)
 3    energy left before this block as a fraction of the episode's energy ``budget · n``
 4    fair share: energy left / (``budget`` × symbols left including this block) (clipped to ``[0, 16]``)
 5    ``t / T``
 6    ``1`` on the last block, else ``0``
 7    effective SNR of the budget, ``(snr_db + 10 log10 budget) / 10`` (clipped to ``[-5, 5]``)
====  ====================================================================================================

The action ``a_t ∈ [0, 1]`` becomes a power by one of two rules (:func:`action_to_power`; a policy file says which
in its ``meg_power["action_rule"]``):

- ``"share"`` (what ``meg-lab train-power`` trains): ``a = 1/2`` is the fair share ``s_t`` (the energy left spread
  evenly over the symbols left: uniform power when every block takes it, at every budget); ``a ∈ [0, 1/2]``
  scales it down to 0, ``a ∈ [1/2, 1]`` up to the cap ``p_cap = min(P_MAX_FACTOR · budget, P_MAX)``
  (:func:`shared.channel.power.power_cap`: the channel clips a block above ``P_MAX``). The power is then clipped
  to ``[floor_t, min(p_cap, E_left / L_t)]`` with ``floor_t = (E_left − p_cap · (symbols left after t)) / L_t``:
  the energy the later blocks cannot take at the cap goes on this block, so the whole budget is radiated
  (up to ``P_MAX`` per block) and at ``budget >= P_MAX`` the rule is exactly uniform whatever the action.
- ``"pmax"`` (files without ``action_rule``: the first shipped policy): ``p_t = a_t · 4 · budget``, capped by the
  energy left (Alg. 3's "spend all remaining power"), blind to ``P_MAX``.

In both the last block ignores its action and takes what is left, up to the cap. The energy constraint
``Σ L_t p_t ≤ budget · n`` therefore always holds.

The same two functions are used by the training environment (``meg_lab.power_env``) and by
:func:`load_ppo_policy`, which turns a saved stable-baselines3 PPO file into a plain function with the
signature of :func:`shared.channel.power.uniform` for the daemon. The file is read without stable-baselines3
(:func:`read_policy_file`: the zip's JSON and the policy's ``state_dict``), so the daemon's
``--power-policy ppo`` needs only the base install; the network is copied into NumPy once, so a call costs
a few tens of microseconds per block and never touches torch's thread pool.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from shared.channel.power import P_MAX_FACTOR, block_sizes, power_cap

OBS_DIM = 8
OBS_LOW = np.array([0.0, -6.0, 0.0, 0.0, 0.0, 0.0, 0.0, -5.0], dtype=np.float32)
OBS_HIGH = np.array([4.0, 2.0, 8.0, 1.0, 16.0, 1.0, 1.0, 5.0], dtype=np.float32)

#: Defaults the shipped policy was trained with (the daemon must use the same block length).
DEFAULT_SNR_DB = 10.0
DEFAULT_COHERENCE = 16

#: How an action becomes a power (module docstring); ``"share"`` is what ``meg-lab train-power`` trains, a file
#: without ``meg_power["action_rule"]`` uses ``"pmax"``.
ACTION_RULES: tuple[str, ...] = ("share", "pmax")
DEFAULT_ACTION_RULE = "share"
#: The action that gives uniform power under each rule.
UNIFORM_ACTION: dict[str, float] = {"share": 0.5, "pmax": 1.0 / P_MAX_FACTOR}

#: The shipped policy: where ``meg-lab train-power`` writes by default and what ``--power-policy ppo`` loads.
DEFAULT_POLICY_PATH = Path(__file__).resolve().parents[1] / "weights" / "power" / "ppo_power.zip"


def observation(
    x: np.ndarray,
    h: np.ndarray,
    t: int,
    sizes: np.ndarray,
    energy_left: float,
    budget: float,
    snr_db: float,
) -> np.ndarray:
    """The agent's observation at block ``t`` (see the module docstring). Causal: reads only ``h[t]`` and
    blocks ``0..t`` of the flat symbols ``x``."""
    n_t = len(sizes)
    end = int(sizes[: t + 1].sum())
    start = end - int(sizes[t])
    seen = np.square(np.asarray(x[:end], dtype=np.float64))
    ms_seen = float(seen.mean()) if seen.size else 0.0
    block_ms = float(seen[start:].mean()) / ms_seen if ms_seen > 0 and end > start else 0.0
    h_t = float(h[t])
    total = budget * float(sizes.sum())
    symbols_left = float(sizes[t:].sum())
    frac_left = energy_left / total if total > 0 else 0.0
    share = energy_left / (budget * symbols_left) if budget > 0 and symbols_left > 0 else 0.0
    snr_eff = (snr_db + 10.0 * math.log10(budget)) / 10.0 if budget > 0 else -5.0
    obs = np.array(
        [h_t, math.log(max(h_t, 1e-6)), block_ms, frac_left, share, t / n_t, float(t == n_t - 1), snr_eff],
        dtype=np.float32,
    )
    return np.clip(obs, OBS_LOW, OBS_HIGH)


def action_to_power(
    action: float, t: int, sizes: np.ndarray, energy_left: float, budget: float, rule: str = DEFAULT_ACTION_RULE
) -> float:
    """Power of block ``t`` for action ``a`` under ``rule`` (module docstring): ``"share"``: ``a = 1/2`` is the fair
    share of what is left, 0 drops the block, 1 is the cap, within the floor that keeps the whole budget
    spendable; ``"pmax"``: ``a · 4 · budget`` capped by the energy left. The last block takes what is left (up to
    the cap) whatever the action."""
    last = t == len(sizes) - 1
    left = max(energy_left, 0.0)
    size = float(sizes[t])
    room = left / size
    a = 1.0 if last else float(np.clip(action, 0.0, 1.0))
    if rule == "pmax":
        return float(max(0.0, min(a * P_MAX_FACTOR * budget, room)))
    if rule != "share":
        raise ValueError(f"unknown action rule {rule!r}; known: {', '.join(ACTION_RULES)}")
    cap = power_cap(budget)
    if last:
        return float(min(room, cap))
    after = float(sizes[t + 1:].sum())
    share = left / (size + after)
    if a <= 0.5 or share <= 0:
        scale = 2.0 * a
    else:
        scale = 1.0 + (2.0 * a - 1.0) * max(cap / share - 1.0, 0.0)
    floor = max((left - cap * after) / size, 0.0)
    return float(min(max(scale * share, floor), cap, room))


#: ``policy_kwargs`` a policy file may carry: the MlpPolicy defaults otherwise (tanh, no SDE, no squashing).
_KNOWN_POLICY_KWARGS = frozenset({"net_arch", "log_std_init", "ortho_init"})


def read_policy_file(path: str | Path) -> tuple[list[tuple[np.ndarray, np.ndarray]], dict[str, float]]:
    """Read a stable-baselines3 ``PPO.save`` zip without stable-baselines3: the actor's layers and the
    ``meg_power`` training settings.

    The zip holds ``data`` (JSON: the algorithm's attributes, ``meg_power`` among them) and ``policy.pth``
    (the policy's ``state_dict``). The actor of an ``MlpPolicy`` is ``action_net(policy_net(obs))`` with
    ``policy_net`` = Linear, Tanh, Linear, Tanh, ... (``mlp_extractor.policy_net.{0,2,..}``). Returns the
    layers as ``(W [out, in], b [out])`` float64 pairs, tanh between them and none after the last, and the
    metadata. Raises ``ValueError`` for a file whose policy this reader cannot reproduce exactly (another
    policy class, a custom activation, gSDE).
    """
    import io
    import json
    import zipfile

    import torch

    try:
        with zipfile.ZipFile(path) as z:
            data = json.loads(z.read("data"))
            state = torch.load(io.BytesIO(z.read("policy.pth")), map_location="cpu", weights_only=True)
    except (OSError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not a stable-baselines3 PPO file: {exc}") from None
    kwargs = data.get("policy_kwargs", {})
    cls = data.get("policy_class", {})
    if (not isinstance(kwargs, dict) or ":serialized:" in kwargs or set(kwargs) - _KNOWN_POLICY_KWARGS
            or data.get("use_sde") or cls.get("__module__") != "stable_baselines3.common.policies"):
        raise ValueError(f"{path}: only a default MlpPolicy (tanh, no gSDE) can be loaded; policy_kwargs {kwargs!r}")
    prefix = "mlp_extractor.policy_net."
    hidden = sorted(int(k.split(".")[2]) for k in state if k.startswith(prefix) and k.endswith(".weight"))
    names = [f"mlp_extractor.policy_net.{i}" for i in hidden] + ["action_net"]
    layers = [(state[f"{n}.weight"].double().numpy(), state[f"{n}.bias"].double().numpy()) for n in names]
    for (w, _), (w_next, _) in itertools.pairwise(layers):
        if w.shape[0] != w_next.shape[1]:
            raise ValueError(f"{path}: policy layers do not chain ({w.shape} then {w_next.shape})")
    if layers[0][0].shape[1] != OBS_DIM or layers[-1][0].shape[0] != 1:
        raise ValueError(f"{path}: the policy maps {layers[0][0].shape[1]} -> {layers[-1][0].shape[0]}, "
                         f"not the observation ({OBS_DIM}) -> one action")
    meta = data.get("meg_power", {})
    return layers, dict(meta) if isinstance(meta, dict) else {}


class _NumpyActor:
    """The deterministic actor of an SB3 ``MlpPolicy``: ``tanh`` after every layer but the last, in NumPy."""

    def __init__(self, layers: list[tuple[np.ndarray, np.ndarray]]) -> None:
        self.layers = layers

    def __call__(self, obs: np.ndarray) -> float:
        v = obs.astype(np.float64)
        for i, (w, b) in enumerate(self.layers):
            v = w @ v + b
            if i < len(self.layers) - 1:
                v = np.tanh(v)
        return float(v[0])


def policy_metadata(path: str | Path) -> dict[str, float]:
    """The settings a saved policy was trained with (``snr_db``, ``coherence``, ``p_max_factor``, ...)."""
    return read_policy_file(path)[1]


def load_ppo_policy(
    path: str | Path = DEFAULT_POLICY_PATH, snr_db: float | None = None
) -> Callable[[np.ndarray, np.ndarray, int, float], np.ndarray]:
    """Load a PPO file saved by ``meg-lab train-power`` as a causal power policy.

    Returns ``policy(x, h, block_length, budget) -> p [T]`` (the signature of :func:`shared.channel.power.uniform`):
    ``x`` the seed's flat real symbols ``[n]``, ``h`` the CSI amplitudes ``[T]`` (``T = ceil(n / L)``),
    ``budget`` the average power per symbol. ``p_t`` depends only on ``h[:t+1]`` and the blocks of ``x`` up
    to ``t``; ``p >= 0``, ``p <= power_cap(budget)`` (``P_MAX_FACTOR · budget`` for a ``"pmax"`` file) and
    ``Σ L_t p_t <= budget · n`` (``=`` for a ``"share"`` file with ``budget <= P_MAX``). ``snr_db`` is the link SNR
    the observation reports (default: the SNR the policy was trained at).
    """
    layers, meta = read_policy_file(path)
    snr = float(meta.get("snr_db", DEFAULT_SNR_DB)) if snr_db is None else float(snr_db)
    rule = str(meta.get("action_rule", "pmax"))
    if rule not in ACTION_RULES:
        raise ValueError(f"{path}: unknown action_rule {rule!r} in meg_power; known: {', '.join(ACTION_RULES)}")
    actor = _NumpyActor(layers)

    def policy(x: np.ndarray, h: np.ndarray, block_length: int, budget: float) -> np.ndarray:
        flat = np.asarray(x, dtype=np.float64).reshape(-1)
        sizes = block_sizes(flat.size, block_length)
        hh = np.asarray(h, dtype=np.float64).reshape(-1)
        if hh.size < len(sizes):
            raise ValueError(f"{hh.size} CSI values for {len(sizes)} blocks of {block_length} symbols")
        p = np.zeros(len(sizes))
        if budget <= 0:
            return p
        left = budget * float(sizes.sum())
        for t in range(len(sizes)):
            obs = observation(flat, hh, t, sizes, left, budget, snr)
            p[t] = action_to_power(actor(obs), t, sizes, left, budget, rule)
            left -= p[t] * sizes[t]
        return p

    policy.metadata = meta  # type: ignore[attr-defined]
    return policy
