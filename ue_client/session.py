"""The UE side of a generation: walk the protocol, call the ES(s) for their segments (a multi-ES fan-out
concurrently), account every transmission per link and in total."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from typing import Any

import grpc
import torch

from shared.model.ops import ModelOps, ModelParts
from shared.pb import air_pb2
from shared.protocol.params import Params
from shared.protocol.plan import plan
from shared.protocol.registry import get_protocol
from shared.protocol.runner import run_protocol
from shared.protocol.schedule import DEFAULT_STRENGTH, cooperative_schedule
from shared.protocol.serde import segment_request
from shared.protocol.stages import DIGITAL_KEYS, TEXT_KEYS, ProtocolError, Segment, seed_of
from shared.protocol.tiles import DEFAULT_HEAD, DEFAULT_SYNC, Share, default_halo
from shared.wire import air
from shared.wire.limits import MAX_SEED
from ue_client.edge_client import EdgeClient, GeometryMismatch, check_geometry  # noqa: F401  (re-exported)
from ue_client.pick import Candidate, Chooser
from ue_client.transport import EdgeFailure, fan_out


@dataclass
class LinkAccount:
    """What crossed one direction during a generation."""

    transmissions: int = 0
    symbols: int = 0  # real-valued symbols over the air
    payload_bytes: int = 0  # bytes of over-the-air tensor data
    text_bytes: int = 0  # lossless prompt text (UTF-8)
    digital_bytes: int = 0  # lossless digital payloads (DIGITAL_KEYS: a PNG image), sent as bits at the link's MCS
    snr_db: float | None = None  # the SNR the channel applied (None: ideal or direct link)
    channel: str | None = None  # channel profile (or model) applied (None: direct link, no proxy)
    energy: float = 0.0  # transmit energy the channel accounted (normalised units)
    # time on the air, summed over this direction's messages (None: no cell on the way, so no time was taken)
    air_s: float | None = None  # scheduled air time (first granted slot's start to last one's end)
    queue_s: float | None = None  # waiting at the proxy for the first granted slot
    delay_s: float | None = None  # the link's one-way delay and jitter, after the air
    slots: int = 0  # slots with resource elements granted
    resource_elements: int = 0  # complex REs granted (tensors and digital bits)
    cell: str | None = None  # the cell that carried it (the ES's name)

    def add_tensor(self, t: air_pb2.AirTensor) -> None:
        self.transmissions += 1
        self.symbols += air.symbols(t)
        self.payload_bytes += len(t.data)

    def timed(self, d: Mapping[str, float | int | str] | None) -> None:
        """Add one message's ``meg-airtime`` direction (:func:`ue_client.edge_client.airtime_of`)."""
        if not d:
            return
        self.air_s = (self.air_s or 0.0) + float(d["air_s"])
        self.queue_s = (self.queue_s or 0.0) + float(d["queue_s"])
        self.delay_s = (self.delay_s or 0.0) + float(d["delay_s"])
        self.slots += int(d["slots"])
        self.resource_elements += int(d["resource_elements"])
        self.cell = str(d["cell"])

    def saw(self, applied: air_pb2.ChannelApplied) -> None:
        self.channel = applied.profile or applied.model
        self.snr_db = applied.snr_db if math.isfinite(applied.snr_db) and applied.model != "ideal" else None
        self.energy += applied.energy


def _total(accounts: Mapping[str, LinkAccount]) -> LinkAccount:
    out = LinkAccount()
    for a in accounts.values():
        out.transmissions += a.transmissions
        out.symbols += a.symbols
        out.payload_bytes += a.payload_bytes
        out.text_bytes += a.text_bytes
        out.digital_bytes += a.digital_bytes
        out.energy += a.energy
        for key in ("air_s", "queue_s", "delay_s"):
            if getattr(a, key) is not None:
                setattr(out, key, (getattr(out, key) or 0.0) + getattr(a, key))
        out.slots += a.slots
        out.resource_elements += a.resource_elements
        out.cell = out.cell or a.cell
        out.channel = out.channel or a.channel
        out.snr_db = out.snr_db if out.snr_db is not None else a.snr_db
    return out


@dataclass
class MultiOptions:
    """How a multi-ES protocol runs (ignored by single-ES ones).

    ``pick``: a :data:`ue_client.pick.Chooser`, or ``"first"``/``"best"``/an ES number. ``halo``: latent
    columns of overlap per interior side of a cooperative window (``None``: ``max(1, h // 8)``; 0: naive
    tiling). ``broadcast``: count a seed that goes to every ES once in the totals (one broadcast
    transmission), else N unicasts; each link's own account always counts what crossed it. ``fallback``:
    when an ES of a cooperative protocol fails, run its single-ES fallback on the first ES that answered.
    """

    pick: Chooser | str | int = "first"
    halo: int | None = None
    broadcast: bool = False
    fallback: bool = False
    #: cooperative: fraction of the schedule every ES runs on the full latent first (None: DEFAULT_HEAD)
    head: float | None = None
    #: cooperative: DDIM steps per round; the UE fuses the windows between rounds (None: DEFAULT_SYNC; 0: never)
    sync: int | None = None


@dataclass
class GenerationResult:
    protocol: str
    task: str
    image: torch.Tensor = field(repr=False)  # [1, 3, H, W] in [0, 1]
    seconds: float
    es_seconds: float
    uplink: LinkAccount  # multi-ES: the totals
    downlink: LinkAccount
    sketch: torch.Tensor | None = field(default=None, repr=False)  # ESUC: the sketch as received
    es: dict[str, tuple[LinkAccount, LinkAccount]] | None = None  # multi-ES: (uplink, downlink) per ES link
    candidates: list[Candidate] = field(default_factory=list, repr=False)  # parallel: every ES's result
    picked: str | None = None  # parallel: which ES's candidate was taken
    failed: dict[str, str] = field(default_factory=dict)  # ES name -> what went wrong
    halo: int | None = None  # cooperative: the overlap used
    head: float | None = None  # cooperative: the shared head used (fraction of the schedule on the whole latent)
    sync: int | None = None  # cooperative: steps per round (0: no fusion)
    rounds: int | None = None  # cooperative: how many rounds ran (fusions on the UE: rounds - 1)
    broadcast: bool = False
    fallback_from: str | None = None  # the cooperative protocol that failed over to this one

    @property
    def es_requested(self) -> int:
        """Multi-ES: how many ESs the session asked (``--es``, default every upstream the proxy had)."""
        return len(self.es or {})

    @property
    def es_used(self) -> list[str]:
        """Multi-ES: the ESs whose work made the image (the session's, less those that failed)."""
        return [n for n in self.es or {} if n not in self.failed]

    @property
    def es_missing(self) -> list[str]:
        """Multi-ES: the session's ESs that gave nothing (why: :attr:`failed`)."""
        return [n for n in self.es or {} if n in self.failed]

    def summary(self) -> dict[str, object]:
        out: dict[str, object] = {
            "protocol": self.protocol, "task": self.task, "seconds": round(self.seconds, 4),
            "es_seconds": round(self.es_seconds, 4), "uplink": asdict(self.uplink), "downlink": asdict(self.downlink),
        }
        if self.es is not None:
            out["es"] = {name: {"uplink": asdict(u), "downlink": asdict(d)} for name, (u, d) in self.es.items()}
            out["totals"] = {"uplink": asdict(self.uplink), "downlink": asdict(self.downlink),
                             "uplink_counted_as": "broadcast" if self.broadcast else "unicast"}
            out["failed"] = dict(self.failed)
            out["es_requested"], out["es_used"], out["es_missing"] = self.es_requested, self.es_used, self.es_missing
            if self.candidates:
                out["picked"] = self.picked
                out["candidates"] = [{"es": c.es, "seconds": round(c.seconds, 4), "score": c.score} for c in self.candidates]
            if self.halo is not None:
                out["halo"] = self.halo
            if self.head is not None:
                out["head"] = self.head
            if self.sync is not None:
                out["sync"], out["rounds"] = self.sync, self.rounds
            if self.fallback_from:
                out["fallback_from"] = self.fallback_from
        return out


class _UEOps:
    """The UE's ops: the model's, plus ``pick`` (a person's or a policy's choice among candidates)."""

    def __init__(self, ops: ModelOps, choose: Chooser, arrivals: dict[int, tuple[str, float]],
                 chosen: list[Candidate], picked: list[str]) -> None:
        self.ops, self.choose, self.arrivals, self.chosen, self.picked = ops, choose, arrivals, chosen, picked

    def call(self, op: str, *inputs: object) -> tuple[object, ...]:
        if op != "pick":
            return self.ops.call(op, *inputs)
        values, shares = inputs
        assert isinstance(values, list) and isinstance(shares, list)
        key = "sketch" if values and values[0].shape[-1] != self.ops.parts.geometry.image_size else "image"
        cands = [Candidate(self.arrivals[sh.index][0], sh.index, key, v, self.arrivals[sh.index][1])
                 for v, sh in zip(values, shares)]
        i = self.choose(cands)
        self.chosen[:] = cands
        self.picked.append(cands[i].es)
        return (values[i],)


def generate(
    parts: ModelParts, client: EdgeClient | None, prompt: str, protocol: str = "CIAG", task: str = "txt2img",
    params: Params = Params(), image_in: torch.Tensor | None = None, *,
    clients: Mapping[str, EdgeClient] | None = None, options: MultiOptions | None = None,
) -> GenerationResult:
    """Run one generation with ``protocol``; the UE-side stages run on ``parts``, the ES's through ``client``
    (``None`` is fine for Full-UE, which never transmits), or for a multi-ES protocol through ``clients``
    (ES name -> client, in session order; default: ``client`` alone). Independent ES calls of a fan-out run
    concurrently.

    ``image_in``: ``[1, 3, H, W]`` in [0, 1] for img2img. Raises ``grpc.RpcError`` from the ES/proxy (single-ES),
    :class:`EdgeFailure` naming the ES (multi-ES: every parallel ES failed, or a cooperative one did).
    """
    from ue_client.pick import chooser

    opts = options or MultiOptions()
    spec, stages = get_protocol(protocol, task)
    if clients is None:
        clients = {} if client is None else {client.es_name or "es0": client}
    names = list(clients) if spec.multi_es else list(clients)[:1]
    if not spec.local and not names:
        raise RuntimeError(f"{spec.name} needs an edge server: give --via HOST:PORT")
    g = parts.geometry
    halo = (default_halo(g.latent_size) if opts.halo is None else opts.halo) if spec.cooperative else 0
    head = (DEFAULT_HEAD if opts.head is None else opts.head) if spec.cooperative else 0.0
    sync = (DEFAULT_SYNC if opts.sync is None else opts.sync) if spec.cooperative else 0
    share_list = ([Share(i, len(names), halo, head, sync).check(g.latent_size) for i in range(len(names))]
                  if spec.multi_es else [Share(0, 1)])
    rounds = 1
    if spec.cooperative:
        # every ES must run the same schedule: send the steps and strength explicitly (not each ES's default)
        params = replace(params, steps=params.steps or parts.meg.es_steps, strength=params.strength or DEFAULT_STRENGTH)
        try:
            rounds = len(cooperative_schedule(params.steps, params.strength, share_list[0], task == "img2img"))
        except ValueError as exc:
            raise ProtocolError(str(exc)) from None
    segments = plan(stages, task, rounds)  # type: ignore[arg-type]
    if any(seg.fan == "each" for seg in segments) and params.seed + len(names) - 1 > MAX_SEED:
        # a parallel fan-out gives ES i the seed seed + i (uint64 on the wire): refuse rather than wrap, so that
        # --seed S always means the seeds S, S+1, ... (and no ES drops out of the session)
        raise ValueError(f"--seed {params.seed}: {spec.name} gives each of its {len(names)} ESs the seed seed + i, "
                         f"which overflows 2^64-1; use a seed up to {MAX_SEED - len(names) + 1}")
    request_id = uuid.uuid4().hex[:12]
    accounts = {n: (LinkAccount(), LinkAccount()) for n in names}
    totals = (LinkAccount(), LinkAccount())
    started = time.perf_counter()
    timeout = max((c.timeout_s for c in clients.values()), default=600.0)
    deadline = time.monotonic() + timeout
    es_seconds = [0.0]
    arrivals: dict[int, tuple[str, float]] = {}
    failed: dict[str, str] = {}

    def call_one(segment: Segment, i: int, sent: dict[str, object], count_total: bool) -> dict[str, object]:
        name = names[i]
        up, down = accounts[name]
        share = share_list[i]
        prompt_text = str(sent["prompt"]) if "prompt" in sent else ""
        tensors = [air.to_air(k, v) for k, v in sent.items() if k not in TEXT_KEYS | DIGITAL_KEYS]
        digital = {k: v for k, v in sent.items() if k in DIGITAL_KEYS and isinstance(v, bytes)}
        for acc in (up, totals[0]) if count_total else (up,):
            for t in tensors:
                acc.add_tensor(t)
            acc.text_bytes += len(prompt_text.encode())
            acc.digital_bytes += sum(len(v) for v in digital.values())
        request = segment_request(spec.name, segment, task, prompt_text, tensors, request_id, params,
                                  seed_of(segment, params.seed, i), share, digital)
        response, airtime = clients[name].run_segment_timed(request, timeout=max(deadline - time.monotonic(), 0.001))
        es_seconds[0] += response.es_seconds
        if airtime is not None:  # time on the air per ES link; the totals sum the air every cell spent
            for direction, acc, total in (("uplink", up, totals[0]), ("downlink", down, totals[1])):
                acc.timed(airtime.get(direction))
                total.timed(airtime.get(direction))
        for applied in response.uplink_seen:
            up.saw(applied)
            totals[0].saw(applied)
        received: dict[str, object] = {}
        for t in response.tensors:
            for acc in (down, totals[1]):
                acc.add_tensor(t)
                if t.HasField("applied"):
                    acc.saw(t.applied)
            received[t.name] = air.from_air(t, g.shape_of(t.name, params.fc, share if segment.fan == "share" else None))
        for k, v in response.digital.items():  # lossless bytes; the UE's own op (decode_png) checks them
            for acc in (down, totals[1]):
                acc.digital_bytes += len(v)
            received[k] = bytes(v)
        if set(received) != set(segment.returns):
            raise RuntimeError(f"the ES {name} returned {sorted(received)}, expected {list(segment.returns)}")
        return received

    def remote(segment: Segment, sent: Sequence[dict[str, object]]) -> list[dict[str, object] | BaseException]:
        if segment.fan == "one":
            return [call_one(segment, 0, sent[0], True)]  # single-ES: errors propagate as they are
        same = all(all(s[k] is sent[0][k] for k in sent[0]) for s in sent)
        calls: dict[Any, Callable[[], object]] = {
            i: partial(call_one, segment, i, sent[i], not (opts.broadcast and same and i > 0)) for i in range(len(sent))
        }
        results: dict[Any, tuple[object, float]] = fan_out(calls)  # keyed by ES number
        out: list[dict[str, object] | BaseException] = []
        for i, (r, seconds) in results.items():
            if isinstance(r, grpc.RpcError):
                r = EdgeFailure(names[i], r.code().name, r.details())
            elif isinstance(r, BaseException) and not isinstance(r, EdgeFailure):
                r = EdgeFailure(names[i], type(r).__name__, str(r))
            if isinstance(r, EdgeFailure):
                failed[names[i]] = str(r)
            else:
                arrivals[i] = (names[i], seconds)
            out.append(r)  # type: ignore[arg-type]
        return out

    workspace: dict[str, object] = {"prompt": prompt}
    if image_in is not None:
        workspace["image_in"] = image_in
    choose = opts.pick if callable(opts.pick) else chooser(opts.pick)
    chosen: list[Candidate] = []
    picked: list[str] = []
    ops = _UEOps(ModelOps(parts, params, deadline), choose, arrivals, chosen, picked)
    try:
        run_protocol(segments, workspace, ops, remote, share_list)
    except EdgeFailure:
        if not (spec.cooperative and opts.fallback and spec.fallback):
            raise
        alive = [n for n in names if n not in failed]
        if not alive:
            raise
        result = generate(parts, clients[alive[0]], prompt, spec.fallback, task, params, image_in)
        result.fallback_from, result.failed = spec.name, dict(failed)
        result.es = {n: accounts[n] for n in names}
        result.es.setdefault(alive[0], (LinkAccount(), LinkAccount()))
        fu, fd = result.es[alive[0]]
        for a, b in ((fu, result.uplink), (fd, result.downlink)):
            merged = _total({"a": a, "b": b})
            a.__dict__.update(merged.__dict__)
        result.uplink = _total({n: u for n, (u, _) in result.es.items()})
        result.downlink = _total({n: d for n, (_, d) in result.es.items()})
        return result
    image = workspace["image"]
    assert isinstance(image, torch.Tensor)
    sketch = workspace.get("sketch")
    return GenerationResult(
        spec.name, task, image, time.perf_counter() - started, es_seconds[0], totals[0], totals[1],
        sketch if isinstance(sketch, torch.Tensor) else None,
        es=accounts if spec.multi_es else None, candidates=chosen, picked=picked[0] if picked else None,
        failed=failed, halo=halo if spec.cooperative else None, head=head if spec.cooperative else None,
        sync=sync if spec.cooperative else None, rounds=rounds if spec.cooperative else None,
        broadcast=opts.broadcast and spec.multi_es,
    )
