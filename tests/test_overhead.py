"""`meg-ue overhead` reproduces paper 2's Table II for the SD-v1.5 geometry and paper 1's structure."""

from __future__ import annotations

import json
import subprocess

from shared.protocol.geometry import SD_V1_5
from tests.support.procs import script
from ue_client.overhead import overhead_table, reduction_factor, table_ii


def test_table_ii_numbers_for_sd_v1_5() -> None:
    t = table_ii(SD_V1_5)
    assert t["raw latent"] == 16_384
    assert [t[f"seed fc={fc}"] for fc in (0.1, 0.3, 0.5, 0.7, 0.9)] == [1_638, 4_915, 8_192, 11_469, 14_746]
    assert t["image (H·W·3)"] == 786_432 and 512 * 512 * 4 == 1_048_576  # the papers count 4 values per pixel


def test_protocol_structure_like_fig_6() -> None:
    rows = {(r.protocol, r.task, r.fc): r for r in overhead_table(SD_V1_5, (1.0, 0.5))}
    assert rows["FULL-UE", "txt2img", 1.0].total_symbols == 0
    assert rows["FULL-ES", "img2img", 1.0].uplink_symbols == rows["FULL-ES", "img2img", 1.0].downlink_symbols == 786_432
    assert rows["CIAG", "img2img", 0.5].total_symbols == 2 * 8_192
    # txt2img: the prompt embedding (77×768) is larger than the latent it conditions
    assert rows["CIAG", "txt2img", 1.0].uplink_symbols == 77 * 768 > 16_384
    assert reduction_factor(SD_V1_5, "img2img", 1.0) == 48.0
    assert reduction_factor(SD_V1_5, "img2img", 0.1) > 480


def test_overhead_cli_json() -> None:
    r = subprocess.run([script("meg-ue"), "overhead", "--geometry", "sd-v1-5", "--fc", "0.5", "--json"],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["table_ii"]["seed fc=0.5"] == 8192
    assert {row["protocol"] for row in data["rows"]} == {"FULL-UE", "FULL-ES", "UIEG", "EIUG", "CIAG", "ESUC",
                                                        "UIDG", "DIUG", "DSUC", "UIDCG", "DCSUC"}
