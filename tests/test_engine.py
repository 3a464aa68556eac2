"""The batching engine: DDIM alone equals diffusers' pipelines; a request's latent from a mixed, continuously
batched run equals it alone; cancelled / late requests stop within one step; a full queue refuses at once."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import pytest
import torch

from edge_server.engine import Cancelled, Engine, QueueFull
from shared.model.denoise import DenoiseJob, DenoiseModel, DenoiseState, denoise_alone
from shared.model.ops import DeadlineExceeded, ModelOps, ModelParts
from shared.protocol.params import Params


@pytest.fixture(scope="module")
def parts(random_model_dir: Path) -> ModelParts:
    return ModelParts.load(str(random_model_dir), "cpu")


@pytest.fixture(scope="module")
def model(parts: ModelParts) -> DenoiseModel:
    return DenoiseModel.from_parts(parts)


def _pipeline_latent(parts: ModelParts, job: DenoiseJob) -> torch.Tensor:
    """The reference: diffusers' own pipeline, ``output_type="latent"``."""
    pipe = parts.fresh_pipeline(img2img=job.init_latent is not None)
    common = {"prompt_embeds": job.cond, "negative_prompt_embeds": parts.uncond(), "guidance_scale": job.guidance,
              "num_inference_steps": job.steps, "generator": torch.Generator("cpu").manual_seed(job.seed),
              "output_type": "latent"}
    if job.init_latent is None:
        size = parts.geometry.image_size
        return pipe(height=size, width=size, **common).images
    return pipe(image=job.init_latent, strength=job.strength, **common).images


@pytest.mark.parametrize("guidance", [1.0, 6.0])
@pytest.mark.parametrize("task", ["txt2img", "img2img"])
def test_alone_equals_the_diffusers_pipeline(parts: ModelParts, task: str, guidance: float) -> None:
    init = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(1)) if task == "img2img" else None
    job = DenoiseJob(cond=parts.embed("a blue square"), steps=8, guidance=guidance, seed=11, init_latent=init,
                     strength=0.7)
    ours = ModelOps(parts, Params())._denoise_alone(job)
    ref = _pipeline_latent(parts, job)
    assert ours.shape == ref.shape == (1, 4, 4, 4)
    torch.testing.assert_close(ours, ref.float(), rtol=1e-5, atol=1e-6)


def _jobs(parts: ModelParts) -> list[DenoiseJob]:
    """Different steps, tasks, strengths, guidance (1 or 2 UNet rows) and seeds."""
    g = torch.Generator().manual_seed(5)
    init = [torch.randn(1, 4, 4, 4, generator=g) for _ in range(2)]
    prompts = ["a red circle", "two green stripes", "a yellow star", "noise", "a cat"]
    conds = [parts.embed(p) for p in prompts]
    return [
        DenoiseJob(cond=conds[0], steps=12, guidance=7.5, seed=1),
        DenoiseJob(cond=conds[1], steps=5, guidance=1.0, seed=2),
        DenoiseJob(cond=conds[2], steps=20, guidance=3.0, seed=3, init_latent=init[0], strength=0.55),
        DenoiseJob(cond=conds[3], steps=9, guidance=7.5, seed=4, init_latent=init[1], strength=0.9),
        DenoiseJob(cond=conds[4], steps=15, guidance=7.5, seed=5),  # joins mid-flight
    ]


class StepLog:
    """Step observer: per-job steps done and the batches seen."""

    def __init__(self) -> None:
        self.steps: Counter[int] = Counter()
        self.batches: list[list[int]] = []
        self.event = threading.Event()

    def __call__(self, states: Sequence[DenoiseState]) -> None:
        self.batches.append([id(s.job) for s in states])
        for s in states:
            self.steps[id(s.job)] += 1
        self.event.set()


def _submit(engine: Engine, job: DenoiseJob, out: dict[int, object], cancel: threading.Event | None = None) -> threading.Thread:
    def run() -> None:
        try:
            out[id(job)] = engine.submit(job, cancel)
        except Exception as exc:  # noqa: BLE001
            out[id(job)] = exc

    t = threading.Thread(target=run)
    t.start()
    return t


def test_mixed_continuous_batch_equals_each_request_alone(parts: ModelParts, model: DenoiseModel) -> None:
    jobs = _jobs(parts)
    alone = {id(j): denoise_alone(model, j) for j in jobs}
    engine = Engine(model, max_batch=8, max_queue=8)
    log = StepLog()
    engine.step_observers.append(log)
    out: dict[int, object] = {}
    try:
        threads = [_submit(engine, j, out) for j in jobs[:4]]
        deadline = time.monotonic() + 60
        while log.steps[id(jobs[0])] < 3:  # the late one joins a batch that is already 3 steps in
            assert time.monotonic() < deadline
            log.event.wait(1)
            log.event.clear()
        threads.append(_submit(engine, jobs[4], out))
        for t in threads:
            t.join(60)
    finally:
        engine.close()
    for j in jobs:
        got = out[id(j)]
        assert isinstance(got, torch.Tensor), got
        torch.testing.assert_close(got, alone[id(j)], rtol=1e-4, atol=1e-5)
        # img2img runs int(steps * strength) steps of its own schedule; txt2img all of them
        expected = j.steps if j.init_latent is None else min(int(j.steps * j.strength), j.steps)
        assert log.steps[id(j)] == expected
    assert max(len(b) for b in log.batches) >= 4, "the requests never shared a UNet call"
    late = id(jobs[4])
    assert any(late in b and id(jobs[0]) in b for b in log.batches), "the late request never joined the running batch"
    assert engine.unet_calls < sum(log.steps.values())


def test_cancelled_request_stops_within_one_step(parts: ModelParts, model: DenoiseModel) -> None:
    engine = Engine(model, max_batch=4, max_queue=4)
    log = StepLog()
    engine.step_observers.append(log)
    job = DenoiseJob(cond=parts.embed("long"), steps=400, guidance=7.5, seed=0)
    other = DenoiseJob(cond=parts.embed("short"), steps=30, guidance=7.5, seed=1)
    cancel = threading.Event()
    out: dict[int, object] = {}
    try:
        threads = [_submit(engine, job, out, cancel), _submit(engine, other, out)]
        while log.steps[id(job)] < 3:
            log.event.wait(5)
            log.event.clear()
        cancel.set()
        at_cancel = log.steps[id(job)]
        for t in threads:
            t.join(60)
        assert isinstance(out[id(job)], Cancelled)
        assert log.steps[id(job)] - at_cancel <= 1, (at_cancel, log.steps[id(job)])
        assert isinstance(out[id(other)], torch.Tensor)  # the rest of the batch carries on
        assert log.steps[id(other)] == 30
        assert engine.depth() == (0, 0)
    finally:
        engine.close()


def test_deadline_leaves_the_batch(parts: ModelParts, model: DenoiseModel) -> None:
    engine = Engine(model, max_batch=2, max_queue=2)
    log = StepLog()
    engine.step_observers.append(log)
    job = DenoiseJob(cond=parts.embed("late"), steps=400, guidance=7.5, seed=0, deadline=time.monotonic() + 0.3)
    try:
        with pytest.raises(DeadlineExceeded):
            engine.submit(job)
        done = log.steps[id(job)]
        assert 0 < done < 400
        time.sleep(0.2)
        assert log.steps[id(job)] == done and engine.depth() == (0, 0)
    finally:
        engine.close()


def test_full_queue_refuses_at_once_and_bad_jobs_fail_alone(parts: ModelParts, model: DenoiseModel) -> None:
    engine = Engine(model, max_batch=1, max_queue=1)
    log = StepLog()
    engine.step_observers.append(log)
    cond = parts.embed("x")
    cancel = threading.Event()
    out: dict[int, object] = {}
    running = DenoiseJob(cond=cond, steps=400, guidance=7.5, seed=0)
    queued = DenoiseJob(cond=cond, steps=400, guidance=7.5, seed=1)
    try:
        threads = [_submit(engine, running, out, cancel)]
        log.event.wait(30)
        threads.append(_submit(engine, queued, out, cancel))
        while engine.depth() != (1, 1):
            time.sleep(0.01)
        refused: dict[int, object] = {}
        third = DenoiseJob(cond=cond, steps=5, guidance=1.0, seed=2)
        t = _submit(engine, third, refused)
        t.join(5)  # QueueFull comes at once, not when a place frees (the others run 400 steps)
        assert not t.is_alive()
        assert isinstance(refused[id(third)], QueueFull)
        assert "--max-queue 1" in str(refused[id(third)])
        cancel.set()
        for t in threads:
            t.join(60)
        assert all(isinstance(out[id(j)], Cancelled) for j in (running, queued))
        bad = DenoiseJob(cond=cond, steps=1, guidance=1.0, init_latent=torch.zeros(1, 4, 4, 4), strength=0.5)
        with pytest.raises(ValueError, match="no denoising step"):
            engine.submit(bad)
        assert isinstance(engine.submit(third), torch.Tensor)  # still serving
    finally:
        engine.close()


# --- through gRPC: admission and cancellation at the servicer ------------------------------------------
@pytest.fixture()
def small_es(parts: ModelParts) -> Iterator[tuple[str, object]]:
    """An ES with max batch 1 and max queue 1 on a free port (its servicer, to watch the engine)."""
    from edge_server.server import create_server
    from edge_server.settings import EdgeSettings
    from tests.conftest import BackgroundLoop

    bg = BackgroundLoop()
    server, port, _ = bg.run(create_server(EdgeSettings(listen="127.0.0.1:0", max_batch=1, max_queue=1), parts))  # type: ignore[misc]
    try:
        yield f"127.0.0.1:{port}", server.meg_servicer  # type: ignore[attr-defined]
    finally:
        bg.run(server.stop(0))
        server.meg_servicer.close()  # type: ignore[attr-defined]
        bg.close()


def _full_es_request(steps: int, seed: int) -> object:
    from shared.pb import edge_pb2

    return edge_pb2.SegmentRequest(protocol="FULL-ES", segment=0, task="txt2img", prompt="a circle",
                                   params=edge_pb2.GenerationParams(seed=seed, steps=steps))


def test_rpc_admission_and_cancellation(small_es: tuple[str, object]) -> None:
    from shared.pb import edge_pb2_grpc

    addr, servicer = small_es
    engine: Engine = servicer.engine  # type: ignore[attr-defined]
    log = StepLog()
    engine.step_observers.append(log)
    with grpc.insecure_channel(addr) as ch:
        stub = edge_pb2_grpc.EdgeServiceStub(ch)
        first = stub.RunSegment.future(_full_es_request(450, 0), timeout=120)
        second = stub.RunSegment.future(_full_es_request(450, 1), timeout=120)
        while engine.depth() != (1, 1):
            time.sleep(0.01)
        with pytest.raises(grpc.RpcError) as err:
            stub.RunSegment(_full_es_request(5, 2), timeout=5)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "at capacity" in err.value.details() and "--max-queue 1" in err.value.details()
        first.cancel()
        second.cancel()
        deadline = time.monotonic() + 30
        while engine.depth() != (0, 0) or engine.admitted:
            assert time.monotonic() < deadline, "a cancelled generation kept its place"
            time.sleep(0.02)
        assert sum(log.steps.values()) < 450  # their compute stopped
        reply = stub.RunSegment(_full_es_request(3, 3), timeout=60)  # the places are free again
        assert [t.name for t in reply.tensors] == ["image"]
    metrics = servicer.metrics  # type: ignore[attr-defined]
    assert metrics.requests.labels("FULL-ES", "CANCELLED")._value.get() == 2
    assert metrics.requests.labels("FULL-ES", "RESOURCE_EXHAUSTED")._value.get() == 1
    assert metrics.images.labels("FULL-ES")._value.get() == 1


def test_every_part_batches_on_the_engine_and_equals_one_by_one(parts: ModelParts, model: DenoiseModel) -> None:
    """T, E, D, C, C⁻¹ and S of concurrent requests run on the engine's thread, batched, and each caller gets
    what its input gives alone."""
    from edge_server.engine import EngineParts
    from shared.model.codec import CodecConfig, SeedCodec

    g = parts.geometry
    n = g.latent_channels * g.latent_size ** 2
    parts.codecs[0.5] = SeedCodec(CodecConfig.make(n, 0.5, "residual", hidden=32)).eval()
    engine = Engine(model, max_batch=2, max_queue=2)
    view = EngineParts(parts, engine)
    threads_seen: set[int] = set()
    seen_fn = parts.decode_images

    def spy(z: torch.Tensor) -> torch.Tensor:
        threads_seen.add(threading.get_ident())
        return seen_fn(z)

    gen = torch.Generator().manual_seed(0)
    inputs = {
        "embed": [f"prompt {i}" for i in range(6)],
        "encode_images": [torch.rand(1, 3, g.image_size, g.image_size, generator=gen) for _ in range(6)],
        "decode_images": [torch.randn(1, g.latent_channels, g.latent_size, g.latent_size, generator=gen)
                          for _ in range(6)],
        "compress": [torch.randn(1, g.latent_channels, g.latent_size, g.latent_size, generator=gen) for _ in range(6)],
        "decompress": [torch.randn(1, round(0.5 * n), generator=gen) for _ in range(6)],
        "sketch": [torch.rand(1, 3, g.image_size, g.image_size, generator=gen) for _ in range(6)],
    }

    def via(view_or_parts: ModelParts, name: str, x: object) -> torch.Tensor:
        if name in ("compress", "decompress"):
            return getattr(view_or_parts, name)(0.5, x)  # type: ignore[no-any-return]
        return getattr(view_or_parts, name)(x)  # type: ignore[no-any-return]

    with torch.no_grad():
        alone = {(k, i): via(parts, k, x) for k, xs in inputs.items() for i, x in enumerate(xs)}
    out: dict[tuple[str, int], torch.Tensor] = {}
    busy = threading.Thread(target=engine.submit, args=(DenoiseJob(cond=parts.embed("x"), steps=60, guidance=7.5),))
    try:
        parts.decode_images = spy  # type: ignore[method-assign]
        busy.start()  # calls that arrive during a UNet step wait for the next gap and go together
        threads = [threading.Thread(target=lambda k=k, i=i, x=x: out.__setitem__((k, i), via(view, k, x)))
                   for k, xs in inputs.items() for i, x in enumerate(xs)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        busy.join(60)
    finally:
        del parts.decode_images
        engine.close()
        del parts.codecs[0.5]
    assert threads_seen == {engine._thread.ident}
    batches = engine.side_batches
    for name in ("text", "vae.encode", "vae.decode", "codec.encode 0.5", "codec.decode 0.5", "sketch"):
        assert sum(batches[name]) == 6 and max(batches[name]) > 1, (name, batches)
    assert out.keys() == alone.keys()
    for key, want in alone.items():
        torch.testing.assert_close(out[key], want, rtol=1e-4, atol=1e-5, msg=lambda m, key=key: f"{key}: {m}")
    ops = ModelOps(view, Params())
    assert ops.parts.geometry == parts.geometry and ops.parts.pipe.unet is parts.pipe.unet


# --- the engine's thread gets the machine's cores (issue 24) -----------------------------------------------
@pytest.fixture(scope="module")
def engine_cpu(random_model_dir: Path) -> dict[str, float]:
    """What :mod:`tests.support.engine_cpu` measures in a fresh ES process (one request served first)."""
    import json
    import subprocess
    import sys

    if (os.cpu_count() or 1) < 2:
        pytest.skip("one CPU core: there is no second core for the engine's kernels to use")
    done = subprocess.run([sys.executable, "-m", "tests.support.engine_cpu", str(random_model_dir)],
                          check=False, capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_the_engines_openmp_team_is_not_throttled(engine_cpu: dict[str, float]) -> None:
    """Before the fix the event loop, the loader and the worker threads kept OpenMP teams of their own, so the
    engine's team outnumbered the cores and its partner thread slept between kernels (~3 sleeps per matmul)."""
    assert engine_cpu["sleeps_per_call"] < 0.5, engine_cpu


def test_a_kernel_from_the_engines_thread_uses_more_than_one_core(engine_cpu: dict[str, float]) -> None:
    load = engine_cpu["load"]
    if load > (os.cpu_count() or 1) - 0.5:
        pytest.skip(f"the machine is busy (load average {load:.1f} on {os.cpu_count()} cores): wall-clock cores "
                    "would measure the other tenants; the throttling test above checks the cause either way")
    assert engine_cpu["cores"] > 1.3, engine_cpu


# --- a step that raises (issue 23 item 13) -----------------------------------------------------------------
class _FlakyUNet:
    """The UNet, except that calls from ``fail_from`` on raise; ``on_call`` runs before every call."""

    def __init__(self, unet: torch.nn.Module) -> None:
        self.unet, self.dtype = unet, unet.dtype
        self.calls = 0
        self.fail_from: int | None = None
        self.on_call: list[object] = []

    def __call__(self, *args: object, **kwargs: object) -> object:
        self.calls += 1
        for f in self.on_call:
            f(self.calls)  # type: ignore[operator]
        if self.fail_from is not None and self.calls >= self.fail_from:
            raise RuntimeError("CUDA error: an illegal memory access was encountered (injected)")
        return self.unet(*args, **kwargs)


def test_a_failing_step_fails_its_requests_and_the_engine_goes_on(parts: ModelParts) -> None:
    """A request dropped (cancelled) just before a step that raises used to make the failure path call
    ``set_exception`` on its future twice: InvalidStateError killed the engine thread and every later request
    hung. Now the step's requests fail with EngineFailed, the dropped one stays Cancelled, the engine serves on;
    after ``max_step_failures`` failures in a row it gives up (healthy False, EngineClosed, on_failure)."""
    from edge_server.engine import EngineClosed, EngineFailed

    flaky = _FlakyUNet(parts.pipe.unet)
    model = DenoiseModel(flaky, parts.pipe.scheduler.config, parts.uncond(), (4, 4, 4), torch.device("cpu"))  # type: ignore[arg-type]
    engine = Engine(model, max_batch=4, max_queue=4, max_step_failures=2)
    gave_up: list[str] = []
    engine.on_failure.append(gave_up.append)
    cond = parts.embed("x")
    cancel = threading.Event()
    out: dict[int, object] = {}
    dropped = DenoiseJob(cond=cond, steps=50, guidance=7.5, seed=0)
    victim = DenoiseJob(cond=cond, steps=50, guidance=7.5, seed=1)

    def arm(n: int) -> None:
        if n == 3:
            cancel.set()  # `dropped` leaves at the next step, which fails
            flaky.fail_from = 4

    flaky.on_call.append(arm)
    try:
        threads = [_submit(engine, dropped, out, cancel), _submit(engine, victim, out)]
        for t in threads:
            t.join(60)
        assert isinstance(out[id(dropped)], Cancelled), out
        assert isinstance(out[id(victim)], EngineFailed) and "injected" in str(out[id(victim)])
        assert engine.healthy and engine._thread.is_alive()
        flaky.fail_from = None
        assert isinstance(engine.submit(DenoiseJob(cond=cond, steps=3, guidance=7.5, seed=2)), torch.Tensor)
        flaky.fail_from = 0  # from now on every step fails: two in a row and the engine gives up
        for seed in (3, 4):
            with pytest.raises(EngineFailed):
                engine.submit(DenoiseJob(cond=cond, steps=3, guidance=7.5, seed=seed))
        assert not engine.healthy and gave_up and "2 batched steps in a row failed" in gave_up[0]
        with pytest.raises(EngineClosed, match="engine stopped"):
            engine.submit(DenoiseJob(cond=cond, steps=3, guidance=7.5, seed=5))
    finally:
        engine.close()


def test_the_equal_batcher_groups_only_equal_requests(parts: ModelParts, model: DenoiseModel) -> None:
    """``batching="equal"`` (bench_mixed's Triton-style baseline): a batch forms only when none runs, of requests
    equal to the oldest; a different request waits for the batch to end instead of joining it."""
    engine = Engine(model, max_batch=4, max_queue=8, batching="equal")
    batches: list[tuple[int, ...]] = []
    engine.step_observers.append(lambda group: batches.append(tuple(s.job.steps for s in group)))
    cond = parts.embed("x")
    jobs = [DenoiseJob(cond=cond, steps=n, guidance=7.5, seed=i) for i, n in enumerate((6, 6, 3, 6))]
    out: dict[int, object] = {}
    try:
        threads = [_submit(engine, j, out) for j in jobs]
        for t in threads:
            t.join(60)
    finally:
        engine.close()
    assert all(isinstance(out[id(j)], torch.Tensor) for j in jobs)
    assert all(len(set(b)) == 1 for b in batches), batches  # never mixed
    assert sum(len(b) for b in batches) == 6 * 3 + 3
    with pytest.raises(ValueError, match="batching"):
        Engine(model, batching="sometimes")
