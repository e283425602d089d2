"""Opaque binary hashes carried as standard base64: PhotoDNA and TMK+PDQF.

The federation does not compute or compare these; it only checks that a value
is strict standard base64 (RFC 4648 alphabet with ``+`` and ``/``, ``=``
padding, no line breaks) of a plausible size, and stores the canonical
re-encoding of the decoded bytes, so that two encodings of the same bytes
(differing only in the unused low bits of the last character) are one signal.

Size bounds:

- ``photodna``: exactly 144 bytes, the size of a PhotoDNA hash (192 base64
  characters).
- ``tmk_pdqf``: from 32 to 524,288 bytes (512 KiB). 32 bytes is the fixed
  header of a TMK feature-vector file, the least that can be one. A complete
  ``.tmk`` file with the reference parameters (4 periods x 32 Fourier
  coefficients x 256-dimension PDQF frame features, cosine and sine, plus the
  header, periods, coefficients and the level-1 average) is 263,344 bytes,
  slightly over 256 KiB, so the bound is 512 KiB: room for the reference file
  and moderately larger parameters, while a value still fits comfortably in a
  batch.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Callable

from federation.protocol.problems import HashfedError
from federation.protocol.signals.base import (
    ASCII_WHITESPACE,
    SignalType,
    common_refusal,
    invalid_signal,
    show_character,
)

PHOTODNA_BYTES = 144
TMK_PDQF_MIN_BYTES = 32
TMK_PDQF_MAX_BYTES = 512 * 1024

_NOT_BASE64 = re.compile(r"[^A-Za-z0-9+/=]")


def _base64_chars(byte_count: int) -> int:
    """Length of the padded standard base64 encoding of ``byte_count`` bytes."""
    return 4 * -(-byte_count // 3)


def _expected(min_bytes: int, max_bytes: int) -> str:
    if min_bytes == max_bytes:
        return (
            f"standard base64 of exactly {min_bytes} bytes ({_base64_chars(min_bytes)} characters)"
        )
    return f"standard base64 of {min_bytes} to {max_bytes} bytes"


def base64_normalizer(type_name: str, min_bytes: int, max_bytes: int) -> Callable[[str], str]:
    """A normaliser for opaque bytes of ``min_bytes`` to ``max_bytes`` as standard base64.

    Accepts surrounding ASCII whitespace; returns the canonical padded
    encoding of the decoded bytes.
    """
    max_chars = _base64_chars(max_bytes)
    decode = binascii.a2b_base64
    encode = binascii.b2a_base64

    def normalize(value: str) -> str:
        if isinstance(value, str):
            text = value.strip(ASCII_WHITESPACE)
            if len(text) <= max_chars:
                try:
                    # strict_mode refuses characters outside the alphabet (line
                    # breaks included), bad padding and data after padding.
                    raw = decode(text, strict_mode=True)
                except ValueError:
                    pass
                else:
                    canonical = encode(raw, newline=False).decode("ascii")
                    # strict_mode still tolerates '=' after a complete group
                    # ("QUJD=="); the canonical encoding has the same length.
                    if min_bytes <= len(raw) <= max_bytes and len(canonical) == len(text):
                        return canonical
        raise _base64_refusal(type_name, value, min_bytes, max_bytes)

    normalize.__doc__ = f"The canonical {type_name} value: {_expected(min_bytes, max_bytes)}."
    return normalize


def _base64_refusal(type_name: str, value: object, min_bytes: int, max_bytes: int) -> HashfedError:
    expected = _expected(min_bytes, max_bytes)
    error, stripped, offset = common_refusal(type_name, value, None, expected)
    if error is not None:
        return error
    stray = _NOT_BASE64.search(stripped)
    if stray is not None:
        character = stray.group()
        shown = f"{show_character(character)} at index {offset + stray.start()}"
        if character in "-_":
            detail = (
                f"contains {shown}: url-safe base64 is not accepted; "
                f"expected {expected}, using '+' and '/'"
            )
        else:
            detail = (
                f"contains {shown}, which is not a base64 character "
                f"(A-Z, a-z, 0-9, '+', '/', '=' padding); expected {expected}"
            )
        return invalid_signal(type_name, detail)
    if len(stripped) > _base64_chars(max_bytes):
        return invalid_signal(
            type_name, f"is too long ({len(stripped)} characters); expected {expected}"
        )
    try:
        raw = binascii.a2b_base64(stripped, strict_mode=True)
    except ValueError as exc:
        detail = f"is not valid base64 ({exc}); expected {expected}, with '=' padding"
        return invalid_signal(type_name, detail)
    canonical_chars = _base64_chars(len(raw))
    if len(stripped) != canonical_chars:
        return invalid_signal(
            type_name,
            f"has excess '=' padding: {len(stripped)} characters where {len(raw)} bytes "
            f"take {canonical_chars}; expected {expected}",
        )
    if min_bytes == max_bytes:
        return invalid_signal(
            type_name, f"must decode to exactly {min_bytes} bytes, got {len(raw)}"
        )
    return invalid_signal(
        type_name,
        f"must decode to between {min_bytes} and {max_bytes} bytes, got {len(raw)}",
    )


PHOTODNA = SignalType(
    name="photodna",
    normalize=base64_normalizer("photodna", PHOTODNA_BYTES, PHOTODNA_BYTES),
    description="PhotoDNA image hash, 144 bytes as standard base64 (exact match here)",
)
TMK_PDQF = SignalType(
    name="tmk_pdqf",
    normalize=base64_normalizer("tmk_pdqf", TMK_PDQF_MIN_BYTES, TMK_PDQF_MAX_BYTES),
    description="TMK+PDQF video feature file, standard base64 (exact match here)",
)

SIGNAL_TYPES: tuple[SignalType, ...] = (PHOTODNA, TMK_PDQF)
