"""The members of statement items, checked the same way by server and client.

Pure functions, no server imports: ``hashfed push`` validates a file locally
with exactly the rules the server will apply.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from federation.protocol.problems import HashfedError, Problem
from federation.protocol.signals import normalize_signal, record_id
from federation.protocol.taxonomy import Taxonomy

MAX_ITEMS_PER_STATEMENT = 100_000
MAX_NOTE_CHARS = 2000
MAX_REF_CHARS = 256
SUBMISSION_MEMBERS = frozenset({"signal_type", "value", "labels", "note", "ref"})
SIGNAL_MEMBERS = frozenset({"signal_type", "value"})

LabelCache = dict[tuple[str, ...], tuple[str, ...]]


class Submission(NamedTuple):
    """A checked submission item: normalised value, sorted labels, derived record id.

    Immutable; a named tuple because a frozen dataclass costs microseconds to build."""

    record_id: str
    signal_type: str
    value: str
    labels: tuple[str, ...]
    note: str | None = None
    ref: str | None = None


def check_members(raw: Any, allowed: frozenset[str]) -> Mapping[str, Any]:
    """An item must be an object with no members beyond ``allowed``."""
    # type() first: isinstance against the Mapping ABC is slow, and items are parsed JSON dicts.
    if type(raw) is not dict and not isinstance(raw, Mapping):
        raise HashfedError(Problem.MALFORMED_REQUEST, "an item must be a JSON object")
    if raw.keys() <= allowed:  # no set built for a valid item
        return raw
    unknown = raw.keys() - allowed
    if unknown:
        raise HashfedError(
            Problem.MALFORMED_REQUEST,
            f"unknown member(s) in item: {', '.join(sorted(map(str, unknown)))}; "
            f"allowed: {', '.join(sorted(allowed))}",
        )
    return raw


def bounded_text(
    raw: Mapping[str, Any], key: str, limit: int, *, required: bool = False
) -> str | None:
    """An optional (or required, non-blank) string member of at most ``limit`` characters."""
    value = raw.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value.strip()):
        what = "a non-empty string" if required else "a string"
        raise HashfedError(Problem.MALFORMED_REQUEST, f"'{key}' must be {what}")
    if len(value) > limit:
        raise HashfedError(
            Problem.MALFORMED_REQUEST,
            f"'{key}' is {len(value)} characters long; at most {limit} are allowed",
        )
    return value


def parse_signal(raw: Mapping[str, Any]) -> tuple[str, str, str]:
    """(signal_type, normalised value, record id) of an item."""
    signal_type, value = raw.get("signal_type"), raw.get("value")
    if not isinstance(signal_type, str) or not isinstance(value, str):
        raise HashfedError(
            Problem.MALFORMED_REQUEST, "an item needs string members 'signal_type' and 'value'"
        )
    normalized = normalize_signal(signal_type, value)
    return signal_type, normalized, record_id(signal_type, normalized)


def parse_labels(raw: Any, taxonomy: Taxonomy, cache: LabelCache | None = None) -> tuple[str, ...]:
    """Labels checked against the taxonomy; batches repeat a few sets, so ``cache`` them."""
    if isinstance(raw, str):
        return taxonomy.validate(raw)  # the taxonomy explains that a list is needed
    if cache is not None and type(raw) is list:
        # A batch repeats a few label lists: a hit was checked in full before (only
        # strings equal strings, and an unhashable member is no key: checked below).
        try:
            hit = cache.get(tuple(raw))
        except TypeError:
            hit = None
        if hit is not None:
            return hit
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise HashfedError(Problem.MALFORMED_REQUEST, "'labels' must be a list of strings")
    if cache is None:
        return taxonomy.validate(raw)
    key = tuple(raw)
    checked = cache.get(key)
    if checked is None:
        checked = cache[key] = taxonomy.validate(raw)
    return checked


def parse_submission(raw: Any, taxonomy: Taxonomy, cache: LabelCache | None = None) -> Submission:
    """Check one submission item; raises ``HashfedError`` saying what is wrong."""
    raw = check_members(raw, SUBMISSION_MEMBERS)
    signal_type, value, rid = parse_signal(raw)
    return Submission(
        record_id=rid,
        signal_type=signal_type,
        value=value,
        labels=parse_labels(raw.get("labels"), taxonomy, cache),
        note=bounded_text(raw, "note", MAX_NOTE_CHARS),
        ref=bounded_text(raw, "ref", MAX_REF_CHARS),
    )
