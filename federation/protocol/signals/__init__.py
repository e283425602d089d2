"""The signal-type registry, shared by the server and the member client.

A signal is ``(signal_type, value)``; the registry maps each type's name to
its :class:`SignalType`. Every member normalises a value the same way and so
computes the same :func:`record_id` for it without asking the server.

Adding a type is adding a module that exports ``SIGNAL_TYPES`` and listing
that module in ``_FAMILIES`` below.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from types import MappingProxyType

from federation.protocol.problems import HashfedError, Problem
from federation.protocol.signals import digests, opaque, pdq, url
from federation.protocol.signals.base import SignalType, show_value

__all__ = [
    "SIGNAL_TYPES",
    "SignalType",
    "get_signal_type",
    "normalize_signal",
    "record_id",
    "record_ids",
]

_FAMILIES = (pdq, digests, opaque, url)

RECORD_ID_BYTES = 16


def _build_registry(types: Iterable[SignalType]) -> dict[str, SignalType]:
    registry: dict[str, SignalType] = {}
    for signal_type in types:
        if signal_type.name in registry:
            raise ValueError(f"signal type {signal_type.name!r} is registered twice")
        registry[signal_type.name] = signal_type
    return dict(sorted(registry.items()))


_REGISTRY = _build_registry(t for family in _FAMILIES for t in family.SIGNAL_TYPES)
# The hot path looks up the normaliser directly.
_NORMALIZERS = {name: signal_type.normalize for name, signal_type in _REGISTRY.items()}

SIGNAL_TYPES: Mapping[str, SignalType] = MappingProxyType(_REGISTRY)


def _unknown_signal_type(name: object) -> HashfedError:
    shown = show_value(name, 40) if isinstance(name, str) else type(name).__name__
    return HashfedError(
        Problem.UNKNOWN_SIGNAL_TYPE,
        f"unknown signal type {shown}; known types: {', '.join(_REGISTRY)}",
    )


def get_signal_type(name: str) -> SignalType:
    """The registered type called ``name``; ``UNKNOWN_SIGNAL_TYPE`` listing the known ones."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise _unknown_signal_type(name) from None


def normalize_signal(signal_type: str, value: str) -> str:
    """The canonical value of ``value`` as a ``signal_type``.

    Raises ``HashfedError`` with ``UNKNOWN_SIGNAL_TYPE`` for a type not in the
    registry and ``INVALID_SIGNAL`` for a value the type refuses.
    """
    try:
        normalize = _NORMALIZERS[signal_type]
    except (KeyError, TypeError):
        raise _unknown_signal_type(signal_type) from None
    return normalize(value)


def record_id(signal_type: str, normalized_value: str) -> str:
    """The id of the federation's record for a signal, computable by every member.

    The hex of the first 16 bytes of
    ``SHA-256(signal_type + "\\x00" + normalized_value)`` (UTF-8). The value
    must already be normalised (:func:`normalize_signal`); it is not checked
    here, so that the hot path normalises once.
    """
    if signal_type not in _REGISTRY:
        raise _unknown_signal_type(signal_type)
    material = f"{signal_type}\x00{normalized_value}".encode()
    return hashlib.sha256(material).digest()[:RECORD_ID_BYTES].hex()


def record_ids(signal_types: Iterable[str], normalized_values: Iterable[str]) -> list[str]:
    """:func:`record_id` of each signal, pairwise: the same ids, in one loop (bulk checks)."""
    types = list(signal_types)
    for name in set(types):
        if name not in _REGISTRY:
            raise _unknown_signal_type(name)
    sha256 = hashlib.sha256
    return [
        sha256(f"{t}\x00{v}".encode()).digest()[:RECORD_ID_BYTES].hex()
        for t, v in zip(types, normalized_values, strict=True)
    ]
