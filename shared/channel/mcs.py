"""What digital bits cost: the MCS table of TS 38.214 (Table 5.1.3.1-2, up to 256QAM) and the SNR each MCS
needs.

Everything in a message that is not an over-the-air tensor (prompt text, ids, params, protobuf framing, a PNG
for the digital baseline) crosses as bits. A link picks the highest MCS whose SNR threshold its SNR meets and
its bits take ``ceil(bits / SE)`` resource elements (``SE``: the MCS's spectral efficiency, bits per RE).
Below MCS 0's threshold the link is in *outage*: the bits cannot go.

Thresholds are Shannon's with a gap (the usual abstraction of a practical code): an MCS of spectral
efficiency ``SE`` needs ``SNR ≥ Γ · (2^SE − 1)``, ``Γ`` = :data:`SNR_GAP_DB` = 1.5 dB (LDPC at a 10 % BLER
sits about 1-2 dB from capacity). MCS 0 (QPSK, R = 120/1024, SE 0.2344) thus needs −6.0 dB, MCS 27 (256QAM,
R = 948/1024, SE 7.4063) 23.8 dB. The link's SNR is its profile's ``snr_db`` (the mean SNR for a fading
profile); an ideal link gets the top MCS. Pure Python.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Mcs:
    """One row of TS 38.214 Table 5.1.3.1-2: modulation order ``Qm``, target code rate × 1024, and the
    spectral efficiency (bits per RE) as the table prints it."""

    index: int
    qm: int
    rate_x1024: float
    efficiency: float

    @property
    def threshold_db(self) -> float:
        """The SNR this MCS needs: ``10·log10(Γ · (2^SE − 1))``."""
        return SNR_GAP_DB + 10 * math.log10(2.0 ** self.efficiency - 1.0)


#: TS 38.214 Table 5.1.3.1-2 (MCS index table 2 for PDSCH, 256QAM), indices 0-27 (28-31 are reserved).
MCS_TABLE: tuple[Mcs, ...] = tuple(Mcs(i, qm, r, se) for i, (qm, r, se) in enumerate((
    (2, 120, 0.2344), (2, 193, 0.3770), (2, 308, 0.6016), (2, 449, 0.8770), (2, 602, 1.1758),
    (4, 378, 1.4766), (4, 434, 1.6953), (4, 490, 1.9141), (4, 553, 2.1602), (4, 616, 2.4063), (4, 658, 2.5703),
    (6, 466, 2.7305), (6, 517, 3.0293), (6, 567, 3.3223), (6, 616, 3.6094), (6, 666, 3.9023), (6, 719, 4.2129),
    (6, 772, 4.5234), (6, 822, 4.8164), (6, 873, 5.1152),
    (8, 682.5, 5.3320), (8, 711, 5.5547), (8, 754, 5.8906), (8, 797, 6.2266), (8, 841, 6.5703), (8, 885, 6.9141),
    (8, 916.5, 7.1602), (8, 948, 7.4063),
)))
#: Shannon gap of the MCS thresholds, dB.
SNR_GAP_DB = 1.5


def select_mcs(snr_db: float) -> Mcs | None:
    """The highest MCS whose threshold ``snr_db`` meets; ``None`` = outage (below MCS 0)."""
    best = None
    for m in MCS_TABLE:
        if snr_db >= m.threshold_db:
            best = m
    return best


def digital_re(bits: int, mcs: Mcs) -> int:
    """Resource elements ``bits`` take at ``mcs``: ``ceil(bits / SE)``."""
    return math.ceil(bits / mcs.efficiency - 1e-9) if bits > 0 else 0
