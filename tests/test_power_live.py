"""Live power control: the ES asks the proxy for CSI, allocates power per block, the proxy applies it."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest

from shared.pb import channel_pb2, channel_pb2_grpc
from shared.protocol.params import Params
from tests.conftest import running_stack
from ue_client.session import EdgeClient, generate

pytestmark = pytest.mark.slow  # real processes / a model end to end (conftest: 600 s per test)


@pytest.mark.parametrize("policy, budget", [("uniform", 0.5), ("oracle", 0.5), ("ppo", 0.5), ("none", 1.0)])
def test_server_allocation_shows_in_proxy_stats(random_model_dir: Path, policy: str, budget: float) -> None:
    from edge_server.settings import EdgeSettings
    from shared.channel.profiles import ChannelProfile
    from shared.model.ops import ModelParts

    parts = ModelParts.load(str(random_model_dir), "cpu")
    # plaintext loopback: the operator lets the ES trust the proxy's advertised control address
    settings = EdgeSettings(listen="127.0.0.1:0", power_policy=policy, power_budget=budget, csi_via="advertised")
    fading = ChannelProfile(model="rayleigh", snr_db=10.0, coherence_symbols=16)
    with running_stack(parts, settings, downlink=fading, seed=3) as stack:
        with EdgeClient(stack.proxy_addr, timeout_s=60, ue_id="phone") as client:
            r = generate(parts, client, "a red circle", "CIAG", params=Params(seed=1, steps=2))
        with grpc.insecure_channel(stack.proxy_addr) as ch:
            stats = channel_pb2_grpc.ChannelControlStub(ch).GetStats(channel_pb2.GetStatsRequest(), timeout=5)
        table = stack.link
    down = next(e for e in stats.entries if e.link == "phone->es0" and e.direction == "downlink")
    n = r.downlink.symbols
    assert down.transmissions == 1 and down.symbols == n
    if policy == "none":
        assert down.allocated == 0 and down.energy == pytest.approx(n)  # unit power, no CSI asked
    elif policy == "ppo":  # the shipped policy: within the budget (its last block takes what is left, capped)
        assert down.allocated == 1 and 0 < down.energy <= budget * n * (1 + 1e-5)
        assert r.downlink.energy == pytest.approx(down.energy, rel=1e-5)
    else:
        assert down.allocated == 1
        assert down.energy == pytest.approx(budget * n, rel=1e-5)  # the ES spent exactly its budget
        assert r.downlink.energy == pytest.approx(down.energy, rel=1e-5)
    # the proxy drew the fading for exactly the blocks the allocation covers (CSI consumed, none left over)
    assert len(table.links["phone->es0"]["downlink"].pending) == 0


def test_oracle_allocation_inverts_fading() -> None:
    from shared.channel.power import oracle, uniform

    h = np.array([0.25, 0.5, 1.0, 2.0])
    x = np.ones(64)
    p = oracle(x, h, 16, 1.0)
    assert (p * 16).sum() == pytest.approx(64.0) and np.all(np.diff(p) < 0)
    assert np.all(uniform(x, h, 16, 0.5) == 0.5)
    # with a cap, the excess is spread over the others
    p_cap = oracle(np.ones(128), np.array([0.01] + [1.0] * 7), 16, 1.0)
    assert p_cap[0] == pytest.approx(4.0) and (p_cap * 16).sum() == pytest.approx(128.0)
    assert np.allclose(p_cap[1:], (128 - 64) / (16 * 7))
