"""Procedural caption -> image data for meg-tiny ("shapes on a background"), deterministic from a seed.

Every sample is a :class:`Scene`: one to three flat shapes (circle, square, triangle) with a colour, a size
and a position on a plain background, plus a plain-English caption with at most 16 MiniLM tokens, e.g.

* ``"a small red circle on a white background"``                       (one shape)
* ``"a large blue square above a yellow triangle on a black background"`` (two shapes; above/below/beside)
* ``"a red circle, a blue square and a green triangle on gray"``        (three shapes)

Images are rendered anti-aliased (4x supersampling) as ``uint8 [64, 64, 3]`` arrays or as float tensors
``[B, 3, 64, 64]`` in ``[-1, 1]`` (the diffusers convention). Nothing is stored on disk: a sample is a pure
function of ``(seed, stream, index)`` so the training and the evaluation sets are disjoint streams.

The same generator gives input images for text-guided img2img (:func:`img2img_batch`): a rendered scene and
an edited caption that recolours its first shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (250, 140, 20),
    "yellow": (240, 220, 30),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "purple": (140, 50, 180),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "gray": (128, 128, 128),
}
BACKGROUND_NAMES: tuple[str, ...] = tuple(BACKGROUNDS)
SIZES: dict[str, tuple[float, float]] = {"small": (7.0, 10.0), "large": (14.0, 18.0)}  # half-extent, pixels
RELATIONS: tuple[str, ...] = ("above", "below", "beside")

#: Named, disjoint sample streams (training never sees an evaluation sample).
STREAMS: dict[str, int] = {"train": 0, "eval": 1, "img2img": 2, "classifier": 3, "fid_ref": 4}

IMAGE_SIZE = 64


@dataclass(frozen=True)
class Shape:
    """One flat shape: ``kind`` in :data:`SHAPES`, ``colour`` in :data:`COLOURS`, centre ``(cx, cy)`` and
    half-extent ``r`` in pixels of the 64x64 image, ``size`` the caption word ("small"/"large")."""

    kind: str
    colour: str
    size: str
    cx: float
    cy: float
    r: float


@dataclass(frozen=True)
class Scene:
    """A background colour name, 1-3 shapes (first-named first) and the caption describing them."""

    background: str
    shapes: tuple[Shape, ...]
    caption: str = field(default="")

    @property
    def label(self) -> tuple[int, int]:
        """``(shape index, colour index)`` of the first-named shape (the adherence target)."""
        s = self.shapes[0]
        return SHAPES.index(s.kind), COLOUR_NAMES.index(s.colour)


def _rng(seed: int, stream: str, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), STREAMS[stream], int(index)])


def _pick(rng: np.random.Generator, options: tuple[str, ...], exclude: tuple[str, ...] = ()) -> str:
    allowed = [o for o in options if o not in exclude]
    return allowed[int(rng.integers(len(allowed)))]


def _radius(rng: np.random.Generator, size: str) -> float:
    lo, hi = SIZES[size]
    return float(rng.uniform(lo, hi))


def _extent(kind: str, r: float) -> float:
    """Half-width of the shape's bounding box (triangles are drawn slightly larger to match areas)."""
    return r * (1.15 if kind == "triangle" else 1.0)


def _place(rng: np.random.Generator, kinds: list[str], radii: list[float], relation: str | None) -> list[tuple[float, float]]:
    """Sample non-overlapping centres inside the frame that satisfy ``relation`` (shape 0 vs shape 1)."""
    margin = 1.5
    ext = [_extent(k, r) for k, r in zip(kinds, radii)]
    for _ in range(2000):
        pts = [(float(rng.uniform(e + margin, IMAGE_SIZE - e - margin)),
                float(rng.uniform(e + margin, IMAGE_SIZE - e - margin))) for e in ext]
        ok = True
        for i in range(len(pts)):
            for j in range(i + 1, len(pts)):
                dx, dy = abs(pts[i][0] - pts[j][0]), abs(pts[i][1] - pts[j][1])
                if max(dx, dy) < ext[i] + ext[j] + 2.0:
                    ok = False
        if ok and relation is not None:
            (x0, y0), (x1, y1) = pts[0], pts[1]
            if relation == "above":
                ok = y1 - y0 >= ext[0] + ext[1] + 2.0 and abs(x1 - x0) < (y1 - y0)
            elif relation == "below":
                ok = y0 - y1 >= ext[0] + ext[1] + 2.0 and abs(x1 - x0) < (y0 - y1)
            else:  # beside
                ok = abs(x1 - x0) >= ext[0] + ext[1] + 2.0 and abs(y1 - y0) < 0.5 * abs(x1 - x0)
        if ok:
            return pts
    raise RuntimeError("could not place shapes")  # pragma: no cover - never with these sizes


def sample_scene(rng: np.random.Generator, n_shapes: int | None = None) -> Scene:
    """Draw one scene. ``n_shapes`` None: 1, 2 or 3 shapes with probabilities 0.5 / 0.35 / 0.15."""
    if n_shapes is None:
        n_shapes = int(rng.choice([1, 2, 3], p=[0.5, 0.35, 0.15]))
    bg = _pick(rng, BACKGROUND_NAMES)
    kinds = [_pick(rng, SHAPES) for _ in range(n_shapes)]
    colours = [_pick(rng, COLOUR_NAMES) for _ in range(n_shapes)]
    if n_shapes == 3:
        sizes = ["small"] * 3
    else:
        sizes = [_pick(rng, tuple(SIZES)) for _ in range(n_shapes)]
    radii = [_radius(rng, s) for s in sizes]
    if n_shapes == 2:  # two shapes must fit above/beside each other: large ones are drawn at 11.5-12.5
        radii = [r if z == "small" else 11.5 + (r - SIZES["large"][0]) / 4.0 for z, r in zip(sizes, radii)]
    relation = _pick(rng, RELATIONS) if n_shapes == 2 else None
    pts = _place(rng, kinds, radii, relation)
    shapes = tuple(Shape(k, c, s, x, y, r) for k, c, s, (x, y), r in zip(kinds, colours, sizes, pts, radii))
    return Scene(bg, shapes, caption_for(bg, shapes, relation))


def _a(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption_for(background: str, shapes: tuple[Shape, ...], relation: str | None = None) -> str:
    """Plain-English caption (<= 14 words, <= 16 MiniLM tokens with [CLS]/[SEP])."""
    if len(shapes) == 1:
        s = shapes[0]
        return f"a {s.size} {s.colour} {s.kind} on a {background} background"
    if len(shapes) == 2:
        a, b = shapes
        return f"a {a.size} {a.colour} {a.kind} {relation} {_a(b.colour)} {b.colour} {b.kind} on a {background} background"
    parts = [f"{_a(s.colour)} {s.colour} {s.kind}" for s in shapes]
    return f"{parts[0]}, {parts[1]} and {parts[2]} on {background}"


def scene(seed: int, index: int, stream: str = "train", n_shapes: int | None = None) -> Scene:
    """The deterministic scene number ``index`` of stream ``stream`` for ``seed``."""
    return sample_scene(_rng(seed, stream, index), n_shapes)


_SS = 4  # supersampling factor
_GRID = (np.arange(IMAGE_SIZE * _SS, dtype=np.float32) + 0.5) / _SS


def _mask(s: Shape) -> np.ndarray:
    """Boolean supersampled mask ``[256, 256]`` of one shape."""
    x = _GRID[None, :]
    y = _GRID[:, None]
    if s.kind == "circle":
        return (x - s.cx) ** 2 + (y - s.cy) ** 2 <= s.r**2
    if s.kind == "square":
        return (np.abs(x - s.cx) <= s.r * 0.9) & (np.abs(y - s.cy) <= s.r * 0.9)
    # upward equilateral triangle inscribed in a circle of radius 1.15 r
    R = _extent("triangle", s.r)
    top = s.cy - R
    bottom = s.cy + R * 0.5
    half_w = R * np.sqrt(3) / 2
    t = (y - top) / (bottom - top)  # 0 at apex, 1 at base
    return (t >= 0) & (t <= 1) & (np.abs(x - s.cx) <= t * half_w)


def render(sc: Scene) -> np.ndarray:
    """Render a scene to ``uint8 [64, 64, 3]`` (anti-aliased by 4x supersampling)."""
    n = IMAGE_SIZE * _SS
    img = np.empty((n, n, 3), dtype=np.float32)
    img[:] = BACKGROUNDS[sc.background]
    for s in reversed(sc.shapes):  # first-named shape on top
        img[_mask(s)] = COLOURS[s.colour]
    img = img.reshape(IMAGE_SIZE, _SS, IMAGE_SIZE, _SS, 3).mean(axis=(1, 3))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """``uint8 [B, 64, 64, 3]`` -> float ``[B, 3, 64, 64]`` in ``[-1, 1]``."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def batch(seed: int, start: int, count: int, stream: str = "train", n_shapes: int | None = None
          ) -> tuple[list[Scene], torch.Tensor]:
    """Scenes ``start .. start+count-1`` of a stream and their images ``[count, 3, 64, 64]`` in ``[-1, 1]``."""
    scenes = [scene(seed, i, stream, n_shapes) for i in range(start, start + count)]
    images = np.stack([render(s) for s in scenes])
    return scenes, to_tensor(images)


def recolour(sc: Scene, colour: str) -> Scene:
    """The same scene with its first-named shape recoloured (caption rewritten accordingly)."""
    first = sc.shapes[0]
    new_first = Shape(first.kind, colour, first.size, first.cx, first.cy, first.r)
    if len(sc.shapes) == 3:
        old, new = f"{_a(first.colour)} {first.colour} {first.kind}", f"{_a(colour)} {colour} {first.kind}"
    else:
        old, new = f"{first.colour} {first.kind}", f"{colour} {first.kind}"
    caption = sc.caption.replace(old, new, 1)
    return Scene(sc.background, (new_first,) + sc.shapes[1:], caption)


def img2img_batch(seed: int, start: int, count: int, n_shapes: int | None = 1
                  ) -> tuple[torch.Tensor, list[str], list[str], list[Scene]]:
    """Inputs for text-guided img2img.

    Returns ``(init_images [count, 3, 64, 64] in [-1, 1], source captions, edit prompts, target scenes)``:
    each edit prompt is the source caption with the first-named shape recoloured (a different colour),
    and the target scene is what a perfect edit would render.
    """
    scenes, images = batch(seed, start, count, stream="img2img", n_shapes=n_shapes)
    prompts, targets = [], []
    for i, sc in enumerate(scenes):
        rng = _rng(seed, "img2img", 10_000_000 + start + i)
        new = _pick(rng, COLOUR_NAMES, exclude=(sc.shapes[0].colour,))
        tgt = recolour(sc, new)
        prompts.append(tgt.caption)
        targets.append(tgt)
    return images, [s.caption for s in scenes], prompts, targets


def all_single_shape_captions() -> list[str]:
    """Every one-shape caption of the grammar (2 sizes x 6 colours x 3 shapes x 3 backgrounds = 108)."""
    return [f"a {z} {c} {k} on a {b} background" for z in SIZES for c in COLOUR_NAMES for k in SHAPES
            for b in BACKGROUND_NAMES]
