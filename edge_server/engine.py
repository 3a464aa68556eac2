"""The ES's batching engine: a bounded queue and an iteration-level (continuous) batching loop over DDIM.

The unit of work is one DDIM step. Every loop iteration the engine

1. drops queued and running requests that were cancelled or whose deadline passed (their caller gets
   :class:`Cancelled` / :class:`~shared.model.ops.DeadlineExceeded`; their compute stops here),
2. admits the oldest queued requests while fewer than ``max_batch`` run (a request joins at the next step),
3. runs **one** UNet call per group of running requests whose latent/embedding shapes match
   (:func:`shared.model.denoise.step`: per-request schedulers, per-sample timesteps, guidance = 2 rows),
4. hands each request whose own schedule has ended its latent and lets it leave.

Between steps the same thread also runs the cheap parts batched (:meth:`Engine.run_batched`): the VAE
decodes of every request that finished together go through the decoder as one batch
(:func:`batched_parts` gives the servicer's :class:`~shared.model.ops.ModelOps` a view of the model whose
VAE decodes this way). One thread runs all model work, so worker threads never oversubscribe the cores.

So requests with different step counts, strengths, tasks and arrival times share UNet calls, and the
result of each equals running it alone (:func:`shared.model.denoise.denoise_alone`) to float tolerance.

Callers (worker threads of the servicer) use :meth:`Engine.submit`, which blocks; it is thread-safe. A
full queue raises :class:`QueueFull` at once. Compare Ray Serve's ``@serve.batch(max_batch_size)`` (batches
whole calls) and Triton's dynamic batcher; this batches *steps*, as LLM servers batch tokens.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, Protocol

import torch

from shared.model.denoise import DenoiseJob, DenoiseModel, DenoiseState, start, step
from shared.model.ops import DeadlineExceeded, ModelParts

log = logging.getLogger("meg.edge.engine")


class QueueFull(RuntimeError):
    """The engine's queue is full: the caller should answer RESOURCE_EXHAUSTED."""


class Cancelled(RuntimeError):
    """The request's cancel flag was set (its RPC was cancelled); it left the batch."""


class EngineClosed(RuntimeError):
    """The engine is shutting down."""


class EngineMetrics(Protocol):
    """What the engine reports (see :class:`edge_server.metrics.EdgeMetrics`)."""

    def engine_state(self, queued: int, running: int) -> None: ...

    def engine_step(self, batch: int, rows: int, seconds: float) -> None: ...


class _Pending:
    __slots__ = ("cancel", "future", "job", "queued_at")

    def __init__(self, job: DenoiseJob, cancel: threading.Event | None) -> None:
        self.job = job
        self.cancel = cancel
        self.future: Future[torch.Tensor] = Future()
        self.queued_at = time.monotonic()

    def why_dropped(self, now: float) -> Exception | None:
        if self.cancel is not None and self.cancel.is_set():
            return Cancelled("the request was cancelled")
        if self.job.deadline is not None and now > self.job.deadline:
            return DeadlineExceeded("the request's deadline passed during generation")
        return None


class _SideCall:
    """One call of a cheap part (e.g. the VAE decoder) waiting to be batched with others like it."""

    __slots__ = ("fn", "future", "name", "x")

    def __init__(self, name: str, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> None:
        self.name, self.fn, self.x = name, fn, x
        self.future: Future[torch.Tensor] = Future()


class Engine:
    """Owns the queue and the UNet loop for one :class:`~shared.model.denoise.DenoiseModel` (one thread)."""

    def __init__(self, model: DenoiseModel, max_batch: int = 16, max_queue: int = 64,
                 metrics: EngineMetrics | None = None) -> None:
        """``max_batch``: requests denoised together (each takes 2 UNet rows with guidance);
        ``max_queue``: requests waiting to join beyond those (more -> :class:`QueueFull`)."""
        if max_batch < 1 or max_queue < 0:
            raise ValueError(f"max_batch must be >= 1 and max_queue >= 0, got {max_batch} and {max_queue}")
        self.model = model
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.metrics = metrics
        #: called after every batched step with the states it advanced (tests count steps with it)
        self.step_observers: list[Callable[[Sequence[DenoiseState]], None]] = []
        self.unet_calls = 0
        self._cond = threading.Condition()
        self._waiting: deque[_Pending] = deque()
        self._running: list[DenoiseState] = []
        self._side: list[_SideCall] = []
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="meg-engine", daemon=True)
        self._thread.start()

    # -- callers' side ---------------------------------------------------------------------------------
    def submit(self, job: DenoiseJob, cancel: threading.Event | None = None) -> torch.Tensor:
        """Queue ``job`` and block until its latent ``[1, C, h, w]`` (float32, CPU) is ready.

        Raises :class:`QueueFull` at once when ``max_queue`` requests already wait, :class:`Cancelled`
        after ``cancel`` is set, :class:`~shared.model.ops.DeadlineExceeded` after ``job.deadline``,
        ``ValueError`` for a job that cannot run (e.g. img2img with no step at its strength).
        """
        pending = _Pending(job, cancel)
        with self._cond:
            if self._closed:
                raise EngineClosed("the edge server is shutting down")
            room = self.max_queue + max(0, self.max_batch - len(self._running))  # free batch places count
            if len(self._waiting) >= room:
                raise QueueFull(
                    f"the edge server is at capacity: {len(self._running)} generations running, "
                    f"{len(self._waiting)} queued (max batch {self.max_batch}, max queue {self.max_queue}); retry later"
                )
            self._waiting.append(pending)
            self._report()
            self._cond.notify()
        return pending.future.result()

    def run_batched(self, name: str, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Run ``fn(x)`` on the engine thread, batched with the other calls named ``name`` whose ``x`` has the
        same shape past dim 0 and that arrive before its next step: ``fn(cat(xs)).split(...)``. ``fn`` must
        treat samples independently. Blocks; thread-safe."""
        call = _SideCall(name, fn, x)
        with self._cond:
            if self._closed:
                raise EngineClosed("the edge server is shutting down")
            self._side.append(call)
            self._cond.notify()
        return call.future.result()

    def depth(self) -> tuple[int, int]:
        """``(queued, running)`` now."""
        with self._cond:
            return len(self._waiting), len(self._running)

    def close(self) -> None:
        """Stop the loop; everything queued or running fails with :class:`EngineClosed`."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(30)

    # -- the loop --------------------------------------------------------------------------------------
    def _report(self) -> None:
        if self.metrics is not None:
            self.metrics.engine_state(len(self._waiting), len(self._running))

    def _admit(self) -> list[_Pending]:
        """Under the lock: wait for work, prune the queue, take the oldest requests that fit."""
        while not self._closed and not self._waiting and not self._running and not self._side:
            self._cond.wait()
        if self._closed:
            return []
        now = time.monotonic()
        for p in list(self._waiting):
            reason = p.why_dropped(now)
            if reason is not None:
                self._waiting.remove(p)
                p.future.set_exception(reason)
        taken: list[_Pending] = []
        while self._waiting and len(self._running) + len(taken) < self.max_batch:
            taken.append(self._waiting.popleft())
        return taken

    def _loop(self) -> None:
        while True:
            with self._cond:
                taken = self._admit()
                closed = self._closed
                side, self._side = self._side, []
            self._run_side(side)
            if closed:
                self._fail_all()
                return
            joined: list[DenoiseState] = []
            for p in taken:
                try:
                    state = start(self.model, p.job)
                except Exception as exc:  # noqa: BLE001  (a bad job fails alone, never the loop)
                    p.future.set_exception(exc)
                    continue
                state.tags["pending"] = p
                joined.append(state)
            with self._cond:
                self._running.extend(joined)
                self._report()
            try:
                self._step_all()
            except Exception as exc:
                log.exception("batched step failed")
                with self._cond:
                    failed, self._running = self._running, []
                for s in failed:
                    _pending(s).future.set_exception(exc)

    @torch.no_grad()
    def _run_side(self, calls: list[_SideCall]) -> None:
        groups: dict[tuple[object, ...], list[_SideCall]] = {}
        for c in calls:
            groups.setdefault((c.name, tuple(c.x.shape[1:]), c.x.dtype), []).append(c)
        for group in groups.values():
            try:
                y = group[0].fn(torch.cat([c.x for c in group]))
                for c, part in zip(group, y.split([c.x.shape[0] for c in group]), strict=True):
                    c.future.set_result(part)
            except Exception as exc:  # noqa: BLE001  (the callers get the error)
                for c in group:
                    c.future.set_exception(exc)

    def _step_all(self) -> None:
        now = time.monotonic()
        keep: list[DenoiseState] = []
        for s in self._running:
            reason = _pending(s).why_dropped(now)
            if reason is None:
                keep.append(s)
            else:
                _pending(s).future.set_exception(reason)
        groups: dict[tuple[int, ...], list[DenoiseState]] = {}
        for s in keep:
            groups.setdefault(s.key, []).append(s)
        for group in groups.values():
            t0 = time.perf_counter()
            step(self.model, group)
            if self.model.device.type == "cuda":
                torch.cuda.synchronize(self.model.device)
            seconds = time.perf_counter() - t0
            self.unet_calls += 1
            if self.metrics is not None:
                self.metrics.engine_step(len(group), sum(s.rows for s in group), seconds)
            for observe in self.step_observers:
                observe(group)
        still = []
        for s in keep:
            if s.done:
                _pending(s).future.set_result(s.result())
            else:
                still.append(s)
        with self._cond:
            self._running = still
            self._report()

    def _fail_all(self) -> None:
        with self._cond:
            futures = [p.future for p in (*self._waiting, *(_pending(s) for s in self._running))]
            futures += [c.future for c in self._side]
            self._waiting.clear()
            self._running = []
            self._side = []
        for f in futures:
            if not f.done():
                f.set_exception(EngineClosed("the edge server is shutting down"))


def _pending(state: DenoiseState) -> _Pending:
    p = state.tags["pending"]
    assert isinstance(p, _Pending)
    return p


class _BatchedVAE:
    """The model's VAE, except that ``decode`` goes through :meth:`Engine.run_batched`."""

    def __init__(self, vae: Any, engine: Engine) -> None:  # diffusers' AutoencoderKL
        self._vae = vae
        self._engine = engine

    def __getattr__(self, name: str) -> object:
        return getattr(self._vae, name)

    def decode(self, z: torch.Tensor, return_dict: bool = True) -> object:
        from diffusers.models.autoencoders.vae import DecoderOutput

        sample = self._engine.run_batched("vae.decode", lambda x: self._vae.decode(x).sample, z)
        return DecoderOutput(sample=sample) if return_dict else (sample,)


class _PipelineView:
    """A pipeline whose ``vae`` is batched; everything else is the pipeline's own."""

    def __init__(self, pipe: object, vae: _BatchedVAE) -> None:
        self._pipe = pipe
        self.vae = vae

    def __getattr__(self, name: str) -> object:
        return getattr(self._pipe, name)


def batched_parts(parts: ModelParts, engine: Engine) -> ModelParts:
    """A view of ``parts`` (same modules, codecs and prompt cache) whose VAE decoder runs batched on
    ``engine``'s thread: what the ES's per-request :class:`~shared.model.ops.ModelOps` work on."""
    parts.uncond()  # cache it in the shared object first
    view = copy.copy(parts)
    view.pipe = _PipelineView(parts.pipe, _BatchedVAE(parts.pipe.vae, engine))
    return view
