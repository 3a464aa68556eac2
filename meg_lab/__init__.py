"""MEG's research tools (``meg-lab``): train and evaluate the model, the seed codecs and the PPO power policy,
and paper 2's quality-vs-SNR evaluation. Offline code: nothing here is imported by the daemons.

Needs the ``lab`` extra (``pip install 'meg[lab]'``: stable-baselines3, gymnasium, matplotlib, the FID
network). Importing :mod:`shared` first makes the Hugging Face libraries offline for the process.
"""

import shared  # noqa: F401  (HF-offline environment before any Hugging Face import)
