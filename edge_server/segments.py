"""The ES's segment handler: what one ``RunSegment`` does after the servicer decoded it.

:class:`SegmentHandler` owns the state around a segment's compute — the result cache for retries
(:mod:`edge_server.idempotency`), the store of what a cooperative generation's later rounds need
(:mod:`edge_server.sessions`), the power control of seed downlinks — and hands the compute to the batching
engine (:mod:`edge_server.engine`), which alone decides admission (``QueueFull``). It raises typed errors; the
servicer maps them to gRPC statuses through one table (:data:`edge_server.servicer.STATUS`).

A request is its caller's: the cache and the round store key it by :class:`Caller` (the TLS-proven peer and the
UE id) as well as by its ``request_id``, so a second UE sending the same id gets its own run, never the first's
result or stored conditioning. A repeat with the same key but other inputs (prompt, params, protocol...) is an
:class:`~edge_server.idempotency.IdempotencyConflict` (Stripe's idempotency keys: an error, not an answer).

One segment, in order: bounded strings checked -> cache (a repeat joins the run or gets its result) -> the
engine admits (or ``QueueFull``) -> the plan and the tensors decoded off the event loop -> the runner in a worker
thread (its model calls all go to the engine's thread) -> kept round state, power allocation, the response.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from edge_server.engine import Engine, EngineParts
from edge_server.idempotency import ResultCache, fingerprint, request_key, short_id
from edge_server.metrics import EdgeMetrics
from edge_server.power_control import PowerControl
from edge_server.sessions import Sessions
from edge_server.settings import EdgeSettings
from shared.model.denoise import DenoiseJob, DenoiseModel
from shared.model.ops import ModelOps, ModelParts
from shared.pb import edge_pb2
from shared.protocol.geometry import SEED_KEYS
from shared.protocol.params import Params
from shared.protocol.registry import PROTOCOLS, check_prompt
from shared.protocol.runner import run_segment
from shared.protocol.schedule import cooperative_schedule
from shared.protocol.serde import RequestError, check_digital, check_params, check_segment, share_from_proto
from shared.protocol.stages import DIGITAL_KEYS, TEXT_KEYS, ProtocolError, Segment
from shared.wire import air
from shared.wire.limits import MAX_REQUEST_ID_CHARS, MAX_ROUNDS, MAX_UE_ID_CHARS

log = logging.getLogger("meg.edge")


@dataclass(frozen=True)
class Caller:
    """Who sent a request: ``peer`` is the client certificate's identity when TLS proved one (its common name;
    ``""`` on plaintext), ``ue`` the UE id of the ``meg-ue`` header (``"ue"`` without one), ``control`` the CSI
    address to trust for this call (the servicer sets it only where the operator allows, see
    :meth:`SegmentHandler.csi_address`)."""

    peer: str = ""
    ue: str = "ue"
    control: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.peer, self.ue)


def protocol_label(request: edge_pb2.SegmentRequest) -> str:
    """The protocol as a metrics label: a known protocol's name, else ``"-"`` (a caller's string never becomes a
    Prometheus series)."""
    name = request.protocol.upper()
    return name if name in PROTOCOLS else "-"


def check_caller_strings(request: edge_pb2.SegmentRequest, caller: Caller) -> None:
    """Bound what a caller chooses and the ES keys state by (RequestError)."""
    if len(request.request_id) > MAX_REQUEST_ID_CHARS:
        raise RequestError(f"request_id has {len(request.request_id)} characters; at most {MAX_REQUEST_ID_CHARS}")
    if not 0 < len(caller.ue) <= MAX_UE_ID_CHARS:
        raise RequestError(f"the UE id (meg-ue header) must have 1 to {MAX_UE_ID_CHARS} characters, "
                           f"got {len(caller.ue)}")


class SegmentHandler:
    """Runs ES segments: owns the engine, the result cache, the round store and the power control."""

    def __init__(self, parts: ModelParts, settings: EdgeSettings, power: PowerControl | None = None,
                 metrics: EdgeMetrics | None = None) -> None:
        self.parts = parts
        self.settings = settings
        self.power = power
        self.metrics = metrics or EdgeMetrics()
        max_batch = settings.max_concurrency or settings.max_batch  # max_concurrency: the old name
        # the engine's thread builds the model's constant parts and runs every kernel (see edge_server.engine)
        self.engine = Engine(lambda: DenoiseModel.from_parts(parts), max_batch, settings.max_queue, self.metrics)
        self.ops_parts = EngineParts(parts, self.engine)  # T, E, D, C, S batch on the engine too
        self.results: ResultCache[edge_pb2.SegmentResponse] = ResultCache(orphan_grace_s=settings.orphan_grace_s)
        self.sessions = Sessions(per_caller=settings.sessions_per_caller)
        # a thread per admitted segment (the engine admits at most max_batch + max_queue at once)
        self._pool = ThreadPoolExecutor(max_batch + settings.max_queue, thread_name_prefix="meg-segment")

    def close(self) -> None:
        """Stop the engine (what still waits fails) and the worker threads."""
        self.engine.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def run(self, request: edge_pb2.SegmentRequest, caller: Caller, budget_s: float) -> edge_pb2.SegmentResponse:
        """The segment's response; raises RequestError, IdempotencyConflict, SessionGone, SessionsFull, QueueFull,
        DeadlineExceeded, EngineClosed/Cancelled/EngineFailed (see the servicer's STATUS table)."""
        check_caller_strings(request, caller)
        key = request_key(request)
        label = None if key is None else " ".join([short_id(key[0]), *map(str, key[1:])])
        return await self.results.run(None if key is None else (*caller.key, *key), fingerprint(request),
                                      lambda: self._compute(request, caller, budget_s), label)

    # -- one computation (at most one per caller and request_id while cached) -----------------------------
    async def _compute(self, request: edge_pb2.SegmentRequest, caller: Caller, budget_s: float
                       ) -> edge_pb2.SegmentResponse:
        ticket = self.engine.admit()  # QueueFull at once when the ES is at capacity: before any work
        cancel = threading.Event()  # set when the run is cancelled: the engine drops its jobs at the next step
        denoised = [0]

        def denoise(job: DenoiseJob) -> torch.Tensor:
            latent = self.engine.submit(job, cancel)
            denoised[0] += 1
            return latent

        session = (*caller.key, request.request_id, request.protocol.upper(), request.task or "txt2img",
                   request.share.index)
        try:
            segment, later, params, workspace = await asyncio.to_thread(self._decode, request)
            if segment.held:
                workspace.update(self.sessions.take(session, segment.held))
            ops = ModelOps(self.ops_parts, params, time.monotonic() + budget_s, denoiser=denoise,
                           task=request.task or "txt2img")
            started = time.perf_counter()
            work = self._pool.submit(run_segment, segment, workspace, ops)
        except BaseException:
            ticket.release()
            raise
        work.add_done_callback(ticket.release)  # the place frees when the work ends, not when the RPC goes away
        try:
            out = await asyncio.wrap_future(work)
        except asyncio.CancelledError:
            cancel.set()
            raise
        if later and request.request_id:
            self.sessions.keep(session, {k: workspace[k] for k in later if k in workspace}, owner=caller.key)
        elif segment.held:
            self.sessions.drop(session)  # the generation's last round on this ES
        seconds = time.perf_counter() - started
        protocol = protocol_label(request)
        self.metrics.finished(protocol, "OK", seconds, denoised[0])
        log.info("%s %s ue %s seg %d req %s: %.2fs", protocol, request.task or "txt2img", caller.ue[:16],
                 segment.index, short_id(request.request_id), seconds)
        tensors = [air.to_air(k, v) for k, v in out.items() if isinstance(v, torch.Tensor)]
        digital = {k: v for k, v in out.items() if k in DIGITAL_KEYS and isinstance(v, bytes)}
        if self.power is not None:
            for t in tensors:
                if t.name in SEED_KEYS:
                    await self.power.allocate(t, caller.ue, caller.control)
        return edge_pb2.SegmentResponse(tensors=tensors, digital=digital, es_seconds=seconds,
                                        uplink_seen=[t.applied for t in request.tensors if t.HasField("applied")])

    # -- decoding (a worker thread: plan() of many rounds is not the event loop's) ----------------------------
    def _decode(self, request: edge_pb2.SegmentRequest) -> tuple[Segment, set[str], Params, dict[str, object]]:
        """Check the request against its protocol's plan and decode its tensors: ``(segment, keys later rounds on
        this ES use, params, workspace)``; RequestError."""
        params = check_params(request.params)
        segment, segments = check_segment(request, self._rounds(request, params))
        if segment.held and not request.request_id:
            raise RequestError(f"segment {segment.index} of {request.protocol.upper()} continues a generation "
                               f"(it uses {list(segment.held)} from an earlier round): send its request_id")
        carries_seed = bool(SEED_KEYS & {*segment.receives, *segment.returns})
        if carries_seed and not self.parts.has_codec(params.fc):  # fc means nothing where no seed crosses
            raise RequestError(air.unsupported_rate_message(params.fc, self.parts.codec_rates()))
        later = {k for s in segments[segment.index + 1:] if s.actor == "ES" for k in s.held}
        return segment, later, params, self._workspace(request, segment, params.fc)

    def _rounds(self, request: edge_pb2.SegmentRequest, params: Params) -> int:
        """How many rounds the request's generation has (1 unless it is a cooperative one with sync); at most
        :data:`~shared.wire.limits.MAX_ROUNDS`."""
        if not (request.HasField("share") and request.share.count > 0 and request.share.sync > 0):
            return 1
        share = share_from_proto(request.share, self.parts.geometry.latent_size)
        try:
            steps = params.steps or self.parts.meg.es_steps
            rounds = len(cooperative_schedule(steps, params.strength, share, request.task == "img2img"))
        except ValueError as exc:
            raise RequestError(str(exc)) from None
        if rounds > MAX_ROUNDS:
            raise RequestError(f"{steps} steps fused every {share.sync} make {rounds} rounds; at most {MAX_ROUNDS} "
                               "(raise share.sync)")
        return rounds

    def _workspace(self, request: edge_pb2.SegmentRequest, segment: Segment, fc: float) -> dict[str, object]:
        """Decode and check what the UE sent against what the segment receives."""
        expected = {k for k in segment.receives if k not in TEXT_KEYS | DIGITAL_KEYS}
        names = [t.name for t in request.tensors]
        if len(set(names)) != len(names):
            raise RequestError(f"tensor names repeat: {names}")
        if set(names) != expected:
            raise RequestError(f"{request.protocol.upper()} segment {segment.index} expects tensors "
                               f"{sorted(expected)}, got {sorted(names)}")
        # lossless bytes (a PNG): checked and bounded here, decoded by the segment's own op (decode_png)
        workspace: dict[str, object] = dict(check_digital(
            request.digital, {k for k in segment.receives if k in DIGITAL_KEYS},
            f"{request.protocol.upper()} segment {segment.index}"))
        share = None
        if segment.fan != "one":  # which ES of the session (and, cooperative, its window): request metadata
            share = share_from_proto(request.share, self.parts.geometry.latent_size)
            workspace["share"] = share
        for t in request.tensors:
            try:
                workspace[t.name] = air.from_air(t, self.parts.geometry.shape_of(t.name, fc, share))
            except air.TensorError as exc:
                raise RequestError(str(exc)) from None
        if "prompt" in segment.receives:
            try:
                workspace["prompt"] = check_prompt(request.prompt, self.settings.max_prompt_chars)
            except ProtocolError as exc:
                raise RequestError(str(exc)) from None
        elif request.prompt:
            raise RequestError(f"{request.protocol.upper()} does not send the prompt text to the ES at this segment")
        return workspace
