"""Matching signals against the federation's records: the steps shared by client and server.

Both sides match the same way; only where record details come from differs
(the member's SQLite store, the server's database):

1. :func:`find_candidates`: for each query, the record ids it may match. A
   PDQ query asks the :class:`~federation.protocol.pdq_index.PdqIndex` for every
   held hash within the threshold; any other type matches exactly, so its
   only candidate is its own record id
   (:func:`federation.protocol.signals.record_id`).
2. The caller fetches the candidates' records by id.
3. :func:`assemble`: keeps the candidates whose record is approved (a
   retracted or withdrawn record never matches; neither does a pending or
   rejected one), drops disputed ones when asked, and orders each query's
   matches nearest first.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from federation.protocol.problems import HashfedError, Problem
from federation.protocol.signals import get_signal_type, normalize_signal, record_id

if TYPE_CHECKING:  # numpy is imported only where an index is used
    from federation.protocol.pdq_index import PdqIndex

__all__ = [
    "INDEXED_SIGNAL_TYPES",
    "Candidate",
    "Match",
    "Query",
    "RecordInfo",
    "assemble",
    "candidate_ids",
    "default_threshold",
    "find_candidates",
    "parse_query",
]

INDEXED_SIGNAL_TYPES = frozenset({"pdq"})  # types matched by distance, through the index
MATCHING_STATE = "approved"  # only approved records match; "disputed" is a flag on them


@dataclass(frozen=True, slots=True)
class Query:
    """A signal to look up: normalised; ``source`` says where it came from (file, line)."""

    signal_type: str
    value: str
    source: str = ""


@dataclass(frozen=True, slots=True)
class Candidate:
    """A record a query may match, and how far its value is from the query's."""

    record: str
    value: str
    distance: int


@dataclass(frozen=True, slots=True)
class RecordInfo:
    """What a match shows of a record (its head version)."""

    record: str
    signal_type: str
    value: str
    state: str
    labels: tuple[str, ...]
    contributors: tuple[str, ...]
    disputed: bool


@dataclass(frozen=True, slots=True)
class Match:
    """A query matched a record: the record, its distance and standing."""

    query: Query
    record: RecordInfo
    distance: int

    @property
    def state(self) -> str:
        """``approved``, or ``disputed`` for an approved record under dispute."""
        return "disputed" if self.record.disputed else self.record.state

    def to_json(self) -> dict[str, Any]:
        """The match as JSON-ready data."""
        return {
            "source": self.query.source,
            "signal_type": self.query.signal_type,
            "value": self.query.value,
            "record": self.record.record,
            "matched_value": self.record.value,
            "distance": self.distance,
            "state": self.state,
            "disputed": self.record.disputed,
            "labels": list(self.record.labels),
            "contributors": list(self.record.contributors),
        }


def parse_query(signal_type: Any, value: Any, source: str = "") -> Query:
    """A :class:`Query` of a signal as given; ``HashfedError`` if it is not a valid signal."""
    if not isinstance(signal_type, str) or not isinstance(value, str):
        raise HashfedError(
            Problem.MALFORMED_REQUEST, "a signal needs string members 'signal_type' and 'value'"
        )
    return Query(signal_type, normalize_signal(signal_type, value), source)


def default_threshold(signal_type: str = "pdq") -> int:
    """The registry's default match threshold for ``signal_type`` (31 for PDQ)."""
    return get_signal_type(signal_type).default_threshold


def find_candidates(
    queries: Sequence[Query], index: PdqIndex | None, threshold: int
) -> list[list[Candidate]]:
    """The candidates of each query, in order (see the module docstring).

    ``threshold`` applies to PDQ queries; ``index`` may be None when no PDQ
    query is among ``queries``.
    """
    found: list[list[Candidate]] = [[] for _ in queries]
    similar = [i for i, q in enumerate(queries) if q.signal_type in INDEXED_SIGNAL_TYPES]
    if similar:
        if index is None:
            raise ValueError("PDQ queries need an index")
        codes = [bytes.fromhex(queries[i].value) for i in similar]
        per_query = index.search_many(codes, threshold).by_query(len(codes))
        for position, hits in zip(similar, per_query, strict=True):
            found[position] = [
                Candidate(record_id("pdq", value), value, distance) for value, distance in hits
            ]
    for position, query in enumerate(queries):
        if query.signal_type not in INDEXED_SIGNAL_TYPES:
            found[position] = [Candidate(record_id(query.signal_type, query.value), query.value, 0)]
    return found


def candidate_ids(candidates: Iterable[Sequence[Candidate]]) -> list[str]:
    """Every distinct record id among ``candidates`` (to fetch in one go)."""
    return sorted({c.record for per_query in candidates for c in per_query})


def assemble(
    queries: Sequence[Query],
    candidates: Sequence[Sequence[Candidate]],
    records: Mapping[str, RecordInfo],
    *,
    only_undisputed: bool = False,
) -> list[list[Match]]:
    """Each query's matches: approved records only, nearest first, then by record id."""
    matches: list[list[Match]] = []
    for query, per_query in zip(queries, candidates, strict=True):
        kept = []
        for candidate in per_query:
            record = records.get(candidate.record)
            if record is None or record.state != MATCHING_STATE:
                continue
            if only_undisputed and record.disputed:
                continue
            if record.signal_type != query.signal_type:
                continue  # a record id collision is not a match
            kept.append(Match(query, record, candidate.distance))
        kept.sort(key=lambda m: (m.distance, m.record.record))
        matches.append(kept)
    return matches
