"""The edge service: deserialise and check -> run the protocol segment -> serialise. No per-protocol code."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import grpc
import torch

from edge_server.engine import Cancelled, Engine, EngineClosed, EngineParts, QueueFull
from edge_server.idempotency import IdempotencyConflict, ResultCache, fingerprint, request_key
from edge_server.metrics import EdgeMetrics
from edge_server.power_control import PowerControl
from edge_server.sessions import SessionGone, Sessions
from edge_server.settings import EdgeSettings
from shared.model.denoise import DenoiseJob, DenoiseModel
from shared.model.ops import DeadlineExceeded, ModelOps, ModelParts
from shared.pb import edge_pb2, edge_pb2_grpc
from shared.protocol.geometry import SEED_KEYS
from shared.protocol.params import Params
from shared.protocol.registry import PROTOCOLS, check_prompt
from shared.protocol.runner import run_segment
from shared.protocol.schedule import cooperative_schedule
from shared.protocol.serde import RequestError, check_params, check_segment, share_from_proto
from shared.protocol.stages import TEXT_KEYS, ProtocolError, Segment
from shared.wire import air

log = logging.getLogger("meg.edge")
class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class EdgeServicer(edge_pb2_grpc.EdgeServiceServicer):
    """Thin: every protocol goes through :meth:`RunSegment` and :func:`shared.protocol.runner.run_segment`."""

    def __init__(self, parts: ModelParts, settings: EdgeSettings, power: PowerControl | None = None,
                 metrics: EdgeMetrics | None = None) -> None:
        """Every DDIM loop of every request goes through one :class:`~edge_server.engine.Engine`
        (``settings.max_batch`` at once, ``max_queue`` waiting); segments run in worker threads."""
        self.parts = parts
        self.settings = settings
        self.power = power
        self.metrics = metrics or EdgeMetrics()
        self.results: ResultCache[edge_pb2.SegmentResponse] = ResultCache(orphan_grace_s=settings.orphan_grace_s)
        self.sessions = Sessions()  # what a cooperative generation's later rounds need from its first
        max_batch = settings.max_concurrency or settings.max_batch  # max_concurrency: the old name
        # the engine's thread builds the model's constant parts and runs every kernel (see edge_server.engine)
        self.engine = Engine(lambda: DenoiseModel.from_parts(parts), max_batch, settings.max_queue, self.metrics)
        self.ops_parts = EngineParts(parts, self.engine)  # T, E, D, C, S batch on the engine too
        #: admitted RunSegment calls (a thread each) until their work ends; beyond it RESOURCE_EXHAUSTED
        self.capacity = max_batch + settings.max_queue
        self._pool = ThreadPoolExecutor(self.capacity, thread_name_prefix="meg-segment")
        self._lock = threading.Lock()
        self._in_flight = 0
        self.metrics_http: object | None = None  # the Prometheus HTTP server (set by create_server)
        self.metrics_port: int | None = None

    def close(self) -> None:
        """Stop the engine (what still waits fails), the worker threads and the metrics endpoint."""
        self.engine.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self.metrics_http is not None:
            self.metrics_http.shutdown()  # type: ignore[attr-defined]

    def _admit(self) -> bool:
        with self._lock:
            if self._in_flight >= self.capacity:
                return False
            self._in_flight += 1
            self.metrics.in_flight.set(self._in_flight)
            return True

    def _release(self, _work: object = None) -> None:
        """Runs when a segment's thread is done (not when its RPC goes away): the place frees then."""
        with self._lock:
            self._in_flight -= 1
            self.metrics.in_flight.set(self._in_flight)

    async def Describe(
        self, request: edge_pb2.DescribeRequest, context: grpc.aio.ServicerContext
    ) -> edge_pb2.DescribeResponse:
        g = self.parts.geometry
        return edge_pb2.DescribeResponse(
            model=self.parts.name,
            image_size=g.image_size,
            latent_channels=g.latent_channels,
            latent_size=g.latent_size,
            max_tokens=g.max_tokens,
            embed_dim=g.embed_dim,
            protocols=list(PROTOCOLS),
            device=str(self.parts.device),
            codec_fc=self.parts.codec_rates(),
        )

    async def Probe(self, request: edge_pb2.ProbeRequest, context: grpc.aio.ServicerContext) -> edge_pb2.ProbeResponse:
        """Check and echo the tensors (the applied-channel stamps are dropped so the downlink stamps anew).

        Malformed or non-finite (NaN/Inf) tensors are INVALID_ARGUMENT."""
        for t in request.tensors:
            try:
                air.air_array(t, finite=True)
            except air.TensorError as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        reply = edge_pb2.ProbeResponse(tensors=request.tensors)
        for t in reply.tensors:
            t.ClearField("applied")
        return reply

    def _workspace(self, request: edge_pb2.SegmentRequest, segment: Segment, fc: float) -> dict[str, object]:
        """Decode and check what the UE sent against what the segment receives."""
        expected = {k for k in segment.receives if k not in TEXT_KEYS}
        names = [t.name for t in request.tensors]
        if len(set(names)) != len(names):
            raise RequestError(f"tensor names repeat: {names}")
        if set(names) != expected:
            raise RequestError(
                f"{request.protocol.upper()} segment {segment.index} expects tensors {sorted(expected)}, got {sorted(names)}"
            )
        workspace: dict[str, object] = {}
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

    def _rounds(self, request: edge_pb2.SegmentRequest, params: Params) -> int:
        """How many rounds the request's generation has (1 unless it is a cooperative one with sync)."""
        if not (request.HasField("share") and request.share.count > 0 and request.share.sync > 0):
            return 1
        share = share_from_proto(request.share, self.parts.geometry.latent_size)
        try:
            steps = params.steps or self.parts.meg.es_steps
            rounds = cooperative_schedule(steps, params.strength, share, request.task == "img2img")
        except ValueError as exc:
            raise RequestError(str(exc)) from None
        return len(rounds)

    async def RunSegment(
        self, request: edge_pb2.SegmentRequest, context: grpc.aio.ServicerContext
    ) -> edge_pb2.SegmentResponse:
        try:
            params = check_params(request.params)
            segment, segments = check_segment(request, self._rounds(request, params))
            if segment.held and not request.request_id:
                raise RequestError(f"segment {segment.index} of {request.protocol.upper()} continues a generation "
                                   f"(it uses {list(segment.held)} from an earlier round): send its request_id")
            carries_seed = bool(SEED_KEYS & {*segment.receives, *segment.returns})
            if carries_seed and not self.parts.has_codec(params.fc):  # fc means nothing where no seed crosses
                raise RequestError(air.unsupported_rate_message(params.fc, self.parts.codec_rates()))
            workspace = self._workspace(request, segment, params.fc)
        except RequestError as exc:
            self.metrics.finished(request.protocol.upper() or "-", "INVALID_ARGUMENT")
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        remaining = context.time_remaining()
        budget = self.settings.default_deadline_s if remaining is None else remaining
        metadata = dict(context.invocation_metadata() or ())

        async def compute() -> edge_pb2.SegmentResponse:
            """The segment's work, run once per request_id by the result cache (so it may outlive this call:
            it raises :class:`_Abort` instead of aborting this call's context)."""
            protocol = request.protocol.upper()
            if not self._admit():
                self.metrics.finished(protocol, "RESOURCE_EXHAUSTED")
                queued, running = self.engine.depth()
                raise _Abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"the edge server is at capacity: {self.capacity} requests admitted ({running} denoising, {queued} "
                    f"queued; --max-batch {self.engine.max_batch}, --max-queue {self.engine.max_queue}); retry later",
                )
            cancel = threading.Event()  # set when the RPC goes away: the engine drops the job at its next step
            denoised = [0]

            def denoise(job: DenoiseJob) -> torch.Tensor:
                latent = self.engine.submit(job, cancel)
                denoised[0] += 1
                return latent

            session = (request.request_id, protocol, request.task or "txt2img", request.share.index)
            if segment.held:
                try:
                    workspace.update(self.sessions.take(session, segment.held))
                except SessionGone as exc:
                    self._release()
                    self.metrics.finished(protocol, "FAILED_PRECONDITION")
                    raise _Abort(grpc.StatusCode.FAILED_PRECONDITION,
                                 f"{exc} (its earlier round ran elsewhere, expired after {self.sessions.ttl_s:g} s, or "
                                 "this edge server restarted); run the generation again") from None
            later = {k for s in segments[segment.index + 1:] if s.actor == "ES" for k in s.held}
            ops = ModelOps(self.ops_parts, params, time.monotonic() + budget, denoiser=denoise, task=request.task or "txt2img")
            started = time.perf_counter()
            work: Future[dict[str, object]] = self._pool.submit(run_segment, segment, workspace, ops)
            work.add_done_callback(self._release)
            status, message = grpc.StatusCode.OK, ""
            try:
                out = await asyncio.wrap_future(work)
            except asyncio.CancelledError:
                cancel.set()
                self.metrics.finished(protocol, "CANCELLED")
                raise
            except DeadlineExceeded as exc:
                status, message = grpc.StatusCode.DEADLINE_EXCEEDED, str(exc)
            except QueueFull as exc:
                status, message = grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)
            except (EngineClosed, Cancelled) as exc:
                status, message = grpc.StatusCode.UNAVAILABLE, str(exc)
            except ValueError as exc:  # a job that cannot run (e.g. img2img with no step at its strength)
                status, message = grpc.StatusCode.INVALID_ARGUMENT, str(exc)
            if status != grpc.StatusCode.OK:
                self.metrics.finished(protocol, status.name)
                raise _Abort(status, message)
            if later and request.request_id:
                self.sessions.keep(session, {k: workspace[k] for k in later if k in workspace})
            elif segment.held:
                self.sessions.drop(session)  # the generation's last round on this ES
            seconds = time.perf_counter() - started
            self.metrics.finished(protocol, "OK", seconds, denoised[0])
            log.info(
                "%s %s seg %d req %s: %.2fs", request.protocol.upper(), request.task or "txt2img",
                segment.index, request.request_id or "-", seconds,
            )
            tensors = [air.to_air(k, v) for k, v in out.items() if isinstance(v, torch.Tensor)]
            if self.power is not None:
                for t in tensors:
                    if t.name in SEED_KEYS:
                        await self.power.allocate(t, str(metadata.get("meg-ue", "ue")), metadata.get("meg-channel-control"))
            return edge_pb2.SegmentResponse(
                tensors=tensors,
                uplink_seen=[t.applied for t in request.tensors if t.HasField("applied")],
                es_seconds=seconds,
            )

        try:
            return await self.results.run(request_key(request), fingerprint(request), compute)
        except _Abort as exc:
            await context.abort(exc.code, exc.message)
        except IdempotencyConflict as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        raise AssertionError("context.abort returned")  # it raises
