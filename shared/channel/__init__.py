"""The channel layer (numpy only, no torch): models, profiles, the transmission math, power allocation.

``shared.channel`` keeps the names scripts used before it became a package (``IDEAL``, ``load_profiles``,
``transmit``...); new code imports from the submodule that owns a name.
"""

from shared.channel.models import AWGN, MODELS, ChannelConfigError, Ideal, Rayleigh, Rician, register
from shared.channel.profiles import (
    BUILTIN_PROFILES,
    IDEAL,
    ChannelProfile,
    ProfileBook,
    load_profiles,
    profile_from_mapping,
)
from shared.channel.transmit import Transmission, estimate_csi, n_blocks, transmit

__all__ = [
    "AWGN", "BUILTIN_PROFILES", "IDEAL", "MODELS", "ChannelConfigError", "ChannelProfile", "Ideal", "ProfileBook",
    "Rayleigh", "Rician", "Transmission", "estimate_csi", "load_profiles", "n_blocks", "profile_from_mapping",
    "register", "transmit",
]
