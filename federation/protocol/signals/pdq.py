"""PDQ: Meta's 256-bit perceptual image hash, compared by Hamming distance.

The value is the hash as 64 hexadecimal characters (the form PDQ tools print
and ThreatExchange shares), canonically lower case.
"""

from __future__ import annotations

from federation.protocol.signals.base import SignalType, hex_normalizer

PDQ_HEX_CHARS = 64  # 256 bits
# The threshold recommended with PDQ: two hashes at Hamming distance <= 31 of
# 256 bits are taken as the same image.
PDQ_DEFAULT_THRESHOLD = 31


def pdq_distance(first: str, second: str) -> int:
    """The Hamming distance, 0 to 256, between two normalised PDQ values."""
    return (int(first, 16) ^ int(second, 16)).bit_count()


PDQ = SignalType(
    name="pdq",
    normalize=hex_normalizer("pdq", PDQ_HEX_CHARS),
    distance=pdq_distance,
    default_threshold=PDQ_DEFAULT_THRESHOLD,
    description="PDQ perceptual image hash, 256 bits as 64 hex characters",
)

SIGNAL_TYPES: tuple[SignalType, ...] = (PDQ,)
