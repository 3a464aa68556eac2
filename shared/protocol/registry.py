"""The protocols by name (paper 1 §II–III): :data:`PROTOCOLS`, :func:`get_protocol`, :func:`check_prompt`."""

from __future__ import annotations

from shared.protocol.stages import (
    ProtocolError,
    ProtocolSpec,
    Stage,
    each_es,
    each_round,
    es,
    share_es,
    ue,
    ue_each,
    ue_gather,
)
from shared.wire.limits import MAX_PROMPT_CHARS

#: The body of every cooperative round after the first: the UE fuses the ES windows of the previous round
#: (cross-fade, :func:`shared.protocol.tiles.merge`), cuts each ES its window of the fused latent, and ES i runs the
#: round's steps on it (``cond`` stays on the ES from round 0). Written out ``rounds - 1`` times by :func:`plan`.
FUSE_ROUND: tuple[Stage, ...] = each_round(
    ue_gather("merge", "latent_part share", "latent"),
    ue_each("window", "latent share", "latent_in"),
    share_es("denoise_round", "cond share round latent_in", "latent_part"),
)

# Stage lists follow the README's protocol table (paper 1 §II-C, §III): T = encode_prompt, E = encode_image,
# U = denoise (denoise_ue: the UE's weaker budget), D = decode, C / C⁻¹ = compress / decompress, S = sketch,
# K = complete. In txt2img the UE's task inference is the prompt embedding ``cond``; in img2img it is the
# input image's latent ``init_latent`` (sent as the compressed ``init_seed``, with the prompt as text).
PROTOCOLS: dict[str, ProtocolSpec] = {
    spec.name: spec
    for spec in (
        ProtocolSpec(
            "FULL-UE",
            "local: the UE runs everything with its weaker budget; nothing crosses the air",
            {
                "txt2img": (
                    ue("encode_prompt", "prompt", "cond"),
                    ue("denoise_ue", "cond", "latent"),
                    ue("decode", "latent", "image"),
                ),
                "img2img": (
                    ue("encode_prompt", "prompt", "cond"),
                    ue("encode_image", "image_in", "init_latent"),
                    ue("denoise_ue", "cond init_latent", "latent"),
                    ue("decode", "latent", "image"),
                ),
            },
        ),
        ProtocolSpec(
            "FULL-ES",
            "centralized: prompt (and input pixels) up, the ES generates, image pixels down",
            {
                "txt2img": (
                    es("encode_prompt", "prompt", "cond"),
                    es("denoise", "cond", "latent"),
                    es("decode", "latent", "image"),
                ),
                "img2img": (
                    es("encode_prompt", "prompt", "cond"),
                    es("encode_image", "image_in", "init_latent"),
                    es("denoise", "cond init_latent", "latent"),
                    es("decode", "latent", "image"),
                ),
            },
        ),
        # --- the digital baseline the papers skip: FULL-ES as a network sends it today, the image as PNG bytes
        # (DIGITAL_KEYS: lossless bits at the link's MCS; perfect above MCS 0's threshold, an outage below) ---
        ProtocolSpec(
            "FULL-ES-PNG",
            "digital baseline: FULL-ES with the image (and input image) sent as lossless PNG bits at the link's MCS",
            {
                "txt2img": (
                    es("encode_prompt", "prompt", "cond"),
                    es("denoise", "cond", "latent"),
                    es("decode", "latent", "image"),
                    es("encode_png", "image", "image_png"),
                    ue("decode_png", "image_png", "image"),
                ),
                "img2img": (
                    ue("encode_png", "image_in", "image_in_png"),
                    es("decode_png", "image_in_png", "image_in"),
                    es("encode_prompt", "prompt", "cond"),
                    es("encode_image", "image_in", "init_latent"),
                    es("denoise", "cond init_latent", "latent"),
                    es("decode", "latent", "image"),
                    es("encode_png", "image", "image_png"),
                    ue("decode_png", "image_png", "image"),
                ),
            },
        ),
        ProtocolSpec(
            "UIEG",
            "UE infers the task (seed up), the ES generates, image pixels down",
            {
                "txt2img": (
                    ue("encode_prompt", "prompt", "cond"),
                    es("denoise", "cond", "latent"),
                    es("decode", "latent", "image"),
                ),
                "img2img": (
                    ue("encode_image", "image_in", "init_latent"),
                    ue("compress", "init_latent", "init_seed"),
                    es("decompress", "init_seed", "init_latent"),
                    es("encode_prompt", "prompt", "cond"),
                    es("denoise", "cond init_latent", "latent"),
                    es("decode", "latent", "image"),
                ),
            },
        ),
        ProtocolSpec(
            "EIUG",
            "ES infers the latent (prompt up), its seed comes down, the UE decodes",
            {
                "txt2img": (
                    es("encode_prompt", "prompt", "cond"),
                    es("denoise", "cond", "latent"),
                    es("compress", "latent", "seed"),
                    ue("decompress", "seed", "latent"),
                    ue("decode", "latent", "image"),
                ),
                "img2img": (
                    es("encode_prompt", "prompt", "cond"),
                    es("encode_image", "image_in", "init_latent"),
                    es("denoise", "cond init_latent", "latent"),
                    es("compress", "latent", "seed"),
                    ue("decompress", "seed", "latent"),
                    ue("decode", "latent", "image"),
                ),
            },
        ),
        ProtocolSpec(
            "CIAG",
            "co-inference: UE's task seed up, the ES denoises, latent seed down, the UE decodes",
            {
                "txt2img": (
                    ue("encode_prompt", "prompt", "cond"),
                    es("denoise", "cond", "latent"),
                    es("compress", "latent", "seed"),
                    ue("decompress", "seed", "latent"),
                    ue("decode", "latent", "image"),
                ),
                "img2img": (
                    ue("encode_image", "image_in", "init_latent"),
                    ue("compress", "init_latent", "init_seed"),
                    es("decompress", "init_seed", "init_latent"),
                    es("encode_prompt", "prompt", "cond"),
                    es("denoise", "cond init_latent", "latent"),
                    es("compress", "latent", "seed"),
                    ue("decompress", "seed", "latent"),
                    ue("decode", "latent", "image"),
                ),
            },
        ),
        ProtocolSpec(
            "ESUC",
            "ES generates and sends a low-resolution sketch, the UE completes it with its own model",
            {
                "txt2img": (
                    es("encode_prompt", "prompt", "cond"),
                    es("denoise", "cond", "latent"),
                    es("decode", "latent", "es_image"),
                    es("sketch", "es_image", "sketch"),
                    ue("encode_prompt", "prompt", "cond"),
                    ue("complete", "cond sketch", "image"),
                ),
                "img2img": (
                    es("encode_prompt", "prompt", "cond"),
                    es("encode_image", "image_in", "init_latent"),
                    es("denoise", "cond init_latent", "latent"),
                    es("decode", "latent", "es_image"),
                    es("sketch", "es_image", "sketch"),
                    ue("encode_prompt", "prompt", "cond"),
                    ue("complete", "cond sketch", "image"),
                ),
            },
        ),
        # --- paper 1 §III-B, parallel: every ES generates on its own from seed + i, the UE picks -------------
        ProtocolSpec(
            "UIDG",
            "UIEG to N ES: the UE's seed goes to every ES, each generates from its own seed, N images down, pick",
            {
                "txt2img": (
                    ue("encode_prompt", "prompt", "cond"),
                    each_es("denoise", "cond", "latent"),
                    each_es("decode", "latent", "image"),
                    ue_gather("pick", "image share", "image"),
                ),
                "img2img": (
                    ue("encode_image", "image_in", "init_latent"),
                    ue("compress", "init_latent", "init_seed"),
                    each_es("decompress", "init_seed", "init_latent"),
                    each_es("encode_prompt", "prompt", "cond"),
                    each_es("denoise", "cond init_latent", "latent"),
                    each_es("decode", "latent", "image"),
                    ue_gather("pick", "image share", "image"),
                ),
            },
        ),
        ProtocolSpec(
            "DIUG",
            "EIUG from N ES: the prompt to every ES, N seeds down, the UE decodes each and picks",
            {
                "txt2img": (
                    each_es("encode_prompt", "prompt", "cond"),
                    each_es("denoise", "cond", "latent"),
                    each_es("compress", "latent", "seed"),
                    ue_each("decompress", "seed", "latent"),
                    ue_each("decode", "latent", "image"),
                    ue_gather("pick", "image share", "image"),
                ),
                "img2img": (
                    each_es("encode_prompt", "prompt", "cond"),
                    each_es("encode_image", "image_in", "init_latent"),
                    each_es("denoise", "cond init_latent", "latent"),
                    each_es("compress", "latent", "seed"),
                    ue_each("decompress", "seed", "latent"),
                    ue_each("decode", "latent", "image"),
                    ue_gather("pick", "image share", "image"),
                ),
            },
        ),
        ProtocolSpec(
            "DSUC",
            "ESUC from N ES: N sketches down, the user picks one (contact sheet), the UE completes it",
            {
                "txt2img": (
                    each_es("encode_prompt", "prompt", "cond"),
                    each_es("denoise", "cond", "latent"),
                    each_es("decode", "latent", "es_image"),
                    each_es("sketch", "es_image", "sketch"),
                    ue_gather("pick", "sketch share", "sketch"),
                    ue("encode_prompt", "prompt", "cond"),
                    ue("complete", "cond sketch", "image"),
                ),
                "img2img": (
                    each_es("encode_prompt", "prompt", "cond"),
                    each_es("encode_image", "image_in", "init_latent"),
                    each_es("denoise", "cond init_latent", "latent"),
                    each_es("decode", "latent", "es_image"),
                    each_es("sketch", "es_image", "sketch"),
                    ue_gather("pick", "sketch share", "sketch"),
                    ue("encode_prompt", "prompt", "cond"),
                    ue("complete", "cond sketch", "image"),
                ),
            },
        ),
        # --- paper 1 §III-C, cooperative: ES i denoises its overlapping window of ONE generation (same seed,
        # the same starting noise cropped); every round the UE fuses the windows and sends each ES its window of
        # the fused latent (FUSE_ROUND; shared.protocol.tiles) -----------------------------------------------------------
        ProtocolSpec(
            "UIDCG",
            "the UE's seed to N ES, each denoises its overlapping window of one latent, fused on the UE every "
            "round; the UE merges and decodes",
            {
                "txt2img": (
                    ue("encode_prompt", "prompt", "cond"),
                    share_es("denoise_window", "cond share round", "latent_part"),
                    *FUSE_ROUND,
                    ue_gather("merge", "latent_part share", "latent"),
                    ue("decode", "latent", "image"),
                ),
                "img2img": (
                    ue("encode_image", "image_in", "init_latent"),
                    ue_each("window", "init_latent share", "init_part"),
                    share_es("encode_prompt", "prompt", "cond"),
                    share_es("denoise_window", "cond share round init_part", "latent_part"),
                    *FUSE_ROUND,
                    ue_gather("merge", "latent_part share", "latent"),
                    ue("decode", "latent", "image"),
                ),
            },
            fallback="UIEG",
        ),
        ProtocolSpec(
            "DCSUC",
            "the prompt to N ES, each sketches its overlapping window of one image (latents fused on the UE every "
            "round), the UE merges and completes",
            {
                "txt2img": (
                    share_es("encode_prompt", "prompt", "cond"),
                    share_es("denoise_window", "cond share round", "latent_part"),
                    *FUSE_ROUND,
                    share_es("decode", "latent_part", "image_part"),
                    share_es("sketch", "image_part", "sketch_part"),
                    ue_gather("merge", "sketch_part share", "sketch"),
                    ue("encode_prompt", "prompt", "cond"),
                    ue("complete", "cond sketch", "image"),
                ),
                "img2img": (
                    ue_each("window", "image_in share", "image_in_part"),
                    share_es("encode_prompt", "prompt", "cond"),
                    share_es("encode_image", "image_in_part", "init_part"),
                    share_es("denoise_window", "cond share round init_part", "latent_part"),
                    *FUSE_ROUND,
                    share_es("decode", "latent_part", "image_part"),
                    share_es("sketch", "image_part", "sketch_part"),
                    ue_gather("merge", "sketch_part share", "sketch"),
                    ue("encode_prompt", "prompt", "cond"),
                    ue("complete", "cond sketch", "image"),
                ),
            },
            fallback="ESUC",
        ),
    )
}


def check_prompt(prompt: str, max_chars: int = MAX_PROMPT_CHARS) -> str:
    """The stripped prompt, or :class:`ProtocolError` if it is empty or longer than ``max_chars``."""
    text = prompt.strip()
    if not text:
        raise ProtocolError("the prompt is empty; say what to draw")
    if len(text) > max_chars:
        raise ProtocolError(f"the prompt has {len(text)} characters; the limit is {max_chars}")
    return text


def get_protocol(name: str, task: str) -> tuple[ProtocolSpec, tuple[Stage, ...]]:
    """Look a protocol up by name (case-insensitive) for a task; raises :class:`ProtocolError`."""
    spec = PROTOCOLS.get(name.upper())
    if spec is None:
        raise ProtocolError(f"unknown protocol {name!r}; known: {', '.join(PROTOCOLS)}")
    if task not in spec.stages:
        raise ProtocolError(
            f"protocol {spec.name} has no {task!r} variant; it supports: {', '.join(spec.stages)}"
        )
    return spec, spec.stages[task]  # type: ignore[index]
