"""What a signal type is, and the checks every family of types shares.

A signal is ``(signal_type, value)``. Each type knows how to turn a value as a
member sent it into the one canonical string the federation stores, signs and
compares; the same canonical string on every member is what makes a record id
computable locally (see :func:`federation.protocol.signals.record_id`).

Normalisers run on the server's hot path, once per item of batches that can
hold a million items, so the accepting path is a handful of C-level string
operations; the precise explanation of a refusal is worked out only once a
value has been refused (the ``*_refusal`` helpers below).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from federation.protocol.problems import HashfedError, Problem

# Only ASCII whitespace is stripped around a value (what a CSV cell or a line
# read from a file carries); any other control character is refused.
ASCII_WHITESPACE = " \t\n\r\x0b\x0c"
# C0 controls, DEL and C1 controls.
CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


@dataclass(frozen=True)
class SignalType:
    """A registered kind of signal: its name, normaliser and (optional) distance.

    ``normalize`` returns the canonical value or raises
    ``HashfedError(Problem.INVALID_SIGNAL)``. ``distance`` compares two
    *normalised* values (Hamming distance for PDQ); ``None`` means the type
    matches exactly only. Two values match when their distance is at most
    ``default_threshold`` unless the matcher is configured otherwise.
    """

    name: str
    normalize: Callable[[str], str]
    distance: Callable[[str, str], int] | None = None
    default_threshold: int = 0
    description: str = ""


def invalid_signal(type_name: str, detail: str) -> HashfedError:
    """The error for a value refused by ``type_name``; ``detail`` follows "<type> value"."""
    return HashfedError(Problem.INVALID_SIGNAL, f"{type_name} value {detail}")


def show_character(character: str) -> str:
    """A character as an error message shows it: quoted, or as U+XXXX if not printable."""
    if character.isprintable():
        return repr(character)
    return f"U+{ord(character):04X}"


def show_value(value: str, limit: int = 80) -> str:
    """``value`` quoted for an error message, cut to ``limit`` characters."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}… ({len(value)} characters)"


def strip_whitespace(value: str) -> tuple[str, int]:
    """``value`` without surrounding ASCII whitespace, and the index it starts at in ``value``."""
    left_stripped = value.lstrip(ASCII_WHITESPACE)
    return left_stripped.rstrip(ASCII_WHITESPACE), len(value) - len(left_stripped)


def common_refusal(
    type_name: str, value: object, max_chars: int | None, expected: str
) -> tuple[HashfedError | None, str, int]:
    """Checks shared by every type, for building the message of a refused value.

    Returns ``(error, stripped, offset)``: ``error`` is the refusal if the value
    is not a string, is empty, holds a control character or is longer than
    ``max_chars`` (``None``: the family reports lengths itself);
    otherwise ``None`` with the stripped value and its offset in the original,
    for the family's own diagnosis. ``expected`` completes "expected ...".
    """
    if not isinstance(value, str):
        error = invalid_signal(type_name, f"must be a string, got {type(value).__name__}")
        return error, "", 0
    stripped, offset = strip_whitespace(value)
    if not stripped:
        return invalid_signal(type_name, f"is empty; expected {expected}"), "", 0
    control = CONTROL_CHARACTER.search(stripped)
    if control is not None:
        detail = (
            f"contains the control character {show_character(control.group())} "
            f"at index {offset + control.start()}; expected {expected}"
        )
        return invalid_signal(type_name, detail), "", 0
    if max_chars is not None and len(stripped) > max_chars:
        detail = f"is too long ({len(stripped)} characters); expected {expected}"
        return invalid_signal(type_name, detail), "", 0
    return None, stripped, offset


def hex_normalizer(type_name: str, hex_chars: int) -> Callable[[str], str]:
    """A normaliser for a fixed-length hexadecimal digest of ``hex_chars`` characters.

    Accepts upper or lower case with surrounding ASCII whitespace; returns
    the lower-case digits.
    """
    byte_count = hex_chars // 2
    fromhex = bytes.fromhex

    def normalize(value: str) -> str:
        # bytes.fromhex validates and (via .hex()) lower-cases in C. It skips
        # whitespace between byte pairs, so the byte count is checked too: any
        # inner whitespace leaves fewer than hex_chars / 2 bytes. str.strip
        # only walks the surrounding whitespace, so it is cheap on any length.
        if isinstance(value, str):
            candidate = value
            if len(candidate) != hex_chars:
                candidate = candidate.strip(ASCII_WHITESPACE)
            if len(candidate) == hex_chars:
                try:
                    digest = fromhex(candidate)
                except ValueError:
                    pass
                else:
                    if len(digest) == byte_count:
                        return digest.hex()
        raise _hex_refusal(type_name, value, hex_chars)

    normalize.__doc__ = (
        f"The canonical {type_name} value: {hex_chars} lower-case hexadecimal characters."
    )
    return normalize


def _hex_refusal(type_name: str, value: object, hex_chars: int) -> HashfedError:
    expected = f"{hex_chars} hexadecimal characters"
    error, stripped, offset = common_refusal(type_name, value, None, expected)
    if error is not None:
        return error
    if len(stripped) != hex_chars:
        return invalid_signal(type_name, f"must be {expected}, got {len(stripped)}")
    for index, character in enumerate(stripped):
        if character not in _HEX_DIGITS:
            detail = (
                f"must be {expected} (0-9, a-f), found {show_character(character)} "
                f"at index {offset + index}"
            )
            return invalid_signal(type_name, detail)
    return invalid_signal(type_name, f"must be {expected}")
