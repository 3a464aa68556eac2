"""Every size limit a MEG process enforces on what it is sent, in one place.

The servers, the proxy and the CLIs check against these; ``meg-edge``'s settings may lower some of them
(never raise them past what the wire accepts).
"""

from __future__ import annotations

#: Largest message any MEG process accepts or sends (an image of 1024×1024×3 float32 is 12 MiB).
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024

#: No over-the-air tensor may hold more values than this (64 Mi values, 256 MiB at float32).
MAX_VALUES = 64 * 1024 * 1024
#: No over-the-air tensor may have more dimensions than this (numpy's own limit).
MAX_DIMS = 64

#: Most bytes one digital payload (``SegmentRequest.digital`` / ``SegmentResponse.digital``: a PNG image) may hold
#: (an incompressible 2048² RGB PNG is 12 MiB).
MAX_DIGITAL_BYTES = 16 * 1024 * 1024
#: Most pixels a received PNG may declare before it is decoded (a PNG bomb: a small file that inflates to a
#: huge image); its size must also be the model's image size (:func:`shared.model.images.png_to_image`).
MAX_PNG_PIXELS = 4096 * 4096

#: Longest prompt accepted, in characters (the tokenizer keeps only its first tokens anyway).
MAX_PROMPT_CHARS = 1000

#: Largest ``steps`` the ES accepts: DDIM steps of the 1000 training timesteps (``meg-ue --steps`` checks it too).
MAX_STEPS = 500

#: Largest seed: ``GenerationParams.seed`` is a uint64 (a parallel fan-out's per-ES seeds ``seed + i`` too).
MAX_SEED = 2**64 - 1

#: Longest ``request_id`` the ES accepts (it keys the result cache and the round store; a UUID is 32-36).
MAX_REQUEST_ID_CHARS = 128
#: Longest UE id (the ``meg-ue`` header) the ES keys anything by: a link name's half (``UE->ES``).
MAX_UE_ID_CHARS = 64
#: Most rounds a cooperative generation may be cut into (``steps / sync``): its plan is written out per round.
MAX_ROUNDS = 64

# -- what a caller may ask of the channel proxy ---------------------------------------------------------------
#: Most power blocks a transmission may have (``block_length`` 1 over millions of values is refused: the work
#: a caller may ask of the channel is bounded); also the most CSI draws a link direction keeps.
MAX_POWER_BLOCKS = 1 << 16
#: CSI draws handed out but not yet used by a transmission, kept per link direction (oldest dropped); also the
#: most blocks one GetCSI may draw.
MAX_PENDING_BLOCKS = 1 << 16
#: Most links the proxy tracks at once (least recently used idle ones make room for new names).
MAX_LINKS = 10_000
#: The most steps a cooperative round may span (longer than any schedule we run; 0 means no fusion at all).
MAX_SYNC = 1000
#: Largest scenario file ``StartScenario`` takes as text (``meg-channel scenario start``; a 30 s drive-by is ~1 KiB; a
#: file expands to at most ``shared.channel.scenario.MAX_EVENTS`` events).
MAX_SCENARIO_BYTES = 1024 * 1024
#: Most scenarios the proxy keeps (playing, done or stopped; the oldest finished ones are forgotten first).
MAX_SCENARIOS = 16
#: Most links (and handed-over UEs) one scenario may act on (``GetChannel`` reports where each of them is).
MAX_SCENARIO_LINKS = 1000
