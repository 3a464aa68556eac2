"""Live power control of the ES's seed downlinks: CSI from the proxy, a policy, the allocation in the tensor.

For every seed the ES sends, it asks the channel proxy (``GetCSI``, a control RPC — never shared memory)
for the fading of the blocks that transmission will use, runs the policy of :mod:`shared.channel.power` (or the
trained PPO policy), and writes ``block_power`` / ``block_length`` into the over-the-air tensor; the proxy
applies exactly that allocation to exactly that fading and accounts the energy.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np

from shared.channel.power import POLICIES
from shared.channel.power_ppo import DEFAULT_POLICY_PATH
from shared.pb import air_pb2
from shared.rpc.control import AsyncControlClient
from shared.rpc.security import TlsFiles
from shared.wire import air

log = logging.getLogger("meg.edge.power")
POLICY_NAMES = ("none", "uniform", "oracle", "ppo")
CSI_DEADLINE_S = 5.0
#: Control channels kept open at once (one per proxy address the operator lets the ES reach).
MAX_CONTROL_CHANNELS = 4


def load_policy(name: str, ppo_path: str | None = None) -> Callable[..., np.ndarray] | None:
    """The allocation function for a policy name (``none`` -> None: unit power, no CSI asked)."""
    if name not in POLICY_NAMES:
        raise ValueError(f"unknown power policy {name!r}; known: {', '.join(POLICY_NAMES)}")
    if name == "none":
        return None
    if name == "ppo":
        from shared.channel.power_ppo import load_ppo_policy

        path = Path(ppo_path) if ppo_path else DEFAULT_POLICY_PATH
        if not path.exists():
            raise FileNotFoundError(f"no PPO power policy at {path}; train one with `meg-lab train-power`")
        return load_ppo_policy(str(path))
    return POLICIES[name]


class PowerControl:
    """Allocates power for seed downlinks of one ES named ``es_name``.

    CSI comes from the channel proxy's control service: at ``csi_via`` if given, else at the address the
    servicer lets the request name (the proxy's ``meg-channel-control`` header, only where the operator trusts
    it: :meth:`edge_server.servicer.EdgeServicer.caller`).
    """

    def __init__(self, policy_name: str, csi_via: str | None = None, es_name: str = "es0", budget: float = 1.0,
                 ppo_path: str | None = None, tls: TlsFiles | None = None, token: str | None = None) -> None:
        """``tls``: this ES's certificate (as a client), key and CA for a proxy that speaks mTLS; ``token``: the
        proxy's admin token (its control service answers CSI only to it)."""
        self.policy_name = policy_name
        self.policy = load_policy(policy_name, ppo_path)
        if not (budget > 0 and np.isfinite(budget)):
            raise ValueError(f"the power budget must be a positive number, got {budget}")
        self.es_name = es_name
        self.budget = float(budget)
        self.csi_via = csi_via
        self.tls = tls
        self._token = token
        self._controls: dict[str, AsyncControlClient] = {}

    def _control(self, address: str) -> AsyncControlClient:
        """A client per address, at most :data:`MAX_CONTROL_CHANNELS` (the oldest is closed for a new one)."""
        if address not in self._controls:
            if len(self._controls) >= MAX_CONTROL_CHANNELS:
                oldest = self._controls.pop(next(iter(self._controls)))
                asyncio.get_running_loop().create_task(oldest.close())
            self._controls[address] = AsyncControlClient(address, self.tls, self._token, timeout_s=CSI_DEADLINE_S)
        return self._controls[address]

    async def allocate(self, tensor: air_pb2.AirTensor, ue_id: str, advertised: str | None = None) -> None:
        """Ask the proxy for the CSI of ``tensor``'s downlink and write the policy's allocation into it.

        Without a proxy to ask (a direct connection) the tensor goes at unit power, as without a policy.
        """
        address = self.csi_via or advertised
        if self.policy is None or not address:
            return
        x = air.air_array(tensor).reshape(-1)
        try:
            csi = await self._control(address).csi(f"{ue_id}->{self.es_name}", "downlink", symbols=x.size)
        except grpc.aio.AioRpcError as exc:
            log.warning("no CSI from %s (%s: %s); sending %s at unit power", address, exc.code().name, exc.details(), tensor.name)
            return
        p = np.asarray(self.policy(x, np.asarray(csi.gains), int(csi.coherence_symbols), self.budget), dtype=np.float64)
        tensor.block_power[:] = p.astype(np.float32).tolist()
        tensor.block_length = int(csi.coherence_symbols)

    async def close(self) -> None:
        for control in self._controls.values():
            await control.close()
