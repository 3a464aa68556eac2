"""``meg-ue load``'s settings and the UE's seeds: odd values are refused with a message, never run quietly."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from shared.protocol.registry import PROTOCOLS
from shared.rpc.security import TlsFiles
from shared.wire.limits import MAX_SEED
from ue_client.load import LoadConfig, RequestLog, RequestRecord, parse_protocols, prepare_out, summarize, write_atomic


@pytest.mark.parametrize("text", ["CIAG:inf", "CIAG:nan", "CIAG:-1", "CIAG:0", "FULL-ES,CIAG:1e400"])
def test_protocol_weights_must_be_positive_and_finite(text: str) -> None:
    """Issue 23 (14): ``CIAG:inf`` passed and the run ended with 0 requests and exit 0."""
    with pytest.raises(ValueError, match="positive finite"):
        parse_protocols(text, PROTOCOLS)
    with pytest.raises(ValueError, match="positive finite"):
        LoadConfig(via="x:1", ues=1, requests=1, protocols=(("CIAG", math.inf),))


def test_request_seeds_wrap_explicitly() -> None:
    cfg = LoadConfig(via="x:1", ues=1, requests=3, seed=MAX_SEED)
    assert [cfg.request_seed(k) for k in range(3)] == [MAX_SEED, 0, 1]


def test_the_summary_shows_no_token_and_no_key_path() -> None:
    cfg = LoadConfig(via="x:1", ues=1, requests=1, admin_token="tok-123",
                     control_tls=TlsFiles(cert="/keys/ue.pem", key="/keys/ue.key", ca="/keys/ca.pem"))
    text = repr(summarize([], cfg, 1.0)) + repr(cfg)
    assert "tok-123" not in text and "/keys/" not in text
    assert summarize([], cfg, 1.0)["config"]["admin_token_given"] is True  # type: ignore[index]


def test_prepare_out(tmp_path: Path) -> None:
    prepare_out(tmp_path / "new" / "run", overwrite=False)  # made
    prepare_out(tmp_path / "new" / "run", overwrite=False)  # empty: fine
    (tmp_path / "new" / "run" / "requests.csv").write_text("x\n")
    with pytest.raises(ValueError, match="not empty"):
        prepare_out(tmp_path / "new" / "run", overwrite=False)
    prepare_out(tmp_path / "new" / "run", overwrite=True)
    with pytest.raises(ValueError, match="is a file"):
        prepare_out(tmp_path / "new" / "run" / "requests.csv", overwrite=True)


def test_request_log_flushes_each_row(tmp_path: Path) -> None:
    with RequestLog(tmp_path / "r.csv") as log:
        log(RequestRecord(0, "ue0", "CIAG", False, latency_s=0.1234567))
        lines = (tmp_path / "r.csv").read_text().splitlines()  # read while still open
        assert lines[0].startswith("index,ue,protocol") and lines[1].startswith("0,ue0,CIAG,False")


def test_write_atomic_replaces_in_one_step(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    path.write_text("old")
    write_atomic(path, "new")
    assert path.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_parallel_seeds_that_overflow_are_refused(random_model_dir: Path) -> None:
    """Issue 23 (14): ``--seed 2^64-1`` made ES 1's seed ``2^64`` and dropped it from UIDG; now an error that
    names the largest seed that works (nothing is sent: the check comes first)."""
    from shared.model.ops import ModelParts
    from shared.protocol.params import Params
    from ue_client.edge_client import EdgeClient
    from ue_client.session import generate
    from ue_client.transport import EdgeFailure

    parts = ModelParts.load(str(random_model_dir), "cpu")
    clients = {n: EdgeClient("127.0.0.1:9", timeout_s=2, es_name=n, retry=False) for n in ("es0", "es1")}
    try:
        with pytest.raises(ValueError, match=rf"overflows 2\^64-1; use a seed up to {MAX_SEED - 1}"):
            generate(parts, None, "a red circle", "UIDG", params=Params(seed=MAX_SEED, steps=2), clients=clients)
        with pytest.raises(EdgeFailure):  # the largest good seed is sent (and fails here only for want of an ES)
            generate(parts, None, "a red circle", "UIDG", params=Params(seed=MAX_SEED - 1, steps=2), clients=clients)
    finally:
        for c in clients.values():
            c.close()


class _FakeClient:
    def __init__(self, ue: str, es: str = "") -> None:
        self.ue, self.es, self.closed = ue, es, False

    def close(self) -> None:
        self.closed = True


def test_attach_round_robin_and_least_loaded() -> None:
    from ue_client.load import _Attach

    rr = _Attach(LoadConfig(via="x:1", ues=4, requests=1, es=("es0", "es1")), _FakeClient)
    assert [rr.take(i)[0] for i in range(4)] == ["es0", "es1", "es0", "es1"]
    ll = _Attach(LoadConfig(via="x:1", ues=3, requests=1, es=("es0", "es1"), attach="least-loaded"), _FakeClient)
    first, second, third = ll.take(0), ll.take(1), ll.take(2)  # none released: they fill the cells in turn
    assert (first[0], second[0], third[0]) == ("es0", "es1", "es0")
    assert (third[1].ue, third[1].es) == ("ue2", "es0")  # UE 2's own client for es0
    ll.release("es0")
    ll.release("es0")
    assert ll.take(1)[0] == "es0"  # es0 now has none in flight, es1 one
    ll.close()
    assert all(c.closed for c in ll._clients.values())
    with pytest.raises(ValueError, match="--attach"):
        LoadConfig(via="x:1", ues=1, requests=1, attach="nearest")


def test_timeline_bin_width() -> None:
    from ue_client.load_timeline import default_bin_s

    assert LoadConfig(via="x:1", ues=1, requests=5).bin_s == 1.0
    assert LoadConfig(via="x:1", ues=1, duration_s=600).bin_s == 1.0
    assert [default_bin_s(d) for d in (601, 1200, 1201, 3600, 86_400)] == [2, 2, 5, 10, 200]
    assert LoadConfig(via="x:1", ues=1, duration_s=3600, timeline_s=0.5).bin_s == 0.5
    for bad in (0.0, -1.0, 0.01, math.nan, math.inf):
        with pytest.raises(ValueError, match="--timeline-s"):
            LoadConfig(via="x:1", ues=1, requests=1, timeline_s=bad)
    with pytest.raises(ValueError, match="more than 100000 bins"):
        LoadConfig(via="x:1", ues=1, duration_s=86_400, timeline_s=0.1)


def test_a_timeline_bin_counts_its_requests() -> None:
    from ue_client.load_timeline import LinkState, TimelineRow, format_timeline

    done = [RequestRecord(0, "ue0", "FULL-ES", False, done_s=1.2, latency_s=0.5, downlink_snr_db=10.0, air_s=0.01),
            RequestRecord(1, "ue1", "FULL-ES", False, done_s=1.5, latency_s=1.5, downlink_snr_db=20.0, air_s=0.02),
            RequestRecord(2, "ue0", "FULL-ES", False, done_s=1.9, latency_s=0.1, status="RESOURCE_EXHAUSTED")]
    link = LinkState(2.0, serving={"ue0": "es0", "ue1": "es1"}, profile={"ue0": "urban", "ue1": "urban"},
                     model={"ue0": "awgn", "ue1": "awgn"}, downlink_snr_db={"ue0": 10.0, "ue1": 20.0})
    row = TimelineRow.of(1.0, 2.0, 4, done, link)
    assert (row.sent, row.finished, row.failed, row.error_rate) == (4, 2, 1, 0.3333)
    assert row.latency_p50_s == 1.0 and row.latency_p99_s == pytest.approx(1.49)  # OK requests only
    assert row.applied_snr_db == 15.0 and row.air_s == pytest.approx(0.03)
    assert (row.serving, row.link_profile, row.link_snr_db, row.uplink_snr_db) == ("es0:1 es1:1", "urban", 15.0, None)
    empty = TimelineRow.of(2.0, 3.0, 0, [], None)
    assert (empty.finished, empty.latency_p50_s, empty.error_rate, empty.serving) == (0, None, None, "")
    table = format_timeline([row, empty])
    assert "es0:1 es1:1" in table and table.count("\n") == 3


def test_timeline_recorder_closes_bins_as_time_passes(tmp_path: Path) -> None:
    """Bins close at their ends (a thread) and at finish; a request ending in bin k is counted in bin k."""
    import threading
    import time

    from ue_client.load_timeline import TimelineLog, TimelineRecorder

    lock = threading.Lock()
    start = time.monotonic()
    with TimelineLog(tmp_path / "timeline.csv") as log:
        rec = TimelineRecorder(0.1, start, lock, None, log)
        rec.start()
        with lock:
            rec.sent(time.monotonic() - start)
        deadline = time.monotonic() + 10
        while len((tmp_path / "timeline.csv").read_text().splitlines()) < 3:  # header + 2 bins, streamed
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with lock:
            r = RequestRecord(0, "ue0", "CIAG", False, latency_s=0.2)
            r.done_s = time.monotonic() - start
            rec.done(r)
        rows = rec.finish()
    k = int(r.done_s // 0.1)
    assert [row.t0_s for row in rows] == pytest.approx([0.1 * i for i in range(len(rows))])
    assert rows[0].sent == 1 and rows[k].finished == 1 and sum(row.finished for row in rows) == 1
    assert rows[-1].t1_s <= time.monotonic() - start
    assert len((tmp_path / "timeline.csv").read_text().splitlines()) == len(rows) + 1
