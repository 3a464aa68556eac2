"""The ES's batching engine: a bounded queue and an iteration-level (continuous) batching loop over DDIM.

The unit of work is one DDIM step. Every loop iteration the engine

1. drops queued and running requests that were cancelled or whose deadline passed (their caller gets
   :class:`Cancelled` / :class:`~shared.model.ops.DeadlineExceeded`; their compute stops here),
2. admits the oldest queued requests while fewer than ``max_batch`` run (a request joins at the next step),
3. runs **one** UNet call per group of running requests whose latent/embedding shapes match
   (:func:`shared.model.denoise.step`: per-request schedulers, per-sample timesteps, guidance = 2 rows),
4. hands each request whose own schedule has ended its latent and lets it leave.

Between steps the same thread also runs the cheap parts batched (:meth:`Engine.run_batched`): the text
encodes, VAE encodes and decodes, seed codecs and sketches of every request that reach it together go through
their module as one batch (:class:`EngineParts` is the servicer's view of the model, whose parts run this
way).

**One thread runs every kernel of the ES** (the model is built on it too, :class:`Engine` takes a factory).
That is what lets torch use all the cores from it: torch's CPU kernels run on OpenMP (libgomp), which keeps
one thread team per OS thread that starts a parallel region, and whose idle team threads spin for a while
before sleeping *only while the process's OpenMP threads do not outnumber the cores*. A second thread that
ever ran a kernel (the event loop computing the empty prompt, a model-loading executor thread, worker threads
running the text encoder) keeps its own idle team, so on 2 cores every team is throttled: each parallel
region wakes a sleeping partner with a futex, and the loop ran on about one core (issue 24: the same
diffusers call took 2.8–3.7 s in a script's main thread at ~2 cores, 4.2–6.5 s from the engine's thread at
~1.1). With every kernel here, the engine's team is the only one, as in a plain script.

So requests with different step counts, strengths, tasks and arrival times share UNet calls, and the
result of each equals running it alone (:func:`shared.model.denoise.denoise_alone`) to float tolerance.

Callers (worker threads of the servicer) use :meth:`Engine.submit`, which blocks; it is thread-safe. A
full queue raises :class:`QueueFull` at once. Compare Ray Serve's ``@serve.batch(max_batch_size)`` (batches
whole calls) and Triton's dynamic batcher; this batches *steps*, as LLM servers batch tokens.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from functools import partial
from typing import Any, Protocol, TypeVar

import torch

from shared.model.denoise import DenoiseJob, DenoiseModel, DenoiseState, start, step
from shared.model.ops import DeadlineExceeded, ModelParts

log = logging.getLogger("meg.edge.engine")
T = TypeVar("T")


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

    def engine_admitted(self, requests: int) -> None: ...


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
    """One call of a cheap part (e.g. the VAE decoder) waiting to be batched with others like it: ``x`` is a
    tensor ``[b, ...]`` (batched along dim 0) or a string (batched as a list; ``fn`` returns ``[B, ...]``)."""

    __slots__ = ("fn", "future", "name", "x")

    def __init__(self, name: str, fn: Callable[[Any], Any], x: torch.Tensor | str | None) -> None:
        self.name, self.fn, self.x = name, fn, x
        self.future: Future[Any] = Future()

    @property
    def key(self) -> tuple[object, ...]:
        """Calls with equal keys run as one batch (``x`` None: a call of its own)."""
        if self.x is None:
            return (id(self),)
        if isinstance(self.x, str):
            return (self.name, "str")
        return (self.name, tuple(self.x.shape[1:]), self.x.dtype)

    @property
    def rows(self) -> int:
        return int(self.x.shape[0]) if isinstance(self.x, torch.Tensor) else 1


def _settle(future: Future[Any], exc: BaseException | None = None, result: object = None) -> None:
    """Set ``future``'s exception or result unless it is already done (a request failed by an earlier step
    or dropped meanwhile): a second ``set_*`` raises ``InvalidStateError``, which must never kill the loop."""
    if future.done():
        return
    with contextlib.suppress(InvalidStateError):
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)


class EngineFailed(RuntimeError):
    """A batched step failed: the requests in it fail with this (UNAVAILABLE; a retry may succeed)."""


class Ticket:
    """An admitted request's place (:meth:`Engine.admit`); :meth:`release` frees it (once; extra calls do
    nothing, so it can be a done-callback)."""

    def __init__(self, engine: Engine) -> None:
        self._engine: Engine | None = engine

    def release(self, _done: object = None) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            engine._release()


class Engine:
    """Owns the queue, the UNet loop and every kernel of one :class:`~shared.model.denoise.DenoiseModel`
    (one thread)."""

    def __init__(self, model: DenoiseModel | Callable[[], DenoiseModel], max_batch: int = 16, max_queue: int = 64,
                 metrics: EngineMetrics | None = None, max_step_failures: int = 3,
                 batching: str = "continuous") -> None:
        """``model``: the model, or a factory the engine's thread calls first (so that the model's first
        kernels, e.g. the empty prompt's embedding, run on that thread too); ``max_batch``: requests denoised
        together (each takes 2 UNet rows with guidance); ``max_queue``: requests waiting to join beyond those
        (more -> :class:`QueueFull`); ``max_step_failures``: batched steps in a row that may fail before the
        engine gives up (:attr:`healthy` False, every later request :class:`EngineClosed`). ``batching``:
        ``"continuous"`` (requests join and leave the running batch at any step) or ``"equal"`` — the
        baseline of ``benchmarks/bench_mixed.py``: Triton-style dynamic batching, which only groups equal
        requests (same steps, task, strength, guidance, shapes) and runs each batch to its end before the next."""
        if max_batch < 1 or max_queue < 0:
            raise ValueError(f"max_batch must be >= 1 and max_queue >= 0, got {max_batch} and {max_queue}")
        if batching not in ("continuous", "equal"):
            raise ValueError(f"batching is 'continuous' or 'equal', got {batching!r}")
        self.batching = batching
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.metrics = metrics
        self.max_step_failures = max_step_failures
        #: called after every batched step with the states it advanced (tests count steps with it)
        self.step_observers: list[Callable[[Sequence[DenoiseState]], None]] = []
        #: called once when the engine cannot go on (the servicer turns health NOT_SERVING)
        self.on_failure: list[Callable[[str], None]] = []
        self.unet_calls = 0
        self.side_batches: dict[str, list[int]] = {}  # name -> rows of each batched call (metrics, tests)
        self.failure: str | None = None
        self._failures_in_a_row = 0
        self._cond = threading.Condition()
        self._waiting: deque[_Pending] = deque()
        self._running: list[DenoiseState] = []
        self._side: list[_SideCall] = []
        self._admitted = 0
        self._closed = False
        built: Future[DenoiseModel] = Future()
        self._thread = threading.Thread(target=self._main, args=(model, built), name="meg-engine", daemon=True)
        self._thread.start()
        self.model: DenoiseModel = built.result()

    @property
    def healthy(self) -> bool:
        """False once the engine gave up (see ``max_step_failures``) or closed."""
        return self.failure is None and not self._closed

    # -- callers' side ---------------------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        """Requests admitted at once (:meth:`admit`): ``max_batch`` denoising plus ``max_queue`` waiting."""
        return self.max_batch + self.max_queue

    @property
    def admitted(self) -> int:
        with self._cond:
            return self._admitted

    def admit(self) -> Ticket:
        """A place for one request's whole segment (its text encode, its DDIM loops, its decode...) — the ES's
        one admission check: :class:`QueueFull` at once when :attr:`capacity` requests hold one."""
        with self._cond:
            self._check_open()
            if self._admitted >= self.capacity:
                queued, running = len(self._waiting), len(self._running)
                raise QueueFull(
                    f"the edge server is at capacity: {self._admitted} requests admitted ({running} denoising, "
                    f"{queued} queued; --max-batch {self.max_batch}, --max-queue {self.max_queue}); retry later")
            self._admitted += 1
            self._report()
        return Ticket(self)

    def _release(self) -> None:
        with self._cond:
            self._admitted -= 1
            self._report()

    def submit(self, job: DenoiseJob, cancel: threading.Event | None = None) -> torch.Tensor:
        """Queue ``job`` and block until its latent ``[1, C, h, w]`` (float32, CPU) is ready.

        Raises :class:`QueueFull` at once when ``max_queue`` requests already wait, :class:`Cancelled`
        after ``cancel`` is set, :class:`~shared.model.ops.DeadlineExceeded` after ``job.deadline``,
        ``ValueError`` for a job that cannot run (e.g. img2img with no step at its strength),
        :class:`EngineFailed` when the batched step it was in failed.
        """
        pending = _Pending(job, cancel)
        with self._cond:
            self._check_open()
            room = self.max_queue + max(0, self.max_batch - len(self._running))  # free batch places count
            if len(self._waiting) >= room:
                raise QueueFull(
                    f"the edge server is at capacity: {len(self._running)} generations running, "
                    f"{len(self._waiting)} queued (--max-batch {self.max_batch}, --max-queue {self.max_queue}); "
                    "retry later"
                )
            self._waiting.append(pending)
            self._report()
            self._cond.notify()
        return pending.future.result()

    def _check_open(self) -> None:
        if self.failure is not None:
            raise EngineClosed(f"the edge server's engine stopped: {self.failure}")
        if self._closed:
            raise EngineClosed("the edge server is shutting down")

    def run_batched(self, name: str, fn: Callable[[Any], torch.Tensor], x: torch.Tensor | str) -> torch.Tensor:
        """Run ``fn`` on the engine thread, batched with the other calls named ``name`` that arrive before its
        next step and whose ``x`` has the same shape past dim 0: ``fn(cat(xs)).split(...)`` for tensors ``x
        [b, ...]``, ``fn([x, ...])`` split in rows of one for strings. ``fn`` must treat samples independently.
        Blocks; thread-safe; must not be called from the engine thread (it would wait for itself)."""
        call = _SideCall(name, fn, x)
        with self._cond:
            self._check_open()
            self._side.append(call)
            self._cond.notify()
        return call.future.result()

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn()`` by itself on the engine thread (between steps) and return its result. Blocks."""
        call = _SideCall("call", lambda _x: fn(), None)
        with self._cond:
            self._check_open()
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
            self.metrics.engine_admitted(self._admitted)

    def _admit(self) -> list[_Pending]:
        """Under the lock: wait for work, prune the queue, take the oldest requests that fit."""
        while not self._closed and not self._waiting and not self._running and not self._side:
            self._cond.wait()
        if self._closed or self.failure is not None:
            return []
        now = time.monotonic()
        for p in list(self._waiting):
            reason = p.why_dropped(now)
            if reason is not None:
                self._waiting.remove(p)
                _settle(p.future, reason)
        taken: list[_Pending] = []
        if self.batching == "equal":  # a batch forms only when none runs, of requests equal to the oldest
            if not self._running and self._waiting:
                like = _likeness(self._waiting[0].job)
                for p in [p for p in self._waiting if _likeness(p.job) == like][:self.max_batch]:
                    self._waiting.remove(p)
                    taken.append(p)
            return taken
        while self._waiting and len(self._running) + len(taken) < self.max_batch:
            taken.append(self._waiting.popleft())
        return taken

    def _main(self, model: DenoiseModel | Callable[[], DenoiseModel], built: Future[DenoiseModel]) -> None:
        try:
            self.model = model if isinstance(model, DenoiseModel) else model()
        except BaseException as exc:  # noqa: BLE001  (the constructor re-raises it)
            built.set_exception(exc)
            return
        built.set_result(self.model)
        self._loop()

    def _loop(self) -> None:
        while True:
            with self._cond:
                taken = self._admit()
                closed = self._closed or self.failure is not None
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
                    _settle(p.future, exc)
                    continue
                state.tags["pending"] = p
                joined.append(state)
            with self._cond:
                self._running.extend(joined)
                self._report()
            try:
                self._step_all()
            except Exception as exc:  # a defect between steps: fail the batch, keep the loop
                log.exception("engine step bookkeeping failed")
                with self._cond:
                    running, self._running = self._running, []
                self._step_failed(running, exc)

    def _step_failed(self, group: list[DenoiseState], exc: Exception) -> None:
        """A batched UNet call raised: fail its requests (only them), count it, give up after too many."""
        log.error("batched step of %d requests failed: %s: %s", len(group), type(exc).__name__, exc)
        self._failures_in_a_row += 1
        gave_up = self._failures_in_a_row >= self.max_step_failures and self.failure is None
        if gave_up:  # decided before the callers hear of it, so that they see the engine's state
            self.failure = f"{self._failures_in_a_row} batched steps in a row failed, the last with {type(exc).__name__}"
            log.critical("engine giving up: %s", self.failure)
            for notify in self.on_failure:
                with contextlib.suppress(Exception):
                    notify(self.failure)
        for s in group:
            _settle(_pending(s).future, EngineFailed(f"the denoising step failed ({type(exc).__name__}: {exc}); "
                                                     "retry"))

    @torch.no_grad()
    def _run_side(self, calls: list[_SideCall]) -> None:
        groups: dict[tuple[object, ...], list[_SideCall]] = {}
        for c in calls:
            groups.setdefault(c.key, []).append(c)
        for group in groups.values():
            if group[0].x is None:  # Engine.call
                try:
                    _settle(group[0].future, result=group[0].fn(None))
                except Exception as exc:  # noqa: BLE001
                    _settle(group[0].future, exc)
                continue
            try:
                xs = [c.x for c in group]
                y = group[0].fn(xs if isinstance(xs[0], str) else torch.cat(xs))  # type: ignore[arg-type]
                self.side_batches.setdefault(group[0].name, []).append(len(group))
                for c, part in zip(group, y.split([c.rows for c in group]), strict=True):
                    _settle(c.future, result=part)
            except Exception as exc:  # noqa: BLE001  (the callers get the error)
                for c in group:
                    _settle(c.future, exc)

    def _step_all(self) -> None:
        now = time.monotonic()
        keep: list[DenoiseState] = []
        for s in self._running:
            reason = _pending(s).why_dropped(now)
            if reason is None:
                keep.append(s)
            else:
                _settle(_pending(s).future, reason)
        groups: dict[tuple[int, ...], list[DenoiseState]] = {}
        for s in keep:
            groups.setdefault(s.key, []).append(s)
        failed: set[int] = set()
        for group in groups.values():
            t0 = time.perf_counter()
            try:
                step(self.model, group)
                if self.model.device.type == "cuda":
                    torch.cuda.synchronize(self.model.device)
            except Exception as exc:  # noqa: BLE001  (this step's requests fail; the loop goes on)
                self._step_failed(group, exc)
                failed.update(id(s) for s in group)
                continue
            self._failures_in_a_row = 0
            seconds = time.perf_counter() - t0
            self.unet_calls += 1
            if self.metrics is not None:
                self.metrics.engine_step(len(group), sum(s.rows for s in group), seconds)
            for observe in self.step_observers:
                observe(group)
        still = []
        for s in keep:
            if id(s) in failed:
                continue
            if s.done:
                _settle(_pending(s).future, result=s.result())
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
        why = f"the edge server's engine stopped: {self.failure}" if self.failure else "the edge server is shutting down"
        for f in futures:
            _settle(f, EngineClosed(why))


def _likeness(job: DenoiseJob) -> tuple[object, ...]:
    """What must be equal for the ``"equal"`` batcher to group two jobs (they then run the same steps)."""
    shape = tuple((job.noise if job.noise is not None else job.cond).shape)
    return (job.steps, job.init_latent is None, job.strength, job.guidance > 1, job.start_step, job.end_step,
            tuple(job.cond.shape), shape)


def _pending(state: DenoiseState) -> _Pending:
    p = state.tags["pending"]
    assert isinstance(p, _Pending)
    return p


class EngineParts(ModelParts):
    """The servicer's view of a :class:`~shared.model.ops.ModelParts` (the same modules, codecs and prompt
    cache) whose every part runs on ``engine``'s thread, batched with other requests' calls of it: the text
    encoder T, the VAE encoder E and decoder D, the seed codecs C / C⁻¹ and the sketcher S. The per-request
    :class:`~shared.model.ops.ModelOps` of the ES work on this."""

    def __init__(self, parts: ModelParts, engine: Engine) -> None:  # a view: no super().__init__()
        self.__dict__.update(parts.__dict__)
        self.base, self.engine = parts, engine
        self._uncond = engine.call(parts.uncond)  # computed on the engine's thread, cached in both

    def uncond(self) -> torch.Tensor:
        return self.base.uncond()

    def embed(self, prompt: str) -> torch.Tensor:
        return self.engine.run_batched("text", self.base.embed_batch, prompt)

    def embed_batch(self, prompts: Sequence[str]) -> torch.Tensor:
        return torch.cat([self.embed(p) for p in prompts])

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.engine.run_batched("vae.encode", self.base.encode_images, images)

    def decode_images(self, latents: torch.Tensor) -> torch.Tensor:
        return self.engine.run_batched("vae.decode", self.base.decode_images, latents)

    def compress(self, fc: float, latents: torch.Tensor) -> torch.Tensor:
        self.base.codec(fc)  # an unknown rate fails here, in the caller's thread
        return self.engine.run_batched(f"codec.encode {fc:g}", partial(self.base.compress, fc), latents)

    def decompress(self, fc: float, seeds: torch.Tensor) -> torch.Tensor:
        self.base.codec(fc)
        return self.engine.run_batched(f"codec.decode {fc:g}", partial(self.base.decompress, fc), seeds)

    def sketch(self, images: torch.Tensor) -> torch.Tensor:
        return self.engine.run_batched("sketch", self.base.sketch, images)


def batched_parts(parts: ModelParts, engine: Engine) -> EngineParts:
    """``EngineParts(parts, engine)`` (the old name)."""
    return EngineParts(parts, engine)
