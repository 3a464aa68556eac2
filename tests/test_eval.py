"""`meg-lab eval --quick`: the CSV's schema, the plots, and the trends every scheme must show."""

from __future__ import annotations

import csv
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from meg_lab.evaluate import COLUMNS
from tests.support.procs import script

pytestmark = pytest.mark.slow  # real processes / a model end to end (conftest: 600 s per test)


def test_eval_quick(random_model_dir: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(random_model_dir, model)
    # a briefly trained codec: the random model's fixture codec is untrained
    t = subprocess.run([script("meg-lab"), "train-codec", "--model", str(model), "--generated", "64", "--encoded", "192",
                        "--steps", "400", "--fc", "0.5", "--design", "residual", "--hidden", "64"],
                       check=False, capture_output=True, text=True, timeout=300)
    assert t.returncode == 0, t.stderr[-3000:]
    out = tmp_path / "eval"
    r = subprocess.run([script("meg-lab"), "eval", "--quick", "--model", str(model), "--out", str(out)],
                       check=False, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    for name in ("results.csv", "psnr_vs_snr.png", "fid_vs_snr.png", "psnr_fc_snr.png", "fid_fc_snr.png", "table_ii.md"):
        assert (out / name).stat().st_size > 0, name
    with (out / "results.csv").open() as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == COLUMNS
        rows = list(reader)
    series: dict[tuple[str, str, str], list[tuple[float, float, float]]] = defaultdict(list)
    for row in rows:
        series[row["channel"], row["scheme"], row["fc"]].append((float(row["snr_db"]), float(row["psnr_db"]), float(row["fid"])))
    # the random model ships fc 0.5 only; digital-png is the digital baseline (FULL-ES-PNG)
    assert {k[1] for k in series} == {"centralized", "raw-latent", "meg-residual", "digital-png"}
    digital = series.pop(("awgn", "digital-png", "1.0")), series.pop(("rayleigh", "digital-png", "1.0"))
    assert {k[0] for k in series} == {"awgn", "rayleigh"}
    for key, pts in series.items():
        pts.sort()
        snr, psnr, fid = map(np.array, zip(*pts))
        assert len(snr) == 5 and np.all(np.isfinite(psnr)) and np.all(np.isfinite(fid)), key
        # more SNR, better quality: strictly better at the top than at the bottom, and rank-correlated
        assert psnr[-1] > psnr[0] + 3 and fid[-1] < fid[0], (key, psnr, fid)
        assert np.corrcoef(np.argsort(np.argsort(psnr)), np.arange(len(psnr)))[0, 1] > 0.8, (key, psnr)
    # accounting: the symbols column is the geometry's (32² RGB image, 4×4×4 latent, half of it for fc 0.5)
    symbols = {row["scheme"]: int(row["symbols"]) for row in rows}
    assert symbols == {"centralized": 3072, "raw-latent": 64, "meg-residual": 32, "digital-png": 0}
    # the cliff: lost below MCS 0's threshold (-6.0 dB), exact (8-bit rounding only) above, whatever the SNR
    for pts in digital:
        pts.sort()
        assert [snr for snr, p, _ in pts if np.isnan(p)] == [-20.0, -10.0], pts
        received = {p for snr, p, _ in pts if snr >= 0}
        assert len(received) == 1 and received.pop() > 40, pts
    for row in rows:
        lost = row["scheme"] == "digital-png" and float(row["snr_db"]) < -6.0
        assert float(row["outage"]) == (1.0 if lost else 0.0), row
        assert (int(row["digital_bytes"]) > 0) == (row["scheme"] == "digital-png"), row
