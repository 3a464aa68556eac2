"""The commands that need no model never import torch: a running ``meg-channel serve`` that forwarded a
tensor-carrying RPC through its channel walker, and ``meg-ue overhead --geometry sd-v1-5``.

Each runs the real entry point (``main`` of the console script) in a fresh interpreter and reports
``"torch" in sys.modules`` from inside it: the proxy after start-up and a forwarded ``Probe`` over a fading,
noisy link (the path that reads the air tensors); ``overhead`` at exit, after printing its table.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.procs import running, script

_PROXY = r'''
import os, signal, sys, threading
port, es = int(sys.argv[1]), sys.argv[2]

def probe():
    import grpc
    import numpy as np
    from shared.wire import air
    from shared.pb import edge_pb2, edge_pb2_grpc
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            grpc.channel_ready_future(ch).result(timeout=60)
            seed = air.to_air("seed", np.ones(4096, np.float32))
            reply = edge_pb2_grpc.EdgeServiceStub(ch).Probe(edge_pb2.ProbeRequest(tensors=[seed]), timeout=60)
            noisy = air.air_array(reply.tensors[0])
        print(f"FORWARDED {noisy.size} changed={bool((noisy != 1).any())}", flush=True)
        print(f"TORCH_AFTER_CALL {'torch' in sys.modules}", flush=True)
    finally:
        os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=probe, daemon=True).start()
from channel_emulator.cli import main
print(f"TORCH_AT_START {'torch' in sys.modules}", flush=True)
sys.exit(main(["serve", "--listen", f"127.0.0.1:{port}", "--upstream", es, "--snr-db", "5",
               "--channel-model", "rayleigh", "--coherence", "64", "--grace-s", "1"]))
'''

_OVERHEAD = r'''
import atexit, sys
atexit.register(lambda: print(f"TORCH_AT_EXIT {'torch' in sys.modules}", flush=True))
from ue_client.cli import main
sys.exit(main(["overhead", "--geometry", "sd-v1-5"]))
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_running_channel_proxy_never_imports_torch(random_model_dir: Path) -> None:
    es_argv = [script("meg-edge"), "serve", "--listen", "127.0.0.1:0", "--model", str(random_model_dir)]
    with running(es_argv, "meg.v1.EdgeService") as (_, es_port):
        out = subprocess.run([sys.executable, "-c", _PROXY, str(_free_port()), f"127.0.0.1:{es_port}"],
                             capture_output=True, text=True, timeout=120, check=False)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log
    assert "TORCH_AT_START False" in log, log
    assert "FORWARDED 4096 changed=True" in log, log  # the walker really put the tensor through the channel
    assert "TORCH_AFTER_CALL False" in log, log


def test_overhead_never_imports_torch() -> None:
    out = subprocess.run([sys.executable, "-c", _OVERHEAD], capture_output=True, text=True, timeout=120, check=False)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log
    assert "CIAG" in out.stdout and "TORCH_AT_EXIT" in out.stdout, log
    assert "TORCH_AT_EXIT False" in out.stdout, log
    assert "diffusers" not in log


def test_meg_ue_help_runs() -> None:
    out = subprocess.run([script("meg-ue"), "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0 and "``" not in out.stdout, out.stdout + out.stderr
