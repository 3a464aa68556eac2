"""``meg-ue load``'s timeline: the run cut into time bins, each with its requests and the link state the proxy
reported in it, so that a scenario's SNR ramp and handovers (``meg-channel serve --scenario``) show up beside
the latency they cause.

Per bin ``[t0, t1)`` (seconds since the run started; measured requests only, warmup left out):

* ``sent`` (by ``sent_s``), ``finished`` (OK, by ``done_s``), ``failed`` (an error, by ``done_s``), the error rate;
* latency p50/p99 of the bin's finished requests;
* ``applied_snr_db``: the mean SNR the proxy applied to the bin's finished requests (each request's downlink
  ``ChannelApplied.snr_db``, its uplink's where the downlink carried no tensor). That is the quality measure a
  load run has: it makes no ideal-link reference image, so it computes no PSNR (``meg-lab eval`` does);
* ``air_s``: the air time of the bin's finished requests (both directions; blank without a cell);
* the link state, read at the bin's end through the one control client (:class:`shared.rpc.control.ControlClient`):
  the serving ES is where the proxy routes the UE now: for UEs that name no ES (no ``--es``) its last handover
  in a scenario (``GetChannel``'s scenario positions), else the proxy's first ES, as the proxy routes them (a
  request already in flight still ends on the ES it went to); with ``--es``, the link that carried its
  transmissions since the last read (``GetStats``). ``GetChannel`` gives that link's profile (name, model, SNR) and
  how far the scenario playing on the run's UEs is (``scenario_s``: the bins line up with the scenario file's times).
  With several UEs, ``serving`` counts UEs per ES and the SNRs are means over the UEs' serving links.

:class:`TimelineRecorder` closes each bin as the run goes (a thread at the bin boundaries); :class:`TimelineLog`
streams the rows to ``timeline.csv``; :func:`timeline_summary` is what ``results.json`` keeps; :func:`format_timeline`
the table printed at the end; :func:`plot_timeline` draws ``timeline.png``.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import grpc
import numpy as np

from shared.rpc.security import TlsFiles
from ue_client.csv_log import CsvLog

#: Bins a run may have at most (a longer run gets wider bins by default; an explicit ``--timeline-s`` that
#: would make more is refused).
MAX_BINS = 100_000
#: Narrowest bin, seconds (each bin's end reads the proxy: two control calls).
MIN_BIN_S = 0.05
#: Deadline of one link-state read, seconds.
SAMPLE_DEADLINE_S = 2.0


def default_bin_s(duration_s: float | None) -> float:
    """1 s, or for a ``--duration`` run longer than 600 s the smallest of 2, 5, 10, 20, 50, ... s that keeps it
    at 600 bins or fewer."""
    if duration_s is None or duration_s <= 600:
        return 1.0
    want = duration_s / 600
    decade = 10 ** math.floor(math.log10(want))
    return next(m * decade for m in (1, 2, 5, 10) if m * decade >= want)


class _Done(Protocol):
    """What a bin needs of a finished request (:class:`ue_client.load.RequestRecord`)."""

    status: str
    done_s: float
    latency_s: float
    air_s: float
    uplink_snr_db: float | None
    downlink_snr_db: float | None


@dataclass
class LinkState:
    """One read of the proxy: per UE of the run, the ES serving it and its serving link's profiles."""

    t_s: float  # when it was read, seconds since the run started
    serving: dict[str, str] = field(default_factory=dict)  # UE -> ES ("": not known yet)
    profile: dict[str, str] = field(default_factory=dict)  # UE -> its serving link's downlink profile name (or model)
    model: dict[str, str] = field(default_factory=dict)  # UE -> that profile's model
    downlink_snr_db: dict[str, float] = field(default_factory=dict)  # UE -> downlink SNR (absent: ideal)
    uplink_snr_db: dict[str, float] = field(default_factory=dict)
    scenario: str = ""  # the scenario playing on the run's UEs (GetChannel's scenarios; else the first one)
    scenario_s: float | None = None  # how far it is, seconds from its start on the proxy's clock


_HANDOVER = re.compile(r"handover of (\S+) to (\S+)")


def handovers(settings: Any) -> dict[str, str]:
    """UE -> the ES the last handover a playing (or finished) scenario applied made its serving ES, from
    ``GetChannel``'s scenario positions (a handover's position is keyed by the UE; its ``last`` is the event's
    description, ``handover of UE to ES``; a refused one does not count)."""
    out: dict[str, str] = {}
    for sc in settings.scenarios:
        for pos in sc.positions:
            m = _HANDOVER.fullmatch(pos.last) if pos.last_event >= 0 and not pos.last_error else None
            if m and m.group(1) == pos.link:
                out[pos.link] = m.group(2)
    return out


class LinkSampler:
    """Reads each of the run's UEs' link state from the proxy (``GetChannel`` then ``GetStats``): the serving ES
    as the proxy routes the UE (its scenario handovers), or, for UEs that name their ES, the link whose
    transmissions grew since the last read. A target that is no proxy (an ES directly) turns it off after the first read (``enabled`` False); a refused
    ``GetStats`` (a secured proxy without the admin token) leaves the serving ES to links the UE alone has."""

    def __init__(self, via: str, ues: Sequence[str], tls: TlsFiles | None = None, token: str | None = None,
                 follows_handovers: bool = True) -> None:
        """``follows_handovers``: the UEs name no ES (no ``--es``), so a scenario's handover routes them."""
        from shared.rpc.control import ControlClient

        self.ues = list(ues)
        self.follows_handovers = follows_handovers
        self.enabled = True
        self.error = ""  # the last read's failure, if any
        self._control = ControlClient(via, tls, token, timeout_s=SAMPLE_DEADLINE_S)
        self._tx: dict[str, int] = {}  # link -> transmissions at the last read
        self._serving: dict[str, str] = {}  # UE -> its ES at the last read

    def sample(self, t_s: float) -> LinkState | None:
        """The link state now (``t_s``: the run's clock), or None when the proxy could not be read."""
        from shared.rpc.control import is_not_a_proxy

        if not self.enabled:
            return None
        try:
            settings = self._control.get_channel()
        except grpc.RpcError as exc:
            self.error = f"GetChannel: {exc.code().name}: {exc.details()}"
            self.enabled = not is_not_a_proxy(exc)
            return None
        tx: dict[str, int] | None = {}
        try:
            counted: dict[str, int] = {}
            for e in self._control.stats().entries:
                counted[e.link] = counted.get(e.link, 0) + int(e.transmissions)
            tx = counted
        except grpc.RpcError as exc:
            self.error = f"GetStats: {exc.code().name}: {exc.details()}"
            tx = None
        links = {ls.link: ls for ls in settings.links}
        handed = handovers(settings) if self.follows_handovers else {}
        out = LinkState(t_s)
        for ue in self.ues:
            mine = sorted(n for n in links if n.partition("->")[0] == ue)
            grown = {n: tx.get(n, 0) - self._tx.get(n, 0) for n in mine} if tx is not None else {}
            if self.follows_handovers:  # where the proxy routes a UE that names no ES now: its last handover, else
                es = handed.get(ue) or (settings.upstreams[0] if settings.upstreams else "")  # the first ES
            elif any(v > 0 for v in grown.values()):
                es = max(grown, key=lambda n: (grown[n], n)).partition("->")[2]
            elif ue in self._serving:
                es = self._serving[ue]
            elif len(mine) == 1:
                es = mine[0].partition("->")[2]
            elif not mine:  # a UE the proxy has not seen: its first request goes to the first ES, on the default
                es = settings.upstreams[0] if settings.upstreams else ""
            else:  # several links (a scenario set them) and no traffic yet: which one serves is not known
                out.serving[ue] = ""
                continue
            if es and mine:
                self._serving[ue] = es
            ls = links.get(f"{ue}->{es}", settings.default)
            out.serving[ue] = es
            out.profile[ue] = ls.downlink.name or ls.downlink.model
            out.model[ue] = ls.downlink.model
            for d, into in (("downlink", out.downlink_snr_db), ("uplink", out.uplink_snr_db)):
                p = getattr(ls, d)
                if p.model != "ideal" and math.isfinite(p.snr_db):
                    into[ue] = float(p.snr_db)
        if tx is not None:
            self._tx = tx
        ours = [sc for sc in settings.scenarios if any(
            p.link in self.ues or p.link.partition("->")[0] in self.ues for p in sc.positions)]
        for sc in ours[:1] or list(settings.scenarios)[:1]:
            out.scenario, out.scenario_s = sc.name, round(float(sc.elapsed_s), 3)
        return out

    def close(self) -> None:
        self._control.close()


@dataclass
class TimelineRow:
    """One bin of the timeline (a row of ``timeline.csv``; None is an empty cell)."""

    t0_s: float
    t1_s: float
    sent: int = 0
    finished: int = 0
    failed: int = 0
    error_rate: float | None = None  # failed / (finished + failed)
    latency_p50_s: float | None = None
    latency_p99_s: float | None = None
    applied_snr_db: float | None = None  # mean SNR the proxy applied to the bin's finished requests
    air_s: float | None = None  # their time on the air (None: no cell on the way)
    serving: str = ""  # the ES serving the run's UEs ("es0"; several: "es0:3 es1:1"; "?": not known yet)
    link_profile: str = ""  # the serving links' downlink profile(s)
    link_model: str = ""
    link_snr_db: float | None = None  # the serving links' downlink SNR (mean over UEs; None: ideal or not read)
    uplink_snr_db: float | None = None
    sampled_s: float | None = None  # when the proxy was read for this bin
    scenario: str = ""  # the scenario playing on the run's UEs then ("": none)
    scenario_s: float | None = None  # where it was, seconds from its start (line the bins up with its file)

    @classmethod
    def of(cls, t0: float, t1: float, sent: int, done: Sequence[_Done], link: LinkState | None) -> TimelineRow:
        row = cls(round(t0, 6), round(t1, 6), sent=sent)
        ok = [r for r in done if r.status == "OK"]
        row.finished, row.failed = len(ok), len(done) - len(ok)
        if done:
            row.error_rate = round(row.failed / len(done), 4)
        if ok:
            lat = np.asarray([r.latency_s for r in ok])
            row.latency_p50_s = round(float(np.percentile(lat, 50)), 6)
            row.latency_p99_s = round(float(np.percentile(lat, 99)), 6)
            snrs = [s for r in ok if (s := applied_snr(r)) is not None]
            row.applied_snr_db = round(float(np.mean(snrs)), 4) if snrs else None
            air = [r.air_s for r in ok if r.air_s >= 0]
            row.air_s = round(float(sum(air)), 6) if air else None
        if link is not None:
            row.sampled_s = round(link.t_s, 6)
            row.scenario, row.scenario_s = link.scenario, link.scenario_s
            counts: dict[str, int] = {}
            for es in link.serving.values():
                counts[es or "?"] = counts.get(es or "?", 0) + 1
            row.serving = next(iter(counts)) if len(counts) == 1 else " ".join(f"{k}:{v}" for k, v in sorted(counts.items()))
            row.link_profile = " ".join(sorted(set(link.profile.values())))
            row.link_model = " ".join(sorted(set(link.model.values())))
            if link.downlink_snr_db:
                row.link_snr_db = round(float(np.mean(list(link.downlink_snr_db.values()))), 4)
            if link.uplink_snr_db:
                row.uplink_snr_db = round(float(np.mean(list(link.uplink_snr_db.values()))), 4)
        return row


def applied_snr(r: _Done) -> float | None:
    """The SNR the proxy applied to a request: its downlink's (its uplink's if no tensor came down)."""
    return r.downlink_snr_db if r.downlink_snr_db is not None else r.uplink_snr_db


def _cell(value: object) -> object:
    return "" if value is None else value


class TimelineLog(CsvLog[TimelineRow]):
    """``timeline.csv``, one row per bin as it closes (flushed at once, like ``requests.csv``)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, TimelineRow, _cell)


class TimelineRecorder(threading.Thread):
    """Closes bin ``k`` at ``start + (k+1)·bin_s``: reads the link state, then takes the bin's requests.

    The run calls :meth:`sent` and :meth:`done` holding ``lock`` and with the request's time read inside it, so
    when a bin closes (under ``lock``, after its end) every request that was sent or ended in it is counted."""

    def __init__(self, bin_s: float, start: float, lock: threading.Lock, sampler: LinkSampler | None,
                 sink: Callable[[TimelineRow], None] | None = None) -> None:
        super().__init__(daemon=True, name="timeline")
        self.bin_s, self.t0, self.lock, self.sampler, self.sink = bin_s, start, lock, sampler, sink
        self.rows: list[TimelineRow] = []
        self._sent: dict[int, int] = {}
        self._done: dict[int, list[_Done]] = {}
        self._closed = 0  # bins closed so far
        self._halt = threading.Event()
        if sampler is not None:
            sampler.sample(0.0)  # the counters' baseline: the first bin's serving ES is what it carried in it

    def _bin(self, t_s: float) -> int:
        return max(int(t_s // self.bin_s), 0)

    def sent(self, t_s: float) -> None:
        """A measured request was sent at ``t_s`` (call holding ``lock``)."""
        k = self._bin(t_s)
        self._sent[k] = self._sent.get(k, 0) + 1

    def done(self, rec: _Done) -> None:
        """A measured request ended (call holding ``lock``)."""
        self._done.setdefault(self._bin(rec.done_s), []).append(rec)

    def _close(self, upto: int, end: float | None = None) -> None:
        """Close bins ``_closed .. upto-1`` with one read of the proxy (a read that fell behind, e.g. waiting on a
        proxy that stopped answering, costs one deadline, not one per bin); the last ends at ``end`` if given."""
        link = self.sampler.sample(time.monotonic() - self.t0) if self.sampler is not None else None
        for k in range(self._closed, upto):
            t1 = (k + 1) * self.bin_s if end is None or k < upto - 1 else min((k + 1) * self.bin_s, end)
            with self.lock:
                row = TimelineRow.of(k * self.bin_s, t1, self._sent.pop(k, 0), self._done.pop(k, []), link)
            self.rows.append(row)
            if self.sink is not None:
                self.sink(row)
        self._closed = max(self._closed, upto)

    def run(self) -> None:
        while not self._halt.wait(max(self.t0 + (self._closed + 1) * self.bin_s - time.monotonic(), 0.0)):
            self._close(max(int((time.monotonic() - self.t0) // self.bin_s), self._closed + 1))

    def finish(self) -> list[TimelineRow]:
        """Stop at the run's end: close the bins up to now (the last one ends now), and return every row."""
        self._halt.set()
        self.join()
        end = time.monotonic() - self.t0
        upto = max(math.ceil(end / self.bin_s), 1)
        if upto > self._closed:
            self._close(upto, end)
        if self.sampler is not None:
            self.sampler.close()
        return self.rows


# --- what results.json keeps, the printed table, the plot -------------------------------------------------
def _segments(rows: Sequence[TimelineRow], key: Callable[[TimelineRow], object], limit: int = 200) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for r in rows:
        v = key(r)
        if out and out[-1]["value"] == v:
            out[-1]["to_s"] = r.t1_s
        else:
            out.append({"from_s": r.t0_s, "to_s": r.t1_s, "value": v})
    return out[:limit]


def _range(values: Sequence[float | None]) -> dict[str, float] | None:
    vs = [v for v in values if v is not None]
    if not vs:
        return None
    named: dict[str, float] = {"first": vs[0], "last": vs[-1], "min": min(vs), "max": max(vs), "mean": float(np.mean(vs))}
    return {k: round(v, 4) for k, v in named.items()}


def timeline_summary(rows: Sequence[TimelineRow], bin_s: float, sampler: LinkSampler | None,
                     t0_unix: float | None = None) -> dict[str, object]:
    """The timeline in ``results.json``: the bin width, the run's start (``t0_unix``: Unix time of its 0 s, to line
    the bins up with a proxy's log or a scenario that started earlier), how the link state changed (segments of equal serving ES
    and of equal link SNR, at most 200 each), the ranges per bin, and every row (``rows``; also ``timeline.csv``)."""
    return {
        "bin_s": bin_s, "bins": len(rows), "file": "timeline.csv",
        "t0_unix": None if t0_unix is None else round(t0_unix, 3),
        "quality": "applied_snr_db: the SNR the proxy applied to each request's tensors (ChannelApplied; "
                   "no PSNR: a load run makes no ideal-link reference image); error_rate",
        "link_sampled": sampler is not None and sampler.enabled and any(r.sampled_s is not None for r in rows),
        "link_error": (sampler.error or None) if sampler is not None else None,
        "serving": [{"from_s": s["from_s"], "to_s": s["to_s"], "es": s["value"]}
                    for s in _segments(rows, lambda r: r.serving)],
        "link_snr_db_steps": [{"from_s": s["from_s"], "to_s": s["to_s"], "snr_db": s["value"]}
                              for s in _segments(rows, lambda r: r.link_snr_db)],
        "link_snr_db": _range([r.link_snr_db for r in rows]),
        "applied_snr_db": _range([r.applied_snr_db for r in rows]),
        "finished_per_s": _range([r.finished / (r.t1_s - r.t0_s) if r.t1_s > r.t0_s else None for r in rows]),
        "latency_p99_s": _range([r.latency_p99_s for r in rows]),
        "rows": [asdict(r) for r in rows],
    }


def format_timeline(rows: Sequence[TimelineRow], max_rows: int = 24) -> str:
    """The compact table printed at the end (every ``k``-th bin when there are more than ``max_rows``)."""
    if not rows:
        return "timeline: no bins"
    step = max(1, math.ceil(len(rows) / max_rows))

    def f(v: float | None, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    head = f"{'t (s)':>11} {'sent':>5} {'ok':>5} {'fail':>4} {'p50 s':>7} {'p99 s':>7} {'SNR*':>6} {'air s':>7}  " \
           f"{'ES':<8} {'link':<14} {'link SNR':>8} {'scen s':>7}"
    lines = [f"timeline ({len(rows)} bins of {rows[0].t1_s - rows[0].t0_s:g} s"
             + (f", one in {step} shown" if step > 1 else "") + "; SNR* = applied to the bin's requests; scen s = "
             "where the proxy's scenario was at the bin's end):", head]
    for r in rows[::step]:
        lines.append(f"{r.t0_s:5.1f}-{r.t1_s:<5.1f} {r.sent:>5d} {r.finished:>5d} {r.failed:>4d} "
                     f"{f(r.latency_p50_s, '7.3f'):>7} {f(r.latency_p99_s, '7.3f'):>7} {f(r.applied_snr_db, '6.1f'):>6} "
                     f"{f(r.air_s, '7.4f'):>7}  {r.serving or '-':<8} {(r.link_profile or '-')[:14]:<14} "
                     f"{f(r.link_snr_db, '8.1f'):>8} {f(r.scenario_s, '7.1f'):>7}")
    return "\n".join(lines)


def plot_timeline(path: Path, rows: Sequence[TimelineRow]) -> Path:
    """``timeline.png``: requests per bin, latency p50/p99, the link's SNR (as read and as applied) with the
    serving ES, and (with a cell) air time, over the run; raises ImportError without matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_air = any(r.air_s is not None for r in rows)  # a cell on the way (else no air time was measured)
    fig, axes = plt.subplots(4 if with_air else 3, 1, figsize=(10, 8.5 if with_air else 6.8), sharex=True)
    mid = np.array([(r.t0_s + r.t1_s) / 2 for r in rows])
    width = np.array([r.t1_s - r.t0_s for r in rows])

    def col(name: str) -> np.ndarray:
        return np.array([np.nan if (v := getattr(r, name)) is None else v for r in rows], dtype=float)

    ax = axes[0]
    ax.bar(mid, col("finished"), width=width * 0.9, color="#4c72b0", label="finished")
    ax.bar(mid, col("failed"), width=width * 0.9, bottom=col("finished"), color="#c44e52", label="failed")
    ax.step(mid, col("sent"), where="mid", color="#333333", lw=1, label="sent")
    ax.set(ylabel="requests / bin", title="the run over time")
    ax.legend(fontsize=8, loc="upper right")
    ax = axes[1]
    ax.plot(mid, col("latency_p50_s"), "o-", ms=3, color="#4c72b0", label="p50")
    ax.plot(mid, col("latency_p99_s"), "o-", ms=3, color="#c44e52", label="p99")
    ax.set(ylabel="latency (s)")
    ax.legend(fontsize=8, loc="upper right")
    ax = axes[2]
    ax.step(mid, col("link_snr_db"), where="mid", color="#55a868", label="link SNR (proxy, downlink)")
    ax.plot(mid, col("applied_snr_db"), "x", ms=5, color="#333333", label="applied to requests")
    last = None
    for r, x in zip(rows, mid):
        if r.serving and r.serving != last:
            ax.axvline(r.t0_s, ls="--", lw=0.8, color="#8172b3")
            ax.text(r.t0_s, 1.0, f" {r.serving}", transform=ax.get_xaxis_transform(), fontsize=8, va="top",
                    color="#8172b3")
            last = r.serving
    ax.set(ylabel="SNR (dB)")
    ax.legend(fontsize=8, loc="lower left")
    if with_air:
        ax = axes[3]
        ax.bar(mid, np.nan_to_num(col("air_s")), width=width * 0.9, color="#dd8452")
        ax.set(ylabel="air s / bin")
    ax.set(xlabel="time since start (s)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
