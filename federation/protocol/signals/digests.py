"""Cryptographic digests of a file's bytes: exact match only.

Each is its digest in hexadecimal, canonically lower case. ``video_md5`` is
the MD5 of a video file, a type of its own so that it never matches an image
that happens to be listed under ``md5``.
"""

from __future__ import annotations

from federation.protocol.signals.base import SignalType, hex_normalizer

MD5 = SignalType(
    name="md5",
    normalize=hex_normalizer("md5", 32),
    description="MD5 of a file's bytes, 32 hex characters",
)
SHA1 = SignalType(
    name="sha1",
    normalize=hex_normalizer("sha1", 40),
    description="SHA-1 of a file's bytes, 40 hex characters",
)
SHA256 = SignalType(
    name="sha256",
    normalize=hex_normalizer("sha256", 64),
    description="SHA-256 of a file's bytes, 64 hex characters",
)
VIDEO_MD5 = SignalType(
    name="video_md5",
    normalize=hex_normalizer("video_md5", 32),
    description="MD5 of a video file's bytes, 32 hex characters",
)

SIGNAL_TYPES: tuple[SignalType, ...] = (MD5, SHA1, SHA256, VIDEO_MD5)
