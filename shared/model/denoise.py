"""DDIM denoising as per-request state plus one batched step: the single home of the sampling math.

A :class:`DenoiseState` is one request's DDIM run (its own scheduler, seeded noise, prompt rows, position in
its own schedule); :func:`step` advances any number of states with **one** UNet call, each at its own
timestep (the UNet takes a per-sample timestep vector ``[B]``). Running one state alone
(:func:`denoise_alone`, what :class:`shared.model.ops.ModelOps` does by default) and running it inside a
batch (:mod:`edge_server.engine`) is the same code, and both reproduce diffusers'
``StableDiffusionPipeline`` / ``StableDiffusionImg2ImgPipeline`` with ``output_type="latent"``:

* txt2img: ``randn_tensor([1, C, h, w], Generator("cpu").manual_seed(seed))`` × ``init_noise_sigma``;
* img2img: the pipeline's ``get_timesteps`` arithmetic (``init = min(int(steps·strength), steps)``, start
  at ``steps - init``) and ``scheduler.add_noise(init_latent, noise, t_start)``;
* classifier-free guidance when ``guidance > 1``: rows ``[uncond, cond]``,
  ``ε = ε_u + g·(ε_c − ε_u)`` (so guidance doubles a request's rows in the batch);
* latents stay in the UNet's dtype (fp16 on CUDA) between steps, as in the pipeline;
* txt2img may run only steps ``[start_step, end_step)`` of its ``steps``-step schedule (diffusers'
  ``denoising_end`` / ``denoising_start``): DDIM with ``eta = 0`` keeps no state between steps beyond the
  latent, so running ``[0, k)`` and then ``[k, n)`` from its result equals running ``[0, n)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from diffusers import DDIMScheduler
from diffusers.utils.torch_utils import randn_tensor

from shared.protocol.schedule import first_step

if TYPE_CHECKING:
    from shared.model.ops import ModelParts


@dataclass
class DenoiseJob:
    """One DDIM denoising, the unit the ES's batching engine schedules (and what runs alone elsewhere).

    ``cond``: ``[1, L, D]`` prompt embedding. ``init_latent``: ``[1, C, h, w]`` for img2img (noised to
    ``strength``), ``None`` for txt2img. ``noise``: the starting noise ``[1, C, h, w]``; ``None`` draws it
    from ``seed`` with the model's full latent shape (a cooperative ES passes its window of the shared
    noise, so ``h, w`` may be smaller than the model's latent). ``deadline`` is a ``time.monotonic()`` value.
    """

    cond: torch.Tensor
    steps: int
    guidance: float
    seed: int = 0
    init_latent: torch.Tensor | None = None
    strength: float = 0.0
    noise: torch.Tensor | None = None
    deadline: float | None = None
    #: txt2img only: run steps ``[start_step, end_step)`` of the ``steps``-step schedule (``None``: to the end).
    #: With ``start_step > 0``, ``noise`` is the latent part-way through the schedule, used as it is.
    start_step: int = 0
    end_step: int | None = None


#: Runs a :class:`DenoiseJob` and returns its latent ``[1, C, h, w]`` (float32, CPU).
Denoiser = Callable[[DenoiseJob], torch.Tensor]



class DenoiseModel:
    """What DDIM needs of a loaded pipeline: the UNet, the scheduler config, the unconditional embedding
    ``[1, L, D]`` and the model's full latent shape ``(C, h, w)`` (a job's ``noise`` may be smaller)."""

    def __init__(self, unet: torch.nn.Module, scheduler_config: object, uncond: torch.Tensor,
                 latent_shape: tuple[int, int, int], device: torch.device) -> None:
        self.unet = unet
        self.scheduler_config = scheduler_config
        self.dtype: torch.dtype = unet.dtype  # type: ignore[assignment]
        self.device = torch.device(device)
        self.uncond = uncond.to(self.device, self.dtype)
        self.latent_shape = latent_shape

    @classmethod
    def from_parts(cls, parts: ModelParts) -> DenoiseModel:
        g = parts.geometry
        return cls(parts.pipe.unet, parts.pipe.scheduler.config, parts.uncond(),
                   (g.latent_channels, g.latent_size, g.latent_size), parts.device)


@dataclass
class DenoiseState:
    """One request's DDIM run. ``latents``: ``[1, C, h, w]`` in the UNet dtype; ``embeds``: ``[1, L, D]``
    (cond) or ``[2, L, D]`` (uncond, cond) with guidance; ``timesteps``: this request's own schedule."""

    job: DenoiseJob
    scheduler: DDIMScheduler
    timesteps: torch.Tensor
    latents: torch.Tensor
    embeds: torch.Tensor
    guided: bool
    index: int = 0
    #: set by :mod:`edge_server.engine` (the request's cancel flag, its result future, ...)
    tags: dict[str, object] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.index >= len(self.timesteps)

    @property
    def rows(self) -> int:
        """UNet batch rows this request takes per step (2 with guidance)."""
        return 2 if self.guided else 1

    @property
    def key(self) -> tuple[int, ...]:
        """Requests batch together when their latent and embedding shapes match."""
        return (*self.latents.shape[1:], *self.embeds.shape[1:])

    def result(self) -> torch.Tensor:
        """The final latent ``[1, C, h, w]``, float32 on the CPU."""
        return self.latents.float().cpu()


def start(model: DenoiseModel, job: DenoiseJob) -> DenoiseState:
    """Set up ``job``'s schedule and starting latent exactly as the diffusers pipelines do."""
    if job.steps < 1:
        raise ValueError(f"steps must be at least 1, got {job.steps}")
    device, dtype = model.device, model.dtype
    scheduler = DDIMScheduler.from_config(model.scheduler_config)
    scheduler.set_timesteps(job.steps, device=device)
    generator = torch.Generator("cpu").manual_seed(job.seed)
    if not 0 <= job.start_step < (job.end_step if job.end_step is not None else job.steps) <= job.steps:
        raise ValueError(f"steps [{job.start_step}, {job.end_step}) are not a non-empty part of a {job.steps}-step "
                         "schedule")
    if job.start_step and job.init_latent is not None:
        raise ValueError("start_step is for txt2img only (img2img starts where its strength enters the schedule)")
    if job.init_latent is None:
        timesteps = scheduler.timesteps[job.start_step * scheduler.order:
                                        None if job.end_step is None else job.end_step * scheduler.order]
        if job.start_step > 0:  # the latent part-way through the schedule, as it is (diffusers' denoising_start)
            if job.noise is None:
                raise ValueError("start_step > 0 needs the latent to start from in `noise`")
            latents = job.noise.to(device, dtype)
        else:
            if job.noise is not None:
                noise = job.noise.to(device, dtype)
            else:
                noise = randn_tensor((1, *model.latent_shape), generator=generator, device=device, dtype=dtype)
            latents = noise * scheduler.init_noise_sigma
    else:
        t_start = first_step(job.steps, job.strength)
        timesteps = scheduler.timesteps[t_start * scheduler.order:
                                        None if job.end_step is None else job.end_step * scheduler.order]
        if len(timesteps) == 0:
            raise ValueError(f"img2img with {job.steps} steps at strength {job.strength:g} runs no denoising step; "
                             "raise steps or strength")
        if hasattr(scheduler, "set_begin_index"):  # as the pipeline does (DDIM has none)
            scheduler.set_begin_index(t_start * scheduler.order)
        init = job.init_latent.to(device, dtype)
        noise = job.noise.to(device, dtype) if job.noise is not None else randn_tensor(
            tuple(init.shape), generator=generator, device=device, dtype=dtype)
        latents = scheduler.add_noise(init, noise, timesteps[:1])
    guided = job.guidance > 1
    cond = job.cond.to(device, dtype)
    embeds = torch.cat([model.uncond, cond]) if guided else cond
    return DenoiseState(job, scheduler, timesteps, latents, embeds, guided)


@torch.no_grad()
def step(model: DenoiseModel, states: Sequence[DenoiseState]) -> None:
    """Advance every state one step of its own schedule with one UNet call on ``Σ rows`` samples.

    All ``states`` must share :attr:`DenoiseState.key` and not be :attr:`~DenoiseState.done`.
    """
    latent_in, embeds, ts = [], [], []
    for s in states:
        t = s.timesteps[s.index]
        x = s.scheduler.scale_model_input(s.latents, t)
        latent_in += [x] * s.rows
        embeds.append(s.embeds)
        ts.append(t.reshape(1).expand(s.rows))
    eps = model.unet(torch.cat(latent_in), torch.cat(ts), encoder_hidden_states=torch.cat(embeds),
                     return_dict=False)[0]
    row = 0
    for s in states:
        e = eps[row:row + s.rows]
        row += s.rows
        if s.guided:
            e_uncond, e_cond = e.chunk(2)
            e = e_uncond + s.job.guidance * (e_cond - e_uncond)
        t = s.timesteps[s.index]
        s.latents = s.scheduler.step(e, t, s.latents, eta=0.0, return_dict=False)[0]
        s.index += 1


def denoise_alone(model: DenoiseModel, job: DenoiseJob,
                  after_step: Callable[[DenoiseState], None] | None = None) -> torch.Tensor:
    """Run ``job`` by itself (batch 1, or 2 rows with guidance) -> latent ``[1, C, h, w]`` float32 CPU.
    ``after_step`` runs after every step (deadline checks raise from it)."""
    state = start(model, job)
    while not state.done:
        step(model, [state])
        if after_step is not None:
            after_step(state)
    return state.result()
