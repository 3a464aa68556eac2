"""Paper 1 §III over real processes: two `meg-edge` daemons behind one `meg-channel`, every multi-ES protocol,
both tasks; the UE's per-link accounting must equal the proxy's per-link counters."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import torch
from PIL import Image

from shared.model.ops import ModelParts
from shared.pb import channel_pb2, channel_pb2_grpc
from shared.protocol.params import Params
from shared.protocol.registry import PROTOCOLS
from shared.protocol.tiles import DEFAULT_HEAD, default_halo
from tests.support.procs import running, script
from ue_client.session import MultiOptions, generate
from ue_client.transport import connect, discover

pytestmark = pytest.mark.slow  # real processes / a model end to end (conftest: 600 s per test)

MULTI = [name for name, spec in PROTOCOLS.items() if spec.multi_es]
PROMPT = "a small red circle above a blue square"


@dataclass
class TwoES:
    via: str
    model: str
    parts: ModelParts


@pytest.fixture(scope="module")
def two_es(random_model_dir: Path) -> Iterator[TwoES]:
    """es0 and es1 (real `meg-edge` processes) and a `dead` upstream nobody listens on, behind a real proxy."""
    model = str(random_model_dir)

    def edge(name: str) -> list[str]:
        return [script("meg-edge"), "serve", "--listen", "127.0.0.1:0", "--model", model, "--device", "cpu", "--name", name]

    with running(edge("es0"), "meg.v1.EdgeService") as (_, p0), running(edge("es1"), "meg.v1.EdgeService") as (_, p1):
        proxy = [script("meg-channel"), "serve", "--listen", "127.0.0.1:0", "--upstream", f"es0=127.0.0.1:{p0}",
                 "--upstream", f"es1=127.0.0.1:{p1}", "--upstream", "dead=127.0.0.1:1",
                 "--uplink-snr-db", "30", "--downlink-snr-db", "25"]
        with running(proxy, "meg.v1.ChannelControl") as (_, port):
            yield TwoES(f"127.0.0.1:{port}", model, ModelParts.load(model, "cpu"))


def _control(via: str) -> channel_pb2_grpc.ChannelControlStub:
    return channel_pb2_grpc.ChannelControlStub(grpc.insecure_channel(via))


def _per_link(via: str) -> dict[tuple[str, str], channel_pb2.DirectionStats]:
    stats = _control(via).GetStats(channel_pb2.GetStatsRequest(), timeout=10)
    return {(e.link, e.direction): e for e in stats.entries}


@pytest.mark.parametrize("task", ["txt2img", "img2img"])
def test_all_multi_es_protocols_through_two_real_edge_servers(two_es: TwoES, task: str) -> None:
    assert discover(two_es.via) == ["es0", "es1", "dead"]
    clients = connect(two_es.via, ["es0", "es1"], ue_id=f"phone-{task}")
    image_in = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)) if task == "img2img" else None
    ctl = _control(two_es.via)
    try:
        for name in MULTI:
            ctl.ResetChannel(channel_pb2.ResetChannelRequest(stats=True), timeout=10)
            r = generate(two_es.parts, None, PROMPT, name, task, Params(seed=5, steps=2), image_in, clients=clients,
                         options=MultiOptions(pick="best", sync=1))
            assert r.image.shape == (1, 3, 32, 32) and bool(torch.isfinite(r.image).all())
            assert float(r.image.std()) > 0.01  # (pixels that crossed the noisy downlink may leave [0, 1])
            assert r.failed == {} and r.es is not None and set(r.es) == {"es0", "es1"}
            if PROTOCOLS[name].cooperative:
                # fused after every step: each step a round (img2img at strength 0.6 runs 1 of the 2 steps), each
                # round one downlink per ES
                rounds = 2 if task == "txt2img" else 1
                assert r.halo == default_halo(4) and r.head == DEFAULT_HEAD and not r.candidates
                assert (r.sync, r.rounds) == (1, rounds)
                assert all(d.transmissions == rounds for _, d in r.es.values())
            else:  # two candidates from two seeds (seed + i): different images, one of them taken
                assert [c.es for c in r.candidates] == ["es0", "es1"] and r.picked in ("es0", "es1")
                assert not torch.equal(r.candidates[0].tensor, r.candidates[1].tensor)
                assert all(c.score is not None for c in r.candidates)
            # the UE's account of each link equals the proxy's counters for that link
            links = _per_link(two_es.via)
            for es_name, (up, down) in r.es.items():
                for direction, acc in (("uplink", up), ("downlink", down)):
                    counted = links[f"phone-{task}->{es_name}", direction]
                    assert (counted.symbols, counted.payload_bytes, counted.transmissions) == (
                        acc.symbols, acc.payload_bytes, acc.transmissions), (name, es_name, direction)
                    assert acc.transmissions > 0 or direction == "uplink"
            assert r.uplink.symbols == sum(u.symbols for u, _ in r.es.values())
            assert r.downlink.symbols == sum(d.symbols for _, d in r.es.values())
            assert r.downlink.snr_db == 25
    finally:
        for c in clients.values():
            c.close()


def test_one_es_cooperative_is_the_single_es_image(two_es: TwoES) -> None:
    """UIDCG with one ES is UIEG (same window = the whole latent, same starting noise) over an ideal link, also
    in three rounds (one per step: the ES resumes from the latent the UE sent back, with the `cond` it kept)."""
    ctl = _control(two_es.via)
    ideal = channel_pb2.Profile(model="ideal")
    ctl.SetChannel(channel_pb2.SetChannelRequest(link="solo->es0", direction="both", custom=ideal), timeout=10)
    clients = connect(two_es.via, ["es0"], ue_id="solo")
    try:
        p = Params(seed=9, steps=3)
        coop = generate(two_es.parts, None, PROMPT, "UIDCG", "txt2img", p, clients=clients,
                        options=MultiOptions(sync=1)).image
        single = generate(two_es.parts, clients["es0"], PROMPT, "UIEG", "txt2img", p).image
    finally:
        clients["es0"].close()
    assert torch.allclose(coop, single, atol=2e-3)


def _ue(two_es: TwoES, tmp_path: Path, *extra: str, capsys: pytest.CaptureFixture[str] | None = None,
        command: str = "generate") -> tuple[int, str, str]:
    """``meg-ue generate`` through the proxy: in this process (``capsys``: the CLI's own code, no interpreter
    start-up, which costs ~10 s here) or as a real subprocess."""
    argv = [command, PROMPT, "--via", two_es.via, "--model", two_es.model, "--steps", "2", "--json", *extra]
    if command == "generate":
        argv += ["--out", str(tmp_path / "out.png")]
    if capsys is None:
        r = subprocess.run([script("meg-ue"), *argv], capture_output=True, text=True, timeout=180, check=False)
        return r.returncode, r.stdout, r.stderr
    from ue_client.cli import main

    capsys.readouterr()
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def _json(stdout: str) -> dict[str, object]:
    return json.loads(stdout.strip().splitlines()[-1])


def test_cli_json_per_es_accounting_candidates_and_broadcast(two_es: TwoES, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    rc, stdout, err = _ue(two_es, tmp_path, "--protocol", "DSUC", "--es", "es0,es1", "--pick", "1", "--ue-id", "cli",
                          capsys=capsys)
    assert rc == 0, err
    out = _json(stdout)
    assert set(out["es"]) == {"es0", "es1"} and out["picked"] == "es1" and out["failed"] == {}  # type: ignore[arg-type]
    assert {"uplink", "downlink"} <= set(out["es"]["es0"]) and out["totals"]["uplink_counted_as"] == "unicast"  # type: ignore[index]
    assert out["downlink"]["symbols"] == 2 * 3 * 8 * 8  # type: ignore[index]  # two 8×8 sketches of a 32² image
    assert out["uplink"]["text_bytes"] == 2 * len(PROMPT)  # type: ignore[index]
    for es_name in ("es0", "es1"):
        assert Image.open(out["candidate_files"][es_name]).size == (8, 8)  # type: ignore[index]
    assert Image.open(out["candidate_files"]["sheet"]).width > 2 * 8  # type: ignore[index]
    assert Image.open(tmp_path / "out.png").size == (32, 32)
    # UIDG with a broadcast uplink: the prompt embedding counted once in total, once on each link
    rc, stdout, err = _ue(two_es, tmp_path, "--protocol", "UIDG", "--es", "es0,es1", "--broadcast", "--pick", "first",
                          "--ue-id", "cli", capsys=capsys)
    assert rc == 0, err
    bo = _json(stdout)
    assert bo["totals"]["uplink_counted_as"] == "broadcast"  # type: ignore[index]
    assert bo["uplink"]["symbols"] == bo["es"]["es0"]["uplink"]["symbols"] == bo["es"]["es1"]["uplink"]["symbols"] == 8 * 32  # type: ignore[index]
    # cooperative with the head chosen on the command line (0: windows only) and one out of range
    rc, stdout, err = _ue(two_es, tmp_path, "--protocol", "UIDCG", "--es", "es0,es1", "--head", "0", capsys=capsys)
    assert rc == 0, err
    assert _json(stdout)["head"] == 0.0
    with pytest.raises(SystemExit) as usage:
        _ue(two_es, tmp_path, "--protocol", "UIDCG", "--head", "1.5", capsys=capsys)
    assert usage.value.code == 2 and "fraction of the schedule" in capsys.readouterr().err


def test_one_es_down(two_es: TwoES, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, stdout, err = _ue(two_es, tmp_path, "--protocol", "UIDG", "--es", "es0,dead", capsys=capsys)
    assert rc == 0, err
    out = _json(stdout)
    assert list(out["failed"]) == ["dead"] and "UNAVAILABLE" in out["failed"]["dead"] and out["picked"] == "es0"  # type: ignore[index,arg-type]
    rc, stdout, err = _ue(two_es, tmp_path, "--protocol", "DCSUC", "--es", "es0,dead", "--fallback", capsys=capsys)
    assert rc == 0, err
    out = _json(stdout)
    assert out["protocol"] == "ESUC" and out["fallback_from"] == "DCSUC" and list(out["failed"]) == ["dead"]  # type: ignore[arg-type]
    # cooperative without a fallback: one clear line naming the ES
    rc, stdout, err = _ue(two_es, tmp_path, "--protocol", "UIDCG", "--es", "es0,dead", capsys=capsys)
    assert rc == 1 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and "edge server dead failed: UNAVAILABLE" in err


def test_compare_puts_the_link_settings_back(two_es: TwoES, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Hardening 11: `compare --snr-db` changes the links only while it runs."""
    ctl = _control(two_es.via)
    up = channel_pb2.Profile(model="awgn", snr_db=17)
    down = channel_pb2.Profile(model="rayleigh", snr_db=12, coherence_symbols=64)
    for link in ("cmp->es0", "cmp->es1"):
        ctl.SetChannel(channel_pb2.SetChannelRequest(link=link, direction="uplink", custom=up), timeout=10)
        ctl.SetChannel(channel_pb2.SetChannelRequest(link=link, direction="downlink", custom=down), timeout=10)

    def settings() -> dict[str, tuple[bytes, bytes]]:
        now = ctl.GetChannel(channel_pb2.GetChannelRequest(), timeout=10)
        return {ls.link: (ls.uplink.SerializeToString(), ls.downlink.SerializeToString()) for ls in now.links
                if ls.link.startswith("cmp->")}

    before = settings()
    assert set(before) == {"cmp->es0", "cmp->es1"}
    for extra in ([], ["--multi-es", "--pick", "best"]):
        rc, stdout, err = _ue(two_es, tmp_path, "--snr-db", "5", "--ue-id", "cmp", "--es", "es0,es1" if extra else "es0",
                              "--out", str(tmp_path / "cmp"), *extra, capsys=capsys, command="compare")
        assert rc == 0, err
        report = _json(stdout)
        names = {row["protocol"] for row in report["rows"]}  # type: ignore[attr-defined,index]
        assert names == {n for n, s in PROTOCOLS.items() if s.multi_es == bool(extra)}
        assert all(row["uplink"]["snr_db"] in (5, None) for row in report["rows"])  # type: ignore[attr-defined,index]
        assert Path(str(report["panel"])).exists()
        assert settings() == before
