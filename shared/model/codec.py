"""Seed compression codec C / C⁻¹ (paper 2, §III-C, Alg. 2, Appendix A), one pair per compression rate fc.

A latent ``[B, C, h, h]`` is flattened to ``n = C·h·h`` values, standardised per dimension (statistics of
the training set, stored with the weights), and encoded to a seed of ``k = round(fc·n)`` real symbols; the
decoder maps a received seed back to a latent. Training runs the seed through the very channel function
the proxy uses (:func:`noisy_channel` mirrors :func:`shared.channel.transmit.transmit` for AWGN: power
normalisation, ``N0 = 10^(−SNR/10)``, de-normalisation) at the training SNR (Table I: 20 dB).

Two designs, both shipped:

- ``paper``: MLP encoder and decoder (Linear–ReLU–Linear, a LayerNorm in front of the decoder), like the
  paper's Table III at our scale. The paper reports an error floor at high SNR: an MLP pair does not
  learn an exact inverse.
- ``residual``: the same MLPs *plus* a linear skip path on each side (``seed = A·x + mlp(x)``,
  ``x̂ = B·seed + mlp'(seed)``). The linear path can represent the best linear code (PCA-like), so the
  floor at high SNR drops to what ``k < n`` symbols inherently lose; at fc = 1 it can be lossless.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

#: Compression rates shipped (paper 2, Table II).
FCS = (0.1, 0.3, 0.5, 0.7, 0.9)
DESIGNS = ("paper", "residual")


@dataclass(frozen=True)
class CodecConfig:
    n: int  # latent values
    k: int  # seed symbols
    hidden: int
    design: str  # "paper" | "residual"
    fc: float
    train_snr_db: float

    @classmethod
    def make(cls, n: int, fc: float, design: str, hidden: int = 512, train_snr_db: float = 20.0) -> CodecConfig:
        if design not in DESIGNS:
            raise ValueError(f"unknown codec design {design!r}; known: {DESIGNS}")
        return cls(n, max(1, round(fc * n)), hidden, design, fc, train_snr_db)


class SeedCodec(nn.Module):
    """``encode``: latent ``[B, C, h, h]`` -> seed ``[B, k]``; ``decode``: seed ``[B, k]`` -> latent ``[B, n]``
    (reshape with the latent shape)."""

    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        self.cfg = cfg
        n, k, hid = cfg.n, cfg.k, cfg.hidden
        self.enc = nn.Sequential(nn.Linear(n, hid), nn.ReLU(), nn.Linear(hid, k))
        self.dec = nn.Sequential(nn.LayerNorm(k), nn.Linear(k, hid), nn.ReLU(), nn.Linear(hid, n))
        if cfg.design == "residual":
            self.enc_skip = nn.Linear(n, k, bias=False)
            self.dec_skip = nn.Linear(k, n)
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.zeros(n))
        self.register_buffer("std", torch.ones(n))

    def encode(self, latent: torch.Tensor) -> torch.Tensor:
        x = (latent.reshape(latent.shape[0], -1) - self.mean) / self.std
        s = self.enc(x)
        return s + self.enc_skip(x) if self.cfg.design == "residual" else s

    def decode(self, seed: torch.Tensor) -> torch.Tensor:
        x = self.dec(seed)
        if self.cfg.design == "residual":
            x = x + self.dec_skip(seed)
        return x * self.std + self.mean

    def parameters_count(self) -> int:
        return sum(p.numel() for p in self.parameters())


def noisy_channel(seed: torch.Tensor, snr_db: float) -> torch.Tensor:
    """Differentiable AWGN link for a batch of seeds ``[B, k]``, as :func:`shared.channel.transmit.transmit` does it:
    per-seed power normalisation, ``N0 = 10^(−SNR/10)``, de-normalisation at the receiver."""
    scale = seed.pow(2).mean(dim=1, keepdim=True).clamp_min(1e-12).sqrt()
    n0 = 10.0 ** (-snr_db / 10.0)
    return seed + torch.randn_like(seed) * scale * math.sqrt(n0)


def file_name(fc: float, design: str) -> str:
    return f"{design}-fc{fc:g}.safetensors"


def save_codec(codec: SeedCodec, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / file_name(codec.cfg.fc, codec.cfg.design)
    save_file({k: v.detach().to(torch.float16).contiguous() for k, v in codec.state_dict().items()}, str(path),
              metadata={"config": json.dumps(asdict(codec.cfg))})
    return path


def load_codec(path: Path, device: torch.device | str = "cpu") -> SeedCodec:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        cfg = CodecConfig(**json.loads(f.metadata()["config"]))
    codec = SeedCodec(cfg)
    codec.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
    return codec.to(device).eval().requires_grad_(False)


def load_codecs(folder: Path, design: str = "residual", device: torch.device | str = "cpu") -> dict[float, SeedCodec]:
    """Every shipped codec of one design in ``folder``, by fc (empty if the folder has none)."""
    out: dict[float, SeedCodec] = {}
    for path in sorted(folder.glob(f"{design}-fc*.safetensors")) if folder.exists() else []:
        codec = load_codec(path, device)
        out[codec.cfg.fc] = codec
    return out
