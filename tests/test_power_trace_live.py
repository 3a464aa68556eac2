"""Power control on a moving channel, live: the ES asks the proxy for the CSI of a trace link (the gains of the
resource elements its next transmission will use), allocates power per element group with uniform, oracle or
the shipped PPO policy, and the proxy replays the trace on exactly those elements (issue 20)."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest

from shared.channel.trace import TraceMeta, normalise, save_trace
from shared.pb import channel_pb2, channel_pb2_grpc
from shared.protocol.params import Params
from tests.conftest import running_stack
from ue_client.session import EdgeClient, generate

pytestmark = pytest.mark.slow  # real servers and a model end to end


def _trace(path: Path, slots: int = 200, prbs: int = 25) -> Path:
    """A per-PRB trace of a 5 MHz carrier at 15 kHz whose PRBs differ by up to 30 dB (so an allocation that
    reads the CSI cannot be flat)."""
    rng = np.random.default_rng(7)
    h = (rng.normal(size=(slots, prbs)) + 1j * rng.normal(size=(slots, prbs))) / np.sqrt(2)
    h *= 10 ** (rng.uniform(-15, 15, size=(1, prbs)) / 20)
    save_trace(path, normalise(h), TraceMeta(model="TDL-A", per="prb", numerology=0, bandwidth_mhz=5.0, prbs=prbs,
                                             generator="test"))
    return path


@pytest.fixture(scope="module")
def bigger_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random pipeline with 192² images: its EIUG seed (4×24×24 values) spans several PRBs of a slot."""
    from shared.model.random_pipeline import save_random_pipeline

    return save_random_pipeline(tmp_path_factory.mktemp("random-192") / "pipe", seed=0, image_size=192)


@pytest.mark.parametrize("policy", ["uniform", "oracle", "ppo"])
def test_power_policies_run_on_a_trace_links_csi(bigger_model_dir: Path, tmp_path: Path, policy: str) -> None:
    from channel_emulator.replay import REPLAY
    from edge_server.settings import EdgeSettings
    from shared.channel.power import P_MAX
    from shared.channel.profiles import profile_from_mapping
    from shared.model.ops import ModelParts

    parts = ModelParts.load(str(bigger_model_dir), "cpu")
    budget = 1.0
    settings = EdgeSettings(listen="127.0.0.1:0", power_policy=policy, power_budget=budget, csi_via="advertised")
    moving = profile_from_mapping("moving", {"trace": str(_trace(tmp_path / "t.npz")), "snr_db": 10.0})
    with running_stack(parts, settings, downlink=moving, seed=3) as stack:
        with EdgeClient(stack.proxy_addr, timeout_s=60, ue_id="phone") as client:
            r = generate(parts, client, "a red circle", "EIUG", params=Params(seed=1, steps=2))
        assert ("phone->es0", "downlink") not in REPLAY.pins  # the ES's CSI pinned the transmission, which used it
        with grpc.insecure_channel(stack.proxy_addr) as ch:
            control = channel_pb2_grpc.ChannelControlStub(ch)
            stats = control.GetStats(channel_pb2.GetStatsRequest(), timeout=5)
            csi = control.GetCSI(channel_pb2.CSIRequest(link="phone->es0", direction="downlink",
                                                        symbols=r.downlink.symbols), timeout=5)
    down = next(e for e in stats.entries if e.link == "phone->es0" and e.direction == "downlink")
    n = r.downlink.symbols
    assert down.transmissions == 1 and down.symbols == n and down.allocated == 1
    # the allocation covers the trace's element groups the CSI named: one power per group of coherence symbols
    groups = -(-n // int(csi.coherence_symbols))
    assert len(csi.gains) == groups and np.ptp(np.asarray(csi.gains)) > 0.5  # the CSI varies across elements
    if policy == "ppo":  # within the budget, each group at most P_MAX
        assert 0 < down.energy <= budget * n * (1 + 1e-5)
    else:
        assert down.energy == pytest.approx(budget * n, rel=1e-5)
    assert r.downlink.energy == pytest.approx(down.energy, rel=1e-5)
    assert down.energy <= P_MAX * n * (1 + 1e-6)
