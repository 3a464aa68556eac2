"""meg-tiny: the procedural shapes data, the architecture, and the shipped weights (fast, offline)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from meg_lab import shapes
from shared.model import meg_tiny
from shared.model.loader import MEG_TINY_DIR


def test_shapes_deterministic_and_streams_disjoint() -> None:
    a_scenes, a = shapes.batch(7, 0, 12)
    b_scenes, b = shapes.batch(7, 0, 12)
    assert [s.caption for s in a_scenes] == [s.caption for s in b_scenes]
    assert torch.equal(a, b)
    assert a.shape == (12, 3, 64, 64) and a.dtype == torch.float32
    assert float(a.min()) >= -1.0 and float(a.max()) <= 1.0
    _, e = shapes.batch(7, 0, 12, stream="eval")
    assert not torch.equal(a, e)
    _, c = shapes.batch(8, 0, 12)
    assert not torch.equal(a, c)


def test_captions_match_pixels() -> None:
    """The captioned background fills the corners' majority and the first shape's colour is at its centre."""
    for i in range(60):
        sc = shapes.scene(3, i)
        img = shapes.render(sc).astype(int)
        assert sc.caption.split()[-1] in (sc.background, "background")
        assert f"{sc.shapes[0].colour} {sc.shapes[0].kind}" in sc.caption
        first = sc.shapes[0]
        cy = int(first.cy) if first.kind != "triangle" else int(first.cy + first.r * 0.2)
        centre = img[cy, int(first.cx)]
        assert np.abs(centre - np.array(shapes.COLOURS[first.colour])).max() <= 2, sc.caption
        border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
        bg = np.array(shapes.BACKGROUNDS[sc.background])
        assert (np.abs(border - bg).max(axis=1) <= 2).mean() > 0.5, sc.caption
        for s in sc.shapes:
            assert s.colour in sc.caption and s.kind in sc.caption


def test_captions_fit_16_tokens() -> None:
    from transformers import BertTokenizerFast

    from shared.model.loader import minilm_dir

    tok = BertTokenizerFast.from_pretrained(minilm_dir(), local_files_only=True)
    caps = [shapes.scene(0, i).caption for i in range(400)] + shapes.all_single_shape_captions()
    assert max(len(tok(c)["input_ids"]) for c in caps) <= meg_tiny.MAX_TOKENS


def test_img2img_inputs() -> None:
    x, src, prompts, targets = shapes.img2img_batch(0, 0, 4)
    assert x.shape == (4, 3, 64, 64)
    for s, p, t in zip(src, prompts, targets):
        assert s != p and t.caption == p


def test_architecture_shapes() -> None:
    vae = meg_tiny.build_vae()
    assert len(vae.config.block_out_channels) == 4 and vae.config.latent_channels == 4
    unet = meg_tiny.build_unet()
    assert unet.config.cross_attention_dim == 384
    with torch.no_grad():
        z = vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist.mode()
        assert z.shape == (1, 4, 8, 8)
        eps = unet(z, torch.tensor([10]), torch.zeros(1, 16, 384)).sample
    assert eps.shape == (1, 4, 8, 8)


shipped = pytest.mark.skipif(not (MEG_TINY_DIR / "model_index.json").exists(), reason="meg-tiny weights not built")


@shipped
def test_shipped_weights_size() -> None:
    total = sum(p.stat().st_size for p in MEG_TINY_DIR.rglob("*") if p.is_file())
    assert total <= 40 * 1024 * 1024
    assert not (MEG_TINY_DIR / "text_encoder").exists() and not (MEG_TINY_DIR / "tokenizer").exists()
    for sub in ("unet", "vae"):
        assert (MEG_TINY_DIR / sub / "diffusion_pytorch_model.safetensors").exists()


@shipped
def test_shipped_model_loads_offline_and_generates() -> None:
    from shared.model.loader import load_pipeline

    pipe, meg = load_pipeline()
    assert meg.max_tokens == 16 and meg.image_size == 64 and meg.ue_steps < meg.es_steps
    assert pipe.tokenizer.model_max_length == 16
    assert pipe.text_encoder.config.hidden_size == 384
    img = pipe(prompt="a large red square on a white background", num_inference_steps=4,
               guidance_scale=meg.guidance, height=64, width=64, generator=torch.Generator().manual_seed(0),
               output_type="pt").images
    assert img.shape == (1, 3, 64, 64)
    assert torch.isfinite(img).all()


@shipped
def test_shipped_classifier_reads_captions_from_renders() -> None:
    """The attribute CNN shipped beside meg-tiny recovers shape and colour of held-out single-shape renders."""
    from meg_lab.eval_model import SHIPPED_CLASSIFIER, classifier_accuracy, load_or_train_classifier

    if not SHIPPED_CLASSIFIER.exists():
        pytest.skip("no shipped attribute classifier")
    net, _ = load_or_train_classifier(None)
    assert classifier_accuracy(net, seed=5, n=60) >= 0.95
