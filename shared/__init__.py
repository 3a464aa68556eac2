"""Common code of the MEG processes, in layers whose imports run one way (``tests/test_layers.py``)::

    pb  <-  wire  <-  protocol  <-  model
    pb  <-  wire  <-  channel (numpy only) · rpc · cli   (no model semantics)

``pb`` is the generated schema; the process packages (``edge_server``, ``channel_emulator``, ``ue_client``)
and ``meg_lab`` sit on top.

Importing it makes every Hugging Face library offline for this process (nothing is downloaded at run
time, ever) and quiets their import-time chatter; both can be overridden from the environment.
"""

import os

for _key, _value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "DIFFUSERS_VERBOSITY": "error",
}.items():
    os.environ.setdefault(_key, _value)
