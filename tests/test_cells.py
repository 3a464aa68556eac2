"""Time on the air on a virtual clock (exact): cells, MCS, the slot scheduler, delay and jitter, the header."""

from __future__ import annotations

import json

import pytest

from shared.channel.airtime import DirectionAirtime, airtime_value, parse_airtime
from shared.wire.headers import AIRTIME_HEADER


def test_airtime_header_round_trips_and_rejects_malformed_values() -> None:
    up = DirectionAirtime(0.0235, 0.001, 0.005, 47, 393_300, 1_200, 27, "es0")
    value = airtime_value(up, None)
    assert AIRTIME_HEADER == "meg-airtime"
    parsed = parse_airtime(value)
    assert set(parsed) == {"uplink"}
    assert parsed["uplink"] == {"air_s": 0.0235, "queue_s": 0.001, "delay_s": 0.005, "slots": 47,
                                "resource_elements": 393_300, "digital_bits": 1_200, "mcs": 27, "cell": "es0"}
    assert up.total_s == pytest.approx(0.0295)
    good = json.loads(value)["uplink"]
    for bad, needle in [
        ("not json", "not JSON"), ("[1]", "JSON object"), (json.dumps({"sideways": good}), "unknown direction"),
        (json.dumps({"uplink": {**good, "extra": 1}}), "exactly the keys"),
        (json.dumps({"uplink": {**good, "slots": 1.5}}), "slots must be int"),
        (json.dumps({"uplink": {**good, "air_s": -1.0}}), "air_s must be a finite time"),
        (json.dumps({"uplink": {**good, "cell": 3}}), "cell must be str"),
    ]:
        with pytest.raises(ValueError, match=needle):
            parse_airtime(bad)
