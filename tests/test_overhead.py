"""`meg-ue overhead` reproduces paper 2's Table II for the SD-v1.5 geometry and paper 1's structure."""

from __future__ import annotations

import json
import subprocess

from shared.protocol.geometry import SD_V1_5
from shared.protocol.registry import PROTOCOLS
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
    protocols = {row["protocol"] for row in data["rows"]}
    assert protocols == set(PROTOCOLS) >= {"FULL-UE", "FULL-ES", "UIEG", "EIUG", "CIAG", "ESUC", "UIDG", "DIUG", "DSUC",
                                           "UIDCG", "DCSUC"}  # the papers' eleven, and any variant the registry adds


def _air_json(*flags: str) -> dict[str, object]:
    r = subprocess.run([script("meg-ue"), "overhead", "--geometry", "sd-v1-5", "--fc", "1", "--json", *flags],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def test_air_time_against_hand_computed_values() -> None:
    """DESIGN §11's numbers: an SD-v1.5 image (786,432 values = 393,216 RE) needs 46 slots (23 ms) of a whole
    20 MHz / 30 kHz cell (51 PRB × 12 × 14 = 8,568 RE per 0.5 ms slot, overhead 0); its seed (16,384 values =
    8,192 RE) one slot; 17.1 M RE/s carry 43.6 images a second."""
    from shared.channel.mcs import digital_re, select_mcs

    data = _air_json("--bandwidth-mhz", "20", "--numerology", "1", "--overhead", "0")
    cell = data["cell"]
    assert (cell["prbs"], cell["re_per_slot"], cell["slot_s"]) == (51, 8_568, 0.0005)  # type: ignore[index]
    assert cell["downlink_re_per_s"] == 8_568 / 0.0005 == 17_136_000  # type: ignore[index]
    assert data["table_ii_air_s"]["image (H·W·3)"] == [46, 0.023]  # type: ignore[index]
    assert data["table_ii_air_s"]["raw latent"] == [1, 0.0005]  # type: ignore[index]
    air = {(a["protocol"], a["task"]): a for a in data["air"]}  # type: ignore[attr-defined]
    full = air["FULL-ES", "txt2img"]
    assert (full["downlink_re"], full["downlink_slots"], full["downlink_air_s"]) == (393_216, 46, 0.023)
    assert full["gen_per_s"] == round(17_136_000 / 393_216, 3) == 43.579
    ciag = air["CIAG", "img2img"]  # a 16,384-value task seed each way, the prompt beside it: one slot each
    mcs = select_mcs(20.0)  # the defaults: a 64-byte prompt at 20 dB
    assert mcs is not None
    assert (ciag["uplink_re"], ciag["uplink_slots"], ciag["downlink_re"], ciag["downlink_slots"]) == (
        8_192 + digital_re(64 * 8, mcs), 1, 8_192, 1)
    assert air["FULL-UE", "txt2img"]["gen_per_s"] is None and air["FULL-UE", "txt2img"]["air_s"] == 0


def test_air_time_of_the_prompt_and_a_narrow_tdd_cell() -> None:
    """5 MHz at 15 kHz: 25 PRB × floor(168 × 0.86) = 3,600 RE per 1 ms slot. The image: ceil(393,216 / 3,600)
    = 110 downlink slots; DDDSU gives the downlink 3 slots of 5, so the 110th D slot is slot 181: 182 ms."""
    from shared.channel.mcs import digital_re, select_mcs

    data = _air_json("--bandwidth-mhz", "5", "--numerology", "0", "--duplex", "tdd", "--prompt-bytes", "100",
                     "--snr-db", "10")
    air = {(a["protocol"], a["task"]): a for a in data["air"]}  # type: ignore[attr-defined]
    full = air["FULL-ES", "txt2img"]
    assert (full["downlink_slots"], full["downlink_air_s"]) == (110, 0.182)
    mcs = select_mcs(10.0)
    assert mcs is not None
    assert full["uplink_re"] == digital_re(800, mcs)  # the prompt alone, digital
    assert air["CIAG", "txt2img"]["uplink_re"] == 77 * 768 // 2  # the UE encodes the prompt: no text goes up
    assert air["FULL-ES", "img2img"]["uplink_re"] == 393_216 + digital_re(800, mcs)  # pixels and the prompt


def test_bad_cell_settings_name_the_setting() -> None:
    for flags, words in ((("--bandwidth-mhz", "7"), "bandwidth_mhz 7 is not in TS 38.101-1"),
                         (("--bandwidth-mhz", "20", "--numerology", "5"), "numerology 5"),
                         (("--bandwidth-mhz", "20", "--snr-db", "-30"), "outage")):
        r = subprocess.run([script("meg-ue"), "overhead", "--geometry", "sd-v1-5", *flags], capture_output=True,
                           text=True, timeout=120, check=False)
        assert r.returncode == 1 and words in r.stderr and "Traceback" not in r.stderr, r.stderr
