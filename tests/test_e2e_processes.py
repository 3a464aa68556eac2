"""The three real processes on loopback: meg-edge, meg-channel in front of it, meg-ue through it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import grpc
import pytest
from PIL import Image

from shared.pb import channel_pb2, channel_pb2_grpc
from tests.support.procs import running, script

pytestmark = pytest.mark.slow  # real processes / a model end to end (conftest: 600 s per test)


def test_ciag_generation_through_three_processes(random_model_dir: Path, tmp_path: Path) -> None:
    model = str(random_model_dir)
    edge = [script("meg-edge"), "serve", "--listen", "127.0.0.1:0", "--model", model, "--device", "cpu"]
    with running(edge, "meg.v1.EdgeService") as (_, es_port):
        proxy = [script("meg-channel"), "serve", "--listen", "127.0.0.1:0", "--upstream", f"127.0.0.1:{es_port}",
                 "--uplink-snr-db", "25", "--downlink-snr-db", "20"]
        with running(proxy, "meg.v1.ChannelControl") as (_, ch_port):
            out = tmp_path / "img.png"
            ue = subprocess.run(
                [script("meg-ue"), "generate", "a small red circle above a blue square", "--protocol", "CIAG",
                 "--via", f"127.0.0.1:{ch_port}", "--model", model, "--out", str(out), "--seed", "3",
                 "--steps", "3", "--ue-id", "phone1", "--json"],
                capture_output=True, text=True, timeout=180, check=False,
            )
            assert ue.returncode == 0, ue.stderr
            report = json.loads(ue.stdout.strip().splitlines()[-1])
            with grpc.insecure_channel(f"127.0.0.1:{ch_port}") as ch:
                stats = channel_pb2_grpc.ChannelControlStub(ch).GetStats(channel_pb2.GetStatsRequest(), timeout=5)

    assert report["protocol"] == "CIAG" and report["out"] == str(out) and report["seconds"] > 0
    img = Image.open(out)
    assert img.size == (32, 32) and img.mode == "RGB"
    up, down = report["uplink"], report["downlink"]
    # CIAG txt2img, identity codec: the task seed is the prompt embedding [1, 8, 32], the seed the latent [1, 4, 4, 4]
    assert up["symbols"] == 8 * 32 and up["payload_bytes"] == 4 * 8 * 32 and up["text_bytes"] == 0
    assert down["symbols"] == 4 * 4 * 4 and down["payload_bytes"] == 4 * 64
    assert up["snr_db"] == 25 and down["snr_db"] == 20 and up["channel"] == "awgn"
    # the proxy's own counters agree with the UE's report
    entries = {(e.link, e.direction): e for e in stats.entries}
    assert set(entries) == {("phone1->es0", "uplink"), ("phone1->es0", "downlink")}
    s_up, s_down = entries["phone1->es0", "uplink"], entries["phone1->es0", "downlink"]
    assert s_up.payload_bytes == up["payload_bytes"] and s_up.symbols == up["symbols"]
    assert s_down.payload_bytes == down["payload_bytes"] and s_down.symbols == down["symbols"]
    assert s_up.transmissions == 1 and s_down.transmissions == 1
    assert s_up.mean_snr_db == pytest.approx(25) and s_down.mean_snr_db == pytest.approx(20)


def test_cli_errors_are_one_clear_line(random_model_dir: Path, tmp_path: Path) -> None:
    unreachable = subprocess.run(
        [script("meg-ue"), "generate", "a red circle", "--via", "127.0.0.1:1", "--model", str(random_model_dir),
         "--out", str(tmp_path / "x.png")],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert unreachable.returncode != 0
    assert "cannot reach the edge server at 127.0.0.1:1" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr
    empty = subprocess.run([script("meg-ue"), "generate", "  ", "--via", "127.0.0.1:1"], capture_output=True, text=True, timeout=60, check=False)
    assert empty.returncode != 0 and "prompt is empty" in empty.stderr and "Traceback" not in empty.stderr
    proxy = subprocess.run([script("meg-channel"), "show", "--via", "127.0.0.1:1"], capture_output=True, text=True, timeout=60, check=False)
    assert proxy.returncode != 0 and "cannot reach the channel proxy" in proxy.stderr and "Traceback" not in proxy.stderr
