"""Time on the air as the UE reports it (issue 19, the UE's part), through real `meg-edge` / `meg-channel`
/ `meg-ue` processes with a cell: ``generate --json`` per direction and per ES, ``load``'s breakdown and
each cell's share."""

from __future__ import annotations

import csv
import json
import math
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.procs import running, script

pytestmark = pytest.mark.slow  # real processes

#: The cell: 5 MHz at 15 kHz (25 PRB, 3,600 data RE per 1 ms slot at the default overhead 0.14), FDD, 3 ms delay.
CELL = ("--bandwidth-mhz", "5", "--numerology", "0", "--delay-ms", "3")
RE_PER_SLOT, SLOT_S, DELAY_S = 3_600, 1e-3, 0.003


@pytest.fixture(scope="module")
def via(random_model_dir: Path) -> Iterator[str]:
    """One real ES reached as two upstreams (es0, es1: two links, two cells) behind a proxy with cells."""
    es = [script("meg-edge"), "serve", "--listen", "127.0.0.1:0", "--model", str(random_model_dir)]
    with running(es, "meg.v1.EdgeService") as (_, port):
        proxy = [script("meg-channel"), "serve", "--listen", "127.0.0.1:0", "--upstream", f"es0=127.0.0.1:{port}",
                 "--upstream", f"es1=127.0.0.1:{port}", *CELL]
        with running(proxy, "meg.v1.ChannelControl") as (_, pport):
            yield f"127.0.0.1:{pport}"


def _ue(*argv: str) -> dict[str, object]:
    done = subprocess.run([script("meg-ue"), *argv, "--json"], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def _check_direction(d: dict[str, object], least_re: int) -> None:
    """One direction of one RPC alone in an idle FDD cell: whole slots of air, the link's delay after it."""
    assert d["resource_elements"] >= least_re  # type: ignore[operator]
    assert d["slots"] == math.ceil(d["resource_elements"] / RE_PER_SLOT)  # type: ignore[operator]
    assert d["air_s"] == pytest.approx(d["slots"] * SLOT_S, abs=1e-9)  # type: ignore[operator]
    assert d["delay_s"] == pytest.approx(DELAY_S, abs=1e-9)
    assert 0 <= d["queue_s"] < 0.5  # type: ignore[operator]  # at most the rest of a slot, plus the proxy's own work


def test_generate_json_reports_air_and_queue_per_direction(via: str, random_model_dir: Path, tmp_path: Path) -> None:
    s = _ue("generate", "a red circle", "--protocol", "FULL-ES", "--via", via, "--model", str(random_model_dir),
            "--steps", "2", "--out", str(tmp_path / "a.png"))
    _check_direction(s["uplink"], 1)  # type: ignore[arg-type]  # the prompt, digital
    _check_direction(s["downlink"], 32 * 32 * 3 // 2)  # type: ignore[arg-type]  # the image: ceil(n / 2) RE
    assert s["downlink"]["cell"] == s["uplink"]["cell"]  # type: ignore[index]


def test_generate_json_reports_air_per_es_for_multi_es(via: str, random_model_dir: Path, tmp_path: Path) -> None:
    s = _ue("generate", "a red circle", "--protocol", "UIDG", "--via", via, "--model", str(random_model_dir),
            "--steps", "2", "--pick", "first", "--out", str(tmp_path / "b.png"))
    per = s["es"]
    assert set(per) == {"es0", "es1"}  # type: ignore[arg-type]
    for name in ("es0", "es1"):
        _check_direction(per[name]["downlink"], 32 * 32 * 3 // 2)  # type: ignore[index]
    total = s["downlink"]["air_s"]  # type: ignore[index]
    assert total == pytest.approx(per["es0"]["downlink"]["air_s"] + per["es1"]["downlink"]["air_s"])  # type: ignore[index]


def test_load_splits_latency_and_shows_each_cells_share(via: str, random_model_dir: Path, tmp_path: Path) -> None:
    s = _ue("load", "--via", via, "--model", str(random_model_dir), "--ues", "2", "--requests", "6", "--steps", "2",
            "--protocol", "FULL-ES", "--es", "es0,es1", "--attach", "round-robin", "--out", str(tmp_path / "run"))
    assert s["ok"] == 6
    parts = s["breakdown"]
    assert set(parts) == {"queue_s", "air_s", "delay_s", "compute_s"}  # type: ignore[arg-type]
    for p in parts.values():  # type: ignore[attr-defined]
        assert p["p50"] <= p["p99"]
    slots = math.ceil(1 / RE_PER_SLOT) + math.ceil(32 * 32 * 3 / 2 / RE_PER_SLOT)  # at least, each way
    assert parts["air_s"]["min"] >= slots * SLOT_S - 1e-9  # type: ignore[index]
    assert parts["delay_s"]["p50"] == pytest.approx(2 * DELAY_S)  # type: ignore[index]
    assert parts["compute_s"]["p50"] > 0  # type: ignore[index]
    rows = list(csv.DictReader((tmp_path / "run" / "requests.csv").open()))
    for r in rows:  # every request's parts add up to its round trip
        whole = float(r["done_s"]) - float(r["sent_s"])
        assert sum(float(r[k]) for k in ("queue_s", "air_s", "delay_s", "compute_s")) == pytest.approx(whole, abs=2e-6)
    cells = s["cells"]
    assert {n: (c["requests"], c["ues"], c["share"]) for n, c in cells.items()} == {  # type: ignore[attr-defined]
        "es0": (3, 1, 0.5), "es1": (3, 1, 0.5)}
    assert (tmp_path / "run" / "breakdown.png").read_bytes()[:4] == b"\x89PNG"
