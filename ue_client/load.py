"""``meg-ue load``: N virtual UEs in one process (one shared model) against an ES, usually through the proxy.

Each virtual UE is its own :class:`~ue_client.edge_client.EdgeClient` with its own UE id (``{ue_id}{i}``),
so each is its own link on the channel proxy and per-UE channel profiles apply. Two ways to drive it:

* **closed loop** (default): every UE sends its next request when its last one ends;
* **open loop** (``--rate R``): requests are due at Poisson arrival times (rate ``R``/s over all UEs); a UE
  takes the next due request and latency counts from the *intended* send time, so a server that falls
  behind shows it (no coordinated omission — the habit of wrk2, k6's arrival-rate executors and ghz ``--rps``).

It writes ``results.json`` (throughput; latency p50/p90/p95/p99/p99.9/max as k6's trend stats and ghz's
report give them; errors by gRPC status; the same per protocol; symbols and bytes per direction from the
proxy's ``GetStats`` before/after and from the UEs' own accounting; through a proxy with cells, the
``breakdown`` of every round trip into queueing, air, delay and compute from the proxy's ``meg-airtime``
trailers, and with several ``--es`` each cell's share; the timeline's summary), ``requests.csv`` (one row per
request, written as each ends), ``timeline.csv`` (one row per time bin, written as each closes: requests,
latency, the SNR applied, air time and the link state the proxy reports, :mod:`ue_client.load_timeline`) and
plots (``latency.png``: histogram and CDF; ``timeline.png``: the bins over the run; ``breakdown.png``: the
stacked means, with cells).

The virtual UEs are threads (the UE's walk is synchronous); they share one gRPC connection per ES
(:meth:`EdgeClient.for_ue`: HTTP/2 multiplexes their calls, each still names its UE), so N UEs cost N small
thread stacks, not N connections.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TextIO

import grpc
import numpy as np

from shared.rpc.security import TlsFiles
from shared.wire.limits import MAX_SEED
from ue_client.csv_log import CsvLog
from ue_client.load_timeline import (
    MAX_BINS,
    MIN_BIN_S,
    LinkSampler,
    TimelineRecorder,
    TimelineRow,
    default_bin_s,
    plot_timeline,
    timeline_summary,
)

#: Prompts the virtual UEs cycle through (meg-tiny's vocabulary of shapes and colours).
DEFAULT_PROMPTS = (
    "a red circle on a white background", "a blue square", "a green triangle", "two yellow stars",
    "a purple ring", "an orange cross on black", "a small blue circle and a big red square", "a white diamond",
)
PERCENTILES = (50, 90, 95, 99, 99.9)
#: How UEs are attached to the cells of ``--es``.
ATTACH = ("round-robin", "least-loaded")
#: The parts of a request's latency the breakdown reports.
BREAKDOWN = ("queue_s", "air_s", "delay_s", "compute_s")


@dataclass(frozen=True)
class LoadConfig:
    via: str
    ues: int
    requests: int | None = None  # measured requests (after warmup); or
    duration_s: float | None = None  # send for this long (after warmup)
    rate: float | None = None  # open loop: Poisson arrivals per second (None = closed loop)
    protocols: tuple[tuple[str, float], ...] = (("FULL-ES", 1.0),)
    task: str = "txt2img"
    steps: int = 0
    fc: float = 0.0
    guidance: float = 0.0
    strength: float = 0.0
    warmup: int = 0  # requests sent first and left out of the statistics
    seed: int = 0
    timeout_s: float = 120.0
    ue_id: str = "ue"  # UE i is f"{ue_id}{i}"
    es: tuple[str, ...] = ()  # the ESs (cells) to attach UEs to (empty: the proxy's first / --via's ES)
    attach: str = "round-robin"  # round-robin: UE i on es[i % n]; least-loaded: each request to the ES with
    #                              the fewest of this run's requests in flight
    prompts: tuple[str, ...] = DEFAULT_PROMPTS
    control_tls: TlsFiles | None = field(default=None, repr=False)  # for the proxy's counters: mTLS towards a secured proxy
    admin_token: str | None = field(default=None, repr=False)  # and its admin token (GetStats); never written out
    timeline_s: float | None = None  # the timeline's bin width (None: :func:`ue_client.load_timeline.default_bin_s`)

    def __post_init__(self) -> None:
        if self.ues < 1:
            raise ValueError(f"--ues must be at least 1, got {self.ues}")
        if (self.requests is None) == (self.duration_s is None):
            raise ValueError("give exactly one of --requests and --duration")
        if self.requests is not None and self.requests < 1:
            raise ValueError(f"--requests must be at least 1, got {self.requests}")
        if self.duration_s is not None and not self.duration_s > 0:
            raise ValueError(f"--duration must be positive, got {self.duration_s}")
        if self.rate is not None and not self.rate > 0:
            raise ValueError(f"--rate must be positive, got {self.rate}")
        if self.attach not in ATTACH:
            raise ValueError(f"--attach must be one of {', '.join(ATTACH)}, got {self.attach!r}")
        if len(set(self.es)) != len(self.es):
            raise ValueError(f"--es names each edge server at most once, got {','.join(self.es)}")
        if not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"--seed must be a whole number from 0 to 2^64-1, got {self.seed}")
        if self.warmup < 0:
            raise ValueError(f"--warmup must be >= 0, got {self.warmup}")
        if self.timeline_s is not None and not (math.isfinite(self.timeline_s) and self.timeline_s >= MIN_BIN_S):
            raise ValueError(f"--timeline-s must be at least {MIN_BIN_S} s, got {self.timeline_s}")
        if (self.timeline_s is not None and self.duration_s is not None
                and self.duration_s / self.timeline_s > MAX_BINS):
            raise ValueError(f"--timeline-s {self.timeline_s} makes more than {MAX_BINS} bins of --duration "
                             f"{self.duration_s}: give a wider bin")
        if not self.protocols or any(not (math.isfinite(w) and w > 0) for _, w in self.protocols):
            raise ValueError("every protocol weight must be a positive finite number")

    def public(self) -> dict[str, object]:
        """The settings as ``results.json`` and ``--json`` show them: no token, no key or certificate path
        (only whether TLS and an admin token were used)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("control_tls", "admin_token")}
        out["control_tls"] = bool(self.control_tls and self.control_tls.enabled)
        out["admin_token_given"] = self.admin_token is not None
        return out

    @property
    def bin_s(self) -> float:
        """The timeline's bin width: ``--timeline-s``, else 1 s (wider for a ``--duration`` over 600 s)."""
        return self.timeline_s if self.timeline_s is not None else default_bin_s(self.duration_s)

    def request_seed(self, k: int) -> int:
        """Request ``k``'s seed: ``seed + k``, wrapped explicitly modulo 2^64 (the wire's uint64)."""
        return (self.seed + k) % (MAX_SEED + 1)


def parse_protocols(text: str, known: Any) -> tuple[tuple[str, float], ...]:
    """``"CIAG:3,FULL-ES"`` -> ``(("CIAG", 3.0), ("FULL-ES", 1.0))``; raises ValueError naming the bad item."""
    out = []
    for item in text.split(","):
        name, _, weight = item.strip().partition(":")
        name = name.upper()
        if name not in known:
            raise ValueError(f"unknown protocol {name!r} in --protocol; known: {', '.join(known)}")
        try:
            w = float(weight) if weight else 1.0
        except ValueError:
            raise ValueError(f"protocol weight {weight!r} of {name} is not a number") from None
        if not (math.isfinite(w) and w > 0):
            raise ValueError(f"protocol weight of {name} must be a positive finite number, got {weight}")
        out.append((name, w))
    return tuple(out)


@dataclass
class RequestRecord:
    """One request. Times are seconds since the run started; ``latency_s`` counts from ``intended_s``."""

    index: int
    ue: str
    protocol: str
    warmup: bool
    intended_s: float = 0.0
    sent_s: float = 0.0
    done_s: float = 0.0
    latency_s: float = 0.0
    status: str = "OK"
    error: str = ""
    es_seconds: float = 0.0
    uplink_symbols: int = 0
    downlink_symbols: int = 0
    uplink_bytes: int = 0  # tensor payload + prompt text
    downlink_bytes: int = 0
    es: str = ""  # the ES (cell) the request went to ("": the proxy's first)
    # the channel the proxy applied (ChannelApplied of the request's tensors; None: ideal, none sent, or no proxy)
    uplink_snr_db: float | None = None
    downlink_snr_db: float | None = None
    channel: str = ""  # the downlink's profile name (or model; the uplink's if no tensor came down)
    # where the time went (both directions, every RPC; -1: no cell on the way, so no air time was measured)
    queue_s: float = -1.0  # waiting at the proxy for the cell's first granted slot
    air_s: float = -1.0  # on the air
    delay_s: float = -1.0  # the links' one-way delay and jitter
    compute_s: float = -1.0  # the rest of the round trip: (done - sent) - queue - air - delay (ES compute,
    #                          its engine queue, the UE's own stages, the proxy's work)

    @property
    def timed(self) -> bool:
        return self.air_s >= 0


class _Plan:
    """The shared schedule: which request is next and when it is due (thread-safe)."""

    def __init__(self, cfg: LoadConfig) -> None:
        self.cfg = cfg
        self.start = time.monotonic()
        self.start_unix = time.time()  # the same instant on the wall clock
        self.stop = threading.Event()
        self._next = 0
        self._lock = threading.Lock()
        self._rng = random.Random(cfg.seed)
        self._last_arrival = 0.0
        self._measure_start: float | None = None  # the first measured request's intended time

    def take(self) -> tuple[int, float] | None:
        """The next request ``(index, intended send time since start)``, or None when the run is over."""
        cfg = self.cfg
        with self._lock:
            k = self._next
            if self.stop.is_set() or (cfg.requests is not None and k >= cfg.warmup + cfg.requests):
                return None
            if cfg.rate is not None:  # open loop: the k-th Poisson arrival
                intended = self._last_arrival + self._rng.expovariate(cfg.rate)
            else:
                intended = time.monotonic() - self.start
            if k >= cfg.warmup and cfg.duration_s is not None:
                if self._measure_start is None:
                    self._measure_start = intended
                if intended > self._measure_start + cfg.duration_s:
                    return None
            self._last_arrival = intended
            self._next += 1
            return k, intended

    def protocol(self, k: int) -> str:
        names = [p for p, _ in self.cfg.protocols]
        weights = [w for _, w in self.cfg.protocols]
        return random.Random(self.cfg.seed * 1_000_003 + k).choices(names, weights)[0]


def _stats(values: list[float], digits: int = 4) -> dict[str, float]:
    if not values:
        return {}
    a = np.asarray(values)
    out = {f"p{p:g}": float(np.percentile(a, p)) for p in PERCENTILES}
    out.update(min=float(a.min()), mean=float(a.mean()), max=float(a.max()))
    return {k: round(v, digits) for k, v in out.items()}


def breakdown(records: list[RequestRecord]) -> dict[str, dict[str, float]] | None:
    """Percentiles of each part of the OK requests' round trips (:data:`BREAKDOWN`), or None when no request
    crossed a cell (no air time to split off)."""
    timed = [r for r in records if r.status == "OK" and r.timed]
    if not timed:
        return None
    return {part: _stats([getattr(r, part) for r in timed], digits=6) for part in BREAKDOWN}


def cell_shares(records: list[RequestRecord]) -> dict[str, dict[str, object]] | None:
    """Per ES (cell) the requests attached there: how many, their share, how many UEs, OK, latency and
    air-time percentiles. None when every request went to the proxy's first ES unnamed."""
    if not records or all(not r.es for r in records):
        return None
    out: dict[str, dict[str, object]] = {}
    for es in sorted({r.es for r in records}):
        rs = [r for r in records if r.es == es]
        ok = [r for r in rs if r.status == "OK"]
        out[es] = {"requests": len(rs), "share": round(len(rs) / len(records), 4), "ues": len({r.ue for r in rs}),
                   "ok": len(ok), "latency_s": _stats([r.latency_s for r in ok]),
                   "air_s": _stats([r.air_s for r in ok if r.timed], digits=6)}
    return out


def summarize(records: list[RequestRecord], cfg: LoadConfig, wall_s: float) -> dict[str, object]:
    """The measured (non-warmup) requests' throughput, latency percentiles and errors, overall and per protocol."""
    measured = [r for r in records if not r.warmup]

    def block(rs: list[RequestRecord]) -> dict[str, object]:
        ok = [r for r in rs if r.status == "OK"]
        window = (max(r.done_s for r in rs) - min(r.intended_s for r in rs)) if rs else 0.0
        return {
            "requests": len(rs), "ok": len(ok), "errors": dict(Counter(r.status for r in rs if r.status != "OK")),
            "window_s": round(window, 3),
            "throughput_rps": round(len(ok) / window, 4) if window > 0 else 0.0,
            "latency_s": _stats([r.latency_s for r in ok]),
            "es_seconds": _stats([r.es_seconds for r in ok]),
            "error_latency_s": _stats([r.latency_s for r in rs if r.status != "OK"]),
        }

    overall = block(measured)
    overall["breakdown"] = breakdown(measured)
    overall["cells"] = cell_shares(measured)
    per = {p: block([r for r in measured if r.protocol == p]) for p, _ in cfg.protocols}
    ue_acc = {
        "uplink": {"symbols": sum(r.uplink_symbols for r in measured), "bytes": sum(r.uplink_bytes for r in measured)},
        "downlink": {"symbols": sum(r.downlink_symbols for r in measured),
                     "bytes": sum(r.downlink_bytes for r in measured)},
    }
    return {"config": {**cfg.public(), "mode": "open" if cfg.rate else "closed"}, "wall_s": round(wall_s, 3),
            "warmup_requests": len(records) - len(measured), **overall, "per_protocol": per,
            "ue_accounting": ue_acc}


# --- the proxy's counters ------------------------------------------------------------------------------
def proxy_stats(via: str, ue_prefix: str, timeout: float = 10.0, tls: TlsFiles | None = None,
                token: str | None = None) -> dict[str, dict[str, int]] | None:
    """Sum of the proxy's ``GetStats`` counters per direction over the links of UEs named ``{ue_prefix}*``;
    None when ``via`` is not a channel proxy (an ES directly) or refuses (a secured proxy without the admin
    ``token``)."""
    from shared.rpc.control import ControlClient, stats_by_direction

    def ours(link: str) -> bool:
        ue = link.partition("->")[0]
        return ue.startswith(ue_prefix) and ue[len(ue_prefix):].isdigit()

    with ControlClient(via, tls, token, timeout_s=timeout) as control:
        try:
            reply = control.stats()
        except grpc.RpcError:
            return None
    return stats_by_direction(reply, ours)


def _delta(after: dict[str, dict[str, int]], before: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    return {d: {k: v - before[d][k] for k, v in after[d].items()} for d in after}


# --- the run ---------------------------------------------------------------------------------------------
#: ``connect(ue_id)`` -> an EdgeClient; with ``LoadConfig.es``: ``connect(ue_id, es_name)``.
Connect = Callable[..., Any]


def run_load(parts: Any, cfg: LoadConfig, connect: Connect, image_in: Any = None,
             progress: TextIO | None = None, on_record: Callable[[RequestRecord], None] | None = None,
             on_bin: Callable[[TimelineRow], None] | None = None,
             ) -> tuple[dict[str, object], list[RequestRecord]]:
    """Run the load; returns ``(summary, records)``. ``connect(ue_id)`` makes one UE's EdgeClient;
    ``on_record(record)`` sees each request as it ends (:class:`RequestLog` streams them to a CSV), ``on_bin(row)``
    each timeline bin as it closes (:class:`ue_client.load_timeline.TimelineLog`). Ctrl-C stops sending and
    returns what was done (``summary["interrupted"]``)."""
    from shared.protocol.params import Params
    from ue_client.session import generate

    interrupted = False
    before = proxy_stats(cfg.via, cfg.ue_id, tls=cfg.control_tls, token=cfg.admin_token)
    attach = _Attach(cfg, connect)
    try:
        sampler = LinkSampler(cfg.via, [f"{cfg.ue_id}{i}" for i in range(cfg.ues)], cfg.control_tls, cfg.admin_token,
                              follows_handovers=not cfg.es)
    except BaseException:
        attach.close()
        raise
    plan = _Plan(cfg)
    timeline = TimelineRecorder(cfg.bin_s, plan.start, threading.Lock(), sampler, on_bin)
    records: list[RequestRecord] = []
    lock = timeline.lock

    def worker(i: int) -> None:
        while (item := plan.take()) is not None:
            k, intended = item
            wait = plan.start + intended - time.monotonic()
            if wait > 0 and plan.stop.wait(wait):
                return
            protocol = plan.protocol(k)
            rec = RequestRecord(k, f"{cfg.ue_id}{i}", protocol, k < cfg.warmup, intended_s=intended)
            with lock:  # the time read under the lock: a timeline bin that closes after it counts it
                rec.sent_s = time.monotonic() - plan.start
                if not rec.warmup:
                    timeline.sent(rec.sent_s)
            params = Params(seed=cfg.request_seed(k), steps=cfg.steps, guidance=cfg.guidance, fc=cfg.fc, strength=cfg.strength)
            es, client = attach.take(i)
            rec.es = es
            try:
                result = generate(parts, client, cfg.prompts[k % len(cfg.prompts)], protocol=protocol, task=cfg.task,
                                  params=params, image_in=image_in)
                rec.es_seconds = result.es_seconds
                rec.uplink_symbols, rec.downlink_symbols = result.uplink.symbols, result.downlink.symbols
                rec.uplink_bytes = result.uplink.payload_bytes + result.uplink.text_bytes
                rec.downlink_bytes = result.downlink.payload_bytes + result.downlink.text_bytes
                _split(rec, result)
                rec.uplink_snr_db, rec.downlink_snr_db = result.uplink.snr_db, result.downlink.snr_db
                rec.channel = result.downlink.channel or result.uplink.channel or ""
            except grpc.RpcError as exc:
                rec.status, rec.error = exc.code().name, str(exc.details())
            except Exception as exc:  # noqa: BLE001  (a client-side failure is a result too)
                rec.status, rec.error = "CLIENT_ERROR", f"{type(exc).__name__}: {exc}"
            finally:
                attach.release(es)
            with lock:
                rec.done_s = time.monotonic() - plan.start
                rec.latency_s = rec.done_s - rec.intended_s
                if rec.timed:
                    rec.compute_s = max(rec.done_s - rec.sent_s - rec.queue_s - rec.air_s - rec.delay_s, 0.0)
                records.append(rec)
                if not rec.warmup:
                    timeline.done(rec)
                if on_record is not None:
                    on_record(rec)

    crashed: list[BaseException] = []

    def guarded(i: int) -> None:
        try:
            worker(i)
        except BaseException as exc:  # noqa: BLE001  (re-raised in the main thread: a run must not end quietly)
            crashed.append(exc)
            plan.stop.set()

    ticker = _Ticker(records, lock, plan, cfg, progress) if progress is not None else None
    threads = [threading.Thread(target=guarded, args=(i,), name=f"ue{i}", daemon=True) for i in range(cfg.ues)]
    try:
        timeline.start()
        if ticker:
            ticker.start()
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(0.5)
    except KeyboardInterrupt:
        interrupted = True
        plan.stop.set()
        for t in threads:
            t.join(cfg.timeout_s)
    finally:
        if ticker:
            ticker.finish()
        rows = timeline.finish()
        attach.close()
    if crashed:
        raise crashed[0]
    wall = time.monotonic() - plan.start
    records.sort(key=lambda r: r.index)
    summary = summarize(records, cfg, wall)
    summary["interrupted"] = interrupted
    summary["timeline"] = timeline_summary(rows, cfg.bin_s, sampler, plan.start_unix)
    after = proxy_stats(cfg.via, cfg.ue_id, tls=cfg.control_tls, token=cfg.admin_token)
    summary["proxy"] = _delta(after, before) if before is not None and after is not None else None
    return summary, records


def _split(rec: RequestRecord, result: Any) -> None:
    """The request's queueing, air and delay from its generation's accounts (both directions, every RPC)."""
    up, down = result.uplink, result.downlink
    if up.air_s is None and down.air_s is None:
        return
    rec.queue_s = (up.queue_s or 0.0) + (down.queue_s or 0.0)
    rec.air_s = (up.air_s or 0.0) + (down.air_s or 0.0)
    rec.delay_s = (up.delay_s or 0.0) + (down.delay_s or 0.0)


class _Attach:
    """Which ES (cell) each UE's next request goes to, and the clients (one per UE and ES it used)."""

    def __init__(self, cfg: LoadConfig, connect: Connect) -> None:
        self.cfg, self.connect = cfg, connect
        self._lock = threading.Lock()
        self._clients: dict[tuple[int, str], Any] = {}
        self._in_flight = dict.fromkeys(cfg.es, 0)
        try:  # every client made before the run (a connection's set-up is no request's latency; errors show at once)
            for i in range(cfg.ues):
                for es in (cfg.es if cfg.attach == "least-loaded" else [cfg.es[i % len(cfg.es)]]) if cfg.es else [""]:
                    self._client(i, es)
        except BaseException:
            self.close()
            raise

    def _client(self, i: int, es: str) -> Any:
        key = (i, es)
        if key not in self._clients:
            ue = f"{self.cfg.ue_id}{i}"
            self._clients[key] = self.connect(ue, es) if es else self.connect(ue)
        return self._clients[key]

    def take(self, i: int) -> tuple[str, Any]:
        """UE ``i``'s ES for its next request and the client for it (counted in flight until :meth:`release`)."""
        es_list = self.cfg.es
        with self._lock:
            if not es_list:
                es = ""
            elif self.cfg.attach == "round-robin":
                es = es_list[i % len(es_list)]
            else:
                es = min(es_list, key=lambda n: (self._in_flight[n], es_list.index(n)))
            if es:
                self._in_flight[es] += 1
        try:
            return es, self._client(i, es)
        except BaseException:
            self.release(es)
            raise

    def release(self, es: str) -> None:
        if es:
            with self._lock:
                self._in_flight[es] -= 1

    def close(self) -> None:
        for c in self._clients.values():
            c.close()


class _Ticker(threading.Thread):
    """The live progress line: done, rps, p50/p99 so far, errors."""

    def __init__(self, records: list[RequestRecord], lock: threading.Lock, plan: _Plan, cfg: LoadConfig,
                 out: TextIO) -> None:
        super().__init__(daemon=True)
        self.records, self.lock, self.plan, self.cfg, self.out = records, lock, plan, cfg, out
        self.done = threading.Event()
        self.tty = out.isatty()

    def line(self) -> str:
        with self.lock:
            rs = list(self.records)
        t = time.monotonic() - self.plan.start
        ok = [r.latency_s for r in rs if r.status == "OK" and not r.warmup]
        errors = sum(r.status != "OK" for r in rs)
        total = "" if self.cfg.requests is None else f"/{self.cfg.requests + self.cfg.warmup}"
        lat = f"p50 {np.percentile(ok, 50):.2f}s p99 {np.percentile(ok, 99):.2f}s" if ok else "p50 - p99 -"
        return f"[{t:6.1f}s] done {len(rs)}{total}  {len(rs) / t if t > 0 else 0:.2f} req/s  {lat}  errors {errors}"

    def run(self) -> None:
        every = 1.0 if self.tty else 5.0
        while not self.done.wait(every):
            self.out.write(("\r" + self.line()) if self.tty else self.line() + "\n")
            self.out.flush()

    def finish(self) -> None:
        self.done.set()
        self.join(2)
        self.out.write(("\r" if self.tty else "") + self.line() + "\n")
        self.out.flush()


# --- files ----------------------------------------------------------------------------------------------
def prepare_out(out: Path, overwrite: bool) -> None:
    """Make ``out``; a folder that already holds files is refused unless ``overwrite`` (an earlier run's
    results are never replaced without a word)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"--out {out} is not empty (an earlier run's files?): give another folder or --overwrite")
    out.mkdir(parents=True, exist_ok=True)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` all or nothing: a temporary file beside it, flushed, then ``os.replace``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class RequestLog(CsvLog[RequestRecord]):
    """``requests.csv``, one row per request as it ends (flushed at once: a crash or Ctrl-C keeps every row
    written so far). Thread-safe; use as a context manager."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, RequestRecord)


def write_outputs(out: Path, summary: dict[str, object], records: list[RequestRecord]) -> list[Path]:
    """``results.json`` (atomically) and the plots ``latency.png``, ``timeline.png`` under ``out`` (the rows
    are already in ``requests.csv``: :class:`RequestLog`; the bins in ``timeline.csv``)."""
    paths = [out / "results.json"]
    write_atomic(paths[0], json.dumps(summary, indent=2) + "\n")
    for name in ("requests.csv", "timeline.csv"):
        if (out / name).exists():
            paths.append(out / name)
    timeline = summary.get("timeline")
    rows = [TimelineRow(**r) for r in timeline["rows"]] if isinstance(timeline, dict) else []
    try:
        paths += plot(out, records, rows)
    except ImportError:  # matplotlib is the `plots` extra
        print("meg-ue load: no plots (matplotlib is not installed: pip install 'meg[plots]')", file=sys.stderr)
    return paths


def plot(out: Path, records: list[RequestRecord], rows: list[TimelineRow] | None = None) -> list[Path]:
    """``latency.png``, ``timeline.png`` (from the timeline's ``rows``) and, with cells, ``breakdown.png``;
    raises ImportError without matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [r for r in records if not r.warmup]
    ok = sorted(r.latency_s for r in measured if r.status == "OK")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    if ok:
        ax1.hist(ok, bins=min(50, max(5, len(ok) // 2)), color="#4c72b0")
        ax2.plot(ok, np.arange(1, len(ok) + 1) / len(ok), color="#4c72b0")
        for p in (50, 99):
            v = float(np.percentile(ok, p))
            ax2.axvline(v, ls="--", lw=0.8, color="#c44e52")
            ax2.text(v, 0.05 + 0.1 * (p == 99), f" p{p} {v:.2f}s", fontsize=8, color="#c44e52")
    ax1.set(xlabel="latency (s)", ylabel="requests", title="latency histogram (OK requests)")
    ax2.set(xlabel="latency (s)", ylabel="fraction ≤", title="latency CDF", ylim=(0, 1.02))
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=110)
    plt.close(fig)

    paths = [out / "latency.png"]
    if rows:
        paths.append(plot_timeline(out / "timeline.png", rows))
    timed = [r for r in measured if r.status == "OK" and r.timed]
    if timed:
        paths.append(plot_breakdown(out / "breakdown.png", timed))
    return paths


def plot_breakdown(path: Path, records: list[RequestRecord]) -> Path:
    """``breakdown.png``: per protocol (and per cell, with several), the mean round trip stacked as
    queueing, air, delay and compute (the means add up to the mean of ``done - sent``)."""
    import matplotlib.pyplot as plt

    groups: dict[str, list[RequestRecord]] = {}
    for r in records:
        groups.setdefault(r.protocol + (f"\n{r.es}" if r.es else ""), []).append(r)
    names = sorted(groups)
    colours = {"queue_s": "#dd8452", "air_s": "#4c72b0", "delay_s": "#8172b3", "compute_s": "#55a868"}
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(names) + 2), 3.8))
    bottom = np.zeros(len(names))
    for part in BREAKDOWN:
        means = np.array([np.mean([getattr(r, part) for r in groups[n]]) for n in names])
        ax.bar(names, means, bottom=bottom, color=colours[part], label=part.removesuffix("_s"))
        bottom += means
    for x, total, n in zip(range(len(names)), bottom, names):
        ax.text(x, total, f"{total:.3f}s\n{len(groups[n])} req", ha="center", va="bottom", fontsize=7)
    ax.set(ylabel="mean seconds per request", title="where the time goes (OK requests)")
    ax.set_ylim(0, float(bottom.max()) * 1.25 or 1.0)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def format_summary(summary: dict[str, Any]) -> str:
    lat = summary["latency_s"] or {}
    lines = [
        (f"{summary['requests']} requests ({summary['ok']} OK) in {summary['window_s']:.1f}s: "
         f"{summary['throughput_rps']:.2f} req/s"),
        "latency " + "  ".join(f"{k} {v:.3f}s" for k, v in lat.items() if k != "min"),
    ]
    if summary["errors"]:
        lines.append("errors  " + ", ".join(f"{k} {v}" for k, v in summary["errors"].items()))
    for p, s in summary["per_protocol"].items():
        pl = s["latency_s"] or {}
        lines.append(f"  {p:8s} {s['ok']:>5d}/{s['requests']:<5d} {s['throughput_rps']:.2f} req/s  "
                     f"p50 {pl.get('p50', float('nan')):.3f}s p99 {pl.get('p99', float('nan')):.3f}s")
    parts = summary.get("breakdown")
    if parts:
        lines.append("  where the time goes (p50 / p99): " + "  ".join(
            f"{k.removesuffix('_s')} {v['p50'] * 1e3:.1f} / {v['p99'] * 1e3:.1f} ms" for k, v in parts.items()))
    for es, c in (summary.get("cells") or {}).items():
        lat = c["latency_s"] or {}
        lines.append(f"  cell {es:10s} {c['requests']:>5d} requests ({c['share'] * 100:.0f} %), {c['ues']} UEs, "
                     f"p50 {lat.get('p50', float('nan')):.3f}s")
    proxy = summary.get("proxy")
    if proxy:
        for d, c in proxy.items():
            lines.append(f"  proxy {d:8s} {c['transmissions']:>7,d} tx {c['symbols']:>12,d} symbols "
                         f"{c['message_bytes']:>12,d} B")
    else:
        lines.append("  (no proxy stats: --via is not a channel proxy)")
    return "\n".join(lines)
