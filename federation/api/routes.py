"""HTTP handlers. Each one parses, authorises, makes one domain call and serialises."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError
from sqlalchemy import Integer, bindparam, select

import federation
from federation.api import models as m
from federation.api.context import DB, INTAKE, SETTINGS
from federation.api.streaming import NDJSON, NdjsonStream
from federation.auth.middleware import log_size_of, principal_of
from federation.identities.service import Principal, list_orgs
from federation.intake import Outcome
from federation.log.feed import (
    DEFAULT_PAGE,
    MAX_PAGE,
    STREAM_CHUNK,
    decode_cursor,
    driver_rows,
    encode_cursor,
    log_size,
    read_page,
)
from federation.protocol.problems import HashfedError, Problem
from federation.protocol.statements import Role, SignedStatement, StatementType
from federation.records.ingest import state_from_row
from federation.store.db import Database
from federation.store.schema import records

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
JSON = "application/json"
READERS = (Role.CONSUMER, Role.ADMIN, Role.AUDITOR)


@dataclass(frozen=True)
class Route:
    """One endpoint: routing, required roles and the models the OpenAPI document shows."""

    method: str
    path: str
    handler: Handler
    summary: str
    roles: tuple[Role, ...] | None  # None: public
    request: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    query: type[BaseModel] | None = None
    tags: tuple[str, ...] = ()
    ndjson: type[BaseModel] | None = None  # the NDJSON stream's last line
    ndjson_item: type[BaseModel] = m.RecordVersion  # the model of its other lines
    path_params: tuple[str, ...] = field(default=())


def json_response(data: Any, status: int = 200, *, replayed: bool = False) -> web.Response:
    response = web.Response(body=orjson.dumps(data), status=status, content_type=JSON)
    if replayed:
        response.headers["Hashfed-Replayed"] = "true"
    return response


async def read_envelope(request: web.Request) -> m.Envelope:
    if request.content_type != JSON:
        raise HashfedError(Problem.UNSUPPORTED_MEDIA_TYPE, f"send the statement envelope as {JSON}")
    try:
        return m.Envelope.model_validate(orjson.loads(await request.read()))
    except orjson.JSONDecodeError as exc:
        raise HashfedError(Problem.MALFORMED_REQUEST, f"body is not JSON: {exc}") from exc
    except ValidationError as exc:
        errors = [
            {"pointer": "/" + "/".join(str(p) for p in e["loc"]), "detail": e["msg"]}
            for e in exc.errors()
        ]
        raise HashfedError(
            Problem.MALFORMED_REQUEST,
            'body must be {"statement": <base64>, "signature": <base64>} and nothing else',
            errors=errors,
        ) from exc


def _authorised(request: web.Request, roles: tuple[Role, ...]) -> Principal:
    principal = principal_of(request)
    principal.require(*roles)
    return principal


async def accept_statement(
    request: web.Request,
    roles: tuple[Role, ...],
    types: frozenset[str],
    *,
    subject: str | None = None,
    key_id: str | None = None,
) -> Outcome:
    principal = _authorised(request, roles)
    envelope = await read_envelope(request)

    def check(statement: SignedStatement) -> None:
        # A statement about an org or key must name the one in the URL.
        if subject is not None and statement.payload.get("subject") != subject:
            raise HashfedError(
                Problem.STATEMENT_MALFORMED, f"statement subject must be {subject!r} (the URL's)"
            )
        if key_id is not None and statement.payload.get("key_id") != key_id:
            raise HashfedError(
                Problem.STATEMENT_MALFORMED, f"statement key_id must be {key_id!r} (the URL's)"
            )

    return await request.app[INTAKE].accept(principal, envelope, types, check=check)


# Handlers


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def openapi(request: web.Request) -> web.Response:
    from federation.api.openapi import openapi_document

    return json_response(openapi_document())


async def me(request: web.Request) -> web.Response:
    principal = principal_of(request)
    size = log_size_of(request)
    if size is None:
        async with request.app[DB].reading() as conn:
            size = await log_size(conn)
    return json_response(
        {
            "org": principal.org_id,
            "key_id": principal.key_id,
            "roles": sorted(principal.roles),
            "origin": request.app[SETTINGS].origin,
            "log_size": size,
            "server_version": federation.__version__,
        }
    )


async def post_submissions(request: web.Request) -> web.Response:
    outcome = await accept_statement(
        request, (Role.CONTRIBUTOR,), frozenset({StatementType.SUBMISSIONS})
    )
    return json_response(outcome.result, replayed=outcome.replayed)


async def post_withdrawals(request: web.Request) -> web.Response:
    outcome = await accept_statement(
        request, (Role.CONTRIBUTOR,), frozenset({StatementType.WITHDRAWALS})
    )
    return json_response(outcome.result, replayed=outcome.replayed)


async def get_feed(request: web.Request) -> web.StreamResponse:
    _authorised(request, READERS)
    position = decode_cursor(request.query.get("after"))
    limit = int_query(request, "limit", DEFAULT_PAGE)
    end = int_query(request, "end", 0, minimum=0) if "end" in request.query else None
    db = request.app[DB]
    if NDJSON in request.headers.get("Accept", ""):
        return await _stream_feed(request, db, position, limit, end)
    limit = min(limit, MAX_PAGE)
    async with db.reading() as conn:
        rows = await read_page(conn, position, limit + 1, end)
    has_more = len(rows) > limit
    rows = rows[:limit]
    next_position = rows[-1][0] + 1 if rows else position
    # The leaves are already canonical JSON objects: splice them, don't re-encode.
    body = b"".join(
        (
            b'{"items":[',
            b",".join(leaf for _, leaf in rows),
            b'],"next_cursor":',
            orjson.dumps(encode_cursor(next_position)),
            b',"has_more":',
            b"true" if has_more else b"false",
            b"}",
        )
    )
    return web.Response(body=body, content_type=JSON)


async def _stream_feed(
    request: web.Request, db: Database, position: int, limit: int, end: int | None
) -> web.StreamResponse:
    count = 0
    has_more = False
    async with NdjsonStream(request) as stream:
        while count < limit:
            want = min(STREAM_CHUNK, limit - count)
            async with db.reading() as conn:
                rows = await read_page(conn, position, want + 1, end)
            has_more = len(rows) > want
            rows = rows[:want]
            if not rows:
                break
            await stream.write(b"".join(leaf + b"\n" for _, leaf in rows))
            count += len(rows)
            position = rows[-1][0] + 1
            if not has_more:
                break
        trailer = {
            "kind": "end",
            "next_cursor": encode_cursor(position),
            "count": count,
            "has_more": has_more,
        }
        await stream.write(orjson.dumps(trailer) + b"\n")
    return stream.response


def int_query(request: web.Request, name: str, default: int, *, minimum: int = 1) -> int:
    """An integer query parameter of at least ``minimum``; MALFORMED_REQUEST otherwise."""
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or len(raw) > 18 or int(raw) < minimum:
        raise HashfedError(
            Problem.MALFORMED_REQUEST, f"'{name}' must be an integer of at least {minimum}"
        )
    return int(raw)


async def get_record(request: web.Request) -> web.Response:
    principal = _authorised(request, (*READERS, Role.CONTRIBUTOR))
    rid = request.match_info["record_id"]
    async with request.app[DB].reading() as conn:
        row = (await conn.execute(select(records).where(records.c.id == rid))).first()
    contributors = orjson.loads(row.contributors) if row is not None else []
    visible = row is not None and (
        principal.roles & {Role.ADMIN, Role.AUDITOR}
        or (Role.CONSUMER in principal.roles and row.published)
        or principal.org_id in contributors
    )
    if not visible:
        raise HashfedError(Problem.NOT_FOUND, f"no record {rid} visible to {principal.org_id!r}")
    assert row is not None
    return json_response(_record_out(row))


_RECORDS_PAGE = (
    select(records)
    .where(records.c.id > bindparam("after"))
    .order_by(records.c.id)
    .limit(bindparam("limit", type_=Integer))
)


async def get_records(request: web.Request) -> web.StreamResponse:
    """Every record's current state, by id (overseers: auditors compare it with the log)."""
    _authorised(request, (Role.ADMIN, Role.AUDITOR))
    after = request.query.get("after", "")
    if NDJSON in request.headers.get("Accept", ""):
        return await _stream_record_states(request, after)
    limit = min(int_query(request, "limit", 1000), MAX_PAGE)
    async with request.app[DB].reading() as conn:
        rows = await driver_rows(conn, _RECORDS_PAGE, after=after, limit=limit)
    items = [_record_out(row, raw=True) for row in rows]
    return json_response(
        {"records": items, "next": items[-1]["id"] if len(items) == limit else None}
    )


_RECORD_STATES = select(
    records.c.id, records.c.signal_type, records.c.value, records.c.state, records.c.labels,
    records.c.contributors, records.c.version, records.c.published, records.c.head_idx,
    records.c.gov,
)  # fmt: skip


def _record_out(row: Any, *, raw: bool = False) -> dict[str, Any]:
    """A ``records`` row as served. ``raw``: labels and contributors (sorted JSON lists)
    are spliced in as stored, not parsed and encoded again."""
    if row.gov == "{}":  # no approvals, opinions or disputes: nothing to derive
        disputed, opinions = False, {}
    else:
        state = state_from_row(row)
        disputed, opinions = state.disputed, state.opinion_counts()
    return {
        "id": row.id,
        "signal_type": row.signal_type,
        "value": row.value,
        "state": row.state,
        "labels": orjson.Fragment(row.labels) if raw else orjson.loads(row.labels),
        "contributors": (
            orjson.Fragment(row.contributors) if raw else orjson.loads(row.contributors)
        ),
        "disputed": disputed,
        "opinions": opinions,
        "version": row.version,
        "head_index": row.head_idx,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    }


async def _stream_record_states(request: web.Request, after: str) -> web.StreamResponse:
    """Every record (after ``after``) as a :class:`RecordState` line, then a trailer.

    One query, in the table's order: walking the id index costs a random row
    read per record (half the stream's time on SQLite). The lines are in no
    particular order."""
    query = _RECORD_STATES.where(records.c.id > after) if after else _RECORD_STATES
    count = 0
    async with NdjsonStream(request) as stream:
        async with request.app[DB].reading() as conn:
            result = await conn.stream(query)
            async for rows in result.partitions(STREAM_CHUNK):
                await stream.write(b"".join([_state_line(row) for row in rows]))
                count += len(rows)
        await stream.write(orjson.dumps({"kind": "end", "count": count}) + b"\n")
    return stream.response


def _state_line(row: Any) -> bytes:
    """A record's log-determined state: canonical JSON (sorted keys; the stored lists are
    sorted, compact JSON) on a line."""
    rid, _, _, state, labels, contributors, version, _, head_idx, gov = row
    disputed = gov != "{}" and state_from_row(row).disputed
    return _STATE_LINE % (
        contributors.encode(), b"true" if disputed else b"false", head_idx, orjson.dumps(rid),
        labels.encode(), orjson.dumps(state), version,
    )  # fmt: skip


_STATE_LINE = (
    b'{"contributors":%s,"disputed":%s,"head_index":%d,"id":%s,"labels":%s,"state":%s,'
    b'"version":%d}\n'
)


async def get_orgs(request: web.Request) -> web.Response:
    _authorised(request, (Role.ADMIN, Role.AUDITOR))
    async with request.app[DB].reading() as conn:
        return json_response({"orgs": await list_orgs(conn)})


async def get_org(request: web.Request) -> web.Response:
    principal = principal_of(request)
    org_id = request.match_info["org_id"]
    if org_id != principal.org_id:
        principal.require(Role.ADMIN, Role.AUDITOR)
    async with request.app[DB].reading() as conn:
        found = [o for o in await list_orgs(conn) if o["id"] == org_id]
    if not found:
        raise HashfedError(Problem.NOT_FOUND, f"organisation {org_id!r} does not exist")
    return json_response(found[0])


async def post_org(request: web.Request) -> web.Response:
    outcome = await accept_statement(request, (Role.ADMIN,), frozenset({StatementType.ORG_ADMIT}))
    return json_response(
        outcome.result, 200 if outcome.replayed else 201, replayed=outcome.replayed
    )


def _governance(stype: StatementType, *, with_key: bool = False) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        outcome = await accept_statement(
            request,
            (Role.ADMIN,),
            frozenset({stype}),
            subject=request.match_info["org_id"],
            key_id=request.match_info["key_id"] if with_key else None,
        )
        return json_response(outcome.result, replayed=outcome.replayed)

    handler.__name__ = stype.value.replace(".", "_")
    return handler


ADMIN = (Role.ADMIN,)
ROUTES: tuple[Route, ...] = (
    Route("GET", "/healthz", healthz, "Liveness probe", None, response=m.Health, tags=("meta",)),
    Route("GET", "/v1/openapi.json", openapi, "This OpenAPI document", None, tags=("meta",)),
    Route(
        "GET",
        "/v1/me",
        me,
        "Who the signed request is from",
        tuple(Role),
        response=m.Me,
        tags=("meta",),
    ),
    Route(
        "POST",
        "/v1/submissions",
        post_submissions,
        "Push a signed batch of submissions; per-item results",
        (Role.CONTRIBUTOR,),
        request=m.Envelope,
        response=m.StatementResult,
        tags=("records",),
    ),
    Route(
        "POST",
        "/v1/withdrawals",
        post_withdrawals,
        "Withdraw the signer's own contributions",
        (Role.CONTRIBUTOR,),
        request=m.Envelope,
        response=m.StatementResult,
        tags=("records",),
    ),
    Route(
        "GET",
        "/v1/feed",
        get_feed,
        "Page through visible record versions in log order (JSON, or NDJSON stream)",
        READERS,
        response=m.FeedPage,
        query=m.FeedQuery,
        ndjson=m.FeedEnd,
        tags=("records",),
    ),
    Route(
        "GET",
        "/v1/records",
        get_records,
        "Every record's current state, by id (overseers); as NDJSON, the state the log "
        "determines, one canonical line a record",
        (Role.ADMIN, Role.AUDITOR),
        response=m.RecordList,
        query=m.RecordsQuery,
        ndjson=m.RecordsEnd,
        ndjson_item=m.RecordState,
        tags=("records",),
    ),
    Route(
        "GET",
        "/v1/records/{record_id}",
        get_record,
        "A record's current state",
        (*READERS, Role.CONTRIBUTOR),
        response=m.RecordOut,
        tags=("records",),
        path_params=("record_id",),
    ),
    Route(
        "GET",
        "/v1/orgs",
        get_orgs,
        "List organisations and their keys",
        (Role.ADMIN, Role.AUDITOR),
        response=m.OrgList,
        tags=("governance",),
    ),
    Route(
        "POST",
        "/v1/orgs",
        post_org,
        "Admit an organisation with its first key (org.admit)",
        ADMIN,
        request=m.Envelope,
        response=m.GovernanceResult,
        status=201,
        tags=("governance",),
    ),
    Route(
        "GET",
        "/v1/orgs/{org_id}",
        get_org,
        "One organisation (own, or any for admins)",
        tuple(Role),
        response=m.OrgOut,
        tags=("governance",),
        path_params=("org_id",),
    ),
    Route(
        "POST",
        "/v1/orgs/{org_id}/suspend",
        _governance(StatementType.ORG_SUSPEND),
        "Suspend an organisation (org.suspend)",
        ADMIN,
        request=m.Envelope,
        response=m.GovernanceResult,
        tags=("governance",),
        path_params=("org_id",),
    ),
    Route(
        "POST",
        "/v1/orgs/{org_id}/reinstate",
        _governance(StatementType.ORG_REINSTATE),
        "Reinstate a suspended organisation (org.reinstate)",
        ADMIN,
        request=m.Envelope,
        response=m.GovernanceResult,
        tags=("governance",),
        path_params=("org_id",),
    ),
    Route(
        "POST",
        "/v1/orgs/{org_id}/keys",
        _governance(StatementType.KEY_ADD),
        "Register another key for an organisation (key.add)",
        ADMIN,
        request=m.Envelope,
        response=m.GovernanceResult,
        tags=("governance",),
        path_params=("org_id",),
    ),
    Route(
        "POST",
        "/v1/orgs/{org_id}/keys/{key_id}/retire",
        _governance(StatementType.KEY_RETIRE, with_key=True),
        "Retire a key after rotation (key.retire)",
        ADMIN,
        request=m.Envelope,
        response=m.GovernanceResult,
        tags=("governance",),
        path_params=("org_id", "key_id"),
    ),
    Route(
        "POST",
        "/v1/orgs/{org_id}/keys/{key_id}/revoke",
        _governance(StatementType.KEY_REVOKE, with_key=True),
        "Revoke a compromised key (key.revoke)",
        ADMIN,
        request=m.Envelope,
        response=m.GovernanceResult,
        tags=("governance",),
        path_params=("org_id", "key_id"),
    ),
)
