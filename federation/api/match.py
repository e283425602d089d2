"""``POST /v1/match``: consumers look up to 1,000 signals against the approved records.

The same matching as the member's ``hashfed match``
(:mod:`federation.protocol.matching`): cryptographic hashes and URLs match exactly,
through the record's primary key (the record id of the normalised signal);
PDQ matches within a Hamming threshold through a
:class:`~federation.protocol.pdq_index.PdqIndex` of the approved PDQ records.

Each worker process holds its own index, built on its first lookup (seconds
per million records) and brought up to date before every lookup from the
records whose head version is newer than the log size it last saw, so a
record approved or retracted on any worker is seen by the next lookup here.

Lookups are rate limited per organisation: a token bucket of signals in
memory (per worker), answering ``429 rate-limited`` with ``Retry-After``.
The request is plain JSON (not a statement): nothing is written, and the
request itself is signed (RFC 9421) like every other.
"""

from __future__ import annotations

import asyncio
import math
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select

from federation.api import models as m
from federation.api.context import DB
from federation.api.errors import problem_response
from federation.api.routes import JSON, READERS, Route, _authorised, json_response
from federation.governance.rules import State
from federation.log.feed import log_size
from federation.protocol.matching import (
    Match,
    Query,
    RecordInfo,
    assemble,
    candidate_ids,
    default_threshold,
    find_candidates,
    parse_query,
)
from federation.protocol.pdq_index import PdqIndex, codes_from_hex
from federation.protocol.problems import HashfedError, Problem
from federation.records.ingest import state_from_row
from federation.store.db import Database, one_of
from federation.store.schema import records

__all__ = [
    "MATCH_ROUTES",
    "MatchRequest",
    "MatchResponse",
    "MatchService",
    "TokenBuckets",
    "service_of",
]

MAX_SIGNALS_PER_REQUEST = 1000
# The PDQ threshold is capped at the usual one: a wider one multiplies the
# index's candidates (8x at 47) and so the cost of a 1,000-signal request.
MAX_THRESHOLD = default_threshold("pdq")
# Per organisation and worker: a burst of 20 full requests, then 5 a second.
MATCH_BURST_SIGNALS = 20_000
MATCH_SIGNALS_PER_S = 5_000
BUILD_ROWS_PER_PARTITION = 100_000
_ALL_STATES = tuple(s.value for s in State)  # lets (state, head_idx) serve the refresh


# Models (the OpenAPI document is generated from these)


class MatchSignal(BaseModel):
    """A signal to look up; the value is normalised as a submission's would be."""

    model_config = ConfigDict(extra="forbid")
    signal_type: str = Field(examples=["pdq"])
    value: str = Field(
        examples=["f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22"]
    )


class MatchRequest(BaseModel):
    """Up to 1,000 signals, the PDQ threshold and whether to leave out disputed records."""

    model_config = ConfigDict(extra="forbid")
    signals: list[MatchSignal] = Field(max_length=MAX_SIGNALS_PER_REQUEST)
    threshold: int | None = Field(
        None,
        ge=0,
        le=MAX_THRESHOLD,
        description=f"Largest PDQ Hamming distance that matches (default {MAX_THRESHOLD})",
    )
    only_undisputed: bool = Field(False, description="Leave out records flagged disputed")


class MatchedRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")
    record: str = Field(description="Record id")
    signal_type: str
    value: str = Field(description="The record's value (for PDQ, the stored hash)")
    distance: int = Field(description="Hamming distance for PDQ; 0 for exact matches")
    state: Literal["approved", "disputed"]
    disputed: bool
    labels: list[str]
    contributors: list[str]


class MatchResult(BaseModel):
    model_config = ConfigDict(extra="forbid")
    index: int = Field(description="Position of the signal in the request")
    signal_type: str
    value: str = Field(description="The signal's value, normalised (as sent if it is invalid)")
    matches: list[MatchedRecord] = Field(description="Nearest first")
    problem: m.ItemProblem | None = Field(None, description="Why the signal was not looked up")


class MatchResponse(BaseModel):
    model_config = ConfigDict(extra="forbid")
    results: list[MatchResult]
    matched: int = Field(description="Signals with at least one match")
    threshold: int


# Rate limiting


class TokenBuckets:
    """One token bucket per key: ``capacity`` tokens, refilled at ``rate_per_s``."""

    def __init__(
        self, capacity: float, rate_per_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.capacity = capacity
        self.rate_per_s = rate_per_s
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, when)

    def take(self, key: str, cost: float) -> float:
        """Take ``cost`` tokens of ``key``'s bucket: 0.0 if granted, else seconds to wait."""
        now = self._clock()
        tokens, then = self._buckets.get(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - then) * self.rate_per_s)
        if tokens >= cost:
            self._buckets[key] = (tokens - cost, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (cost - tokens) / self.rate_per_s


# The index and the lookups


class MatchService:
    """One worker's PDQ index of the approved records, and its rate limiter."""

    def __init__(self) -> None:
        self.index = PdqIndex()
        self.indexed_size: int | None = None  # log size the index reflects
        self.limiter = TokenBuckets(float(MATCH_BURST_SIGNALS), float(MATCH_SIGNALS_PER_S))
        self._lock = asyncio.Lock()

    async def refresh(self, db: Database) -> None:
        """Bring the index up to the log's current size (build it on first use)."""
        async with db.reading() as conn:
            size = await log_size(conn)
            if size == self.indexed_size:
                return
            if self.indexed_size is None:
                parts = []
                query = select(records.c.value).where(
                    records.c.signal_type == "pdq", records.c.state == State.APPROVED.value
                )
                result = await conn.stream(query)
                async for partition in result.partitions(BUILD_ROWS_PER_PARTITION):
                    parts.append(codes_from_hex(row.value for row in partition))
                codes = np.concatenate(parts) if parts else codes_from_hex([])
                self.index = await asyncio.to_thread(PdqIndex.build, codes, distinct=True)
            else:
                # Sequence numbers are committed in order: every version below
                # the size read above is visible; newer ones are re-read next time.
                changed = (
                    await conn.execute(
                        select(records.c.value, records.c.state).where(
                            records.c.state.in_(_ALL_STATES),
                            records.c.head_idx >= self.indexed_size,
                            records.c.signal_type == "pdq",
                        )
                    )
                ).all()
                live = [r.value for r in changed if r.state == State.APPROVED.value]
                dead = [r.value for r in changed if r.state != State.APPROVED.value]
                await asyncio.to_thread(self._apply, live, dead)
        self.indexed_size = size

    def _apply(self, live: list[str], dead: list[str]) -> None:
        if dead:
            self.index.remove(codes_from_hex(dead))
        if live:
            self.index.add(codes_from_hex(live))

    async def lookup(
        self, db: Database, queries: Sequence[Query], threshold: int, only_undisputed: bool
    ) -> list[list[Match]]:
        """Each query's matches among the approved records, nearest first."""
        async with self._lock:
            if any(q.signal_type == "pdq" for q in queries):
                await self.refresh(db)
            candidates = await asyncio.to_thread(find_candidates, queries, self.index, threshold)
        found = await _fetch(db, candidate_ids(candidates))
        return assemble(queries, candidates, found, only_undisputed=only_undisputed)


async def _fetch(db: Database, ids: Sequence[str]) -> dict[str, RecordInfo]:
    found: dict[str, RecordInfo] = {}
    if not ids:
        return found
    async with db.reading() as conn:
        rows = await conn.execute(
            select(
                records.c.id, records.c.signal_type, records.c.value, records.c.state,
                records.c.version, records.c.published, records.c.gov, records.c.labels,
                records.c.contributors,
            ).where(one_of(conn, records.c.id, ids))
        )  # fmt: skip
        for row in rows:
            found[row.id] = RecordInfo(
                record=row.id,
                signal_type=row.signal_type,
                value=row.value,
                state=row.state,
                labels=tuple(orjson.loads(row.labels)),
                contributors=tuple(orjson.loads(row.contributors)),
                disputed=state_from_row(row).disputed,
            )
    return found


_SERVICES: weakref.WeakKeyDictionary[web.Application, MatchService] = weakref.WeakKeyDictionary()


def service_of(app: web.Application) -> MatchService:
    """The application's match service, made on first use (kept apart from the app's state)."""
    service = _SERVICES.get(app)
    if service is None:
        service = _SERVICES[app] = MatchService()
    return service


# The handler


async def _read_request(request: web.Request) -> MatchRequest:
    if request.content_type != JSON:
        raise HashfedError(Problem.UNSUPPORTED_MEDIA_TYPE, f"send the signals as {JSON}")
    try:
        return MatchRequest.model_validate(orjson.loads(await request.read()))
    except orjson.JSONDecodeError as exc:
        raise HashfedError(Problem.MALFORMED_REQUEST, f"body is not JSON: {exc}") from exc
    except ValidationError as exc:
        errors = [
            {"pointer": "/" + "/".join(str(p) for p in e["loc"]), "detail": e["msg"]}
            for e in exc.errors()[:20]
        ]
        raise HashfedError(
            Problem.MALFORMED_REQUEST,
            f'body must be {{"signals": [{{"signal_type", "value"}}, …]}} with at most '
            f'{MAX_SIGNALS_PER_REQUEST} signals, and optionally "threshold" (0 to '
            f'{MAX_THRESHOLD}) and "only_undisputed"',
            errors=errors,
        ) from exc


async def post_match(request: web.Request) -> web.Response:
    """Parse, authorise, rate-limit, look up, serialise (invalid signals answered per item)."""
    principal = _authorised(request, READERS)
    body = await _read_request(request)
    service = service_of(request.app)
    wait_s = service.limiter.take(principal.org_id, max(1, len(body.signals)))
    if wait_s > 0:
        response = problem_response(
            HashfedError(
                Problem.RATE_LIMITED,
                f"{principal.org_id!r} may look up {MATCH_SIGNALS_PER_S} signals a second "
                f"(bursts of {MATCH_BURST_SIGNALS}); retry after the Retry-After delay",
            ),
            request,
        )
        response.headers["Retry-After"] = str(math.ceil(wait_s))
        return response
    threshold = MAX_THRESHOLD if body.threshold is None else body.threshold
    results: list[dict[str, object]] = []
    queries: list[Query] = []
    positions: list[int] = []
    for index, signal in enumerate(body.signals):
        try:
            query = parse_query(signal.signal_type, signal.value)
        except HashfedError as err:
            problem = {"type": err.problem.uri, "title": err.problem.title, "detail": err.detail}
            results.append(_result(index, signal.signal_type, signal.value, [], problem))
            continue
        positions.append(len(results))
        queries.append(query)
        results.append(_result(index, query.signal_type, query.value, [], None))
    found = await service.lookup(request.app[DB], queries, threshold, body.only_undisputed)
    for position, matches in zip(positions, found, strict=True):
        results[position]["matches"] = [_matched(match) for match in matches]
    matched = sum(1 for matches in found if matches)
    return json_response({"results": results, "matched": matched, "threshold": threshold})


def _result(
    index: int, signal_type: str, value: str, matches: list[object], problem: object
) -> dict[str, object]:
    result: dict[str, object] = {
        "index": index,
        "signal_type": signal_type,
        "value": value,
        "matches": matches,
    }
    if problem is not None:
        result["problem"] = problem
    return result


def _matched(match: Match) -> dict[str, object]:
    record = match.record
    return {
        "record": record.record,
        "signal_type": record.signal_type,
        "value": record.value,
        "distance": match.distance,
        "state": match.state,
        "disputed": record.disputed,
        "labels": list(record.labels),
        "contributors": list(record.contributors),
    }


MATCH_ROUTES: tuple[Route, ...] = (
    Route(
        "POST",
        "/v1/match",
        post_match,
        "Look up to 1,000 signals against the approved records (exact, or PDQ by distance)",
        READERS,
        request=MatchRequest,
        response=MatchResponse,
        tags=("records",),
    ),
)
