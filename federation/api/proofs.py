"""Log endpoints: checkpoints, inclusion and consistency proofs, leaves by range."""

from __future__ import annotations

import base64
from typing import Any, Literal

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import bindparam, func, select

from federation.api.context import DB, INTAKE, TILES
from federation.api.routes import READERS, Route, int_query, json_response
from federation.api.streaming import NDJSON, NdjsonStream
from federation.auth.middleware import log_size_of, principal_of
from federation.log.checkpoints import checkpoint_at, latest_checkpoint
from federation.log.feed import HEAD, STREAM_CHUNK, log_size, read_leaves
from federation.log.tree import ProofTiles, point_fetch
from federation.protocol.problems import HashfedError, Problem
from federation.protocol.statements import Role
from federation.store.db import Database
from federation.store.schema import LEAF_STATEMENT, keys, log, statements

PROOF_READERS = (*READERS, Role.CONTRIBUTOR)
LEAF_READERS = (Role.AUDITOR, Role.ADMIN)
NOTE_TYPE = "text/plain; charset=utf-8"
MAX_LEAVES_PAGE = 10_000


class InclusionProof(BaseModel):
    model_config = ConfigDict(extra="forbid")
    index: int
    size: int
    leaf_hash: str = Field(description="Base64 of SHA-256(0x00 || leaf)")
    hashes: list[str] = Field(description="Audit path, base64, RFC 9162 order")


class ConsistencyProof(BaseModel):
    model_config = ConfigDict(extra="forbid")
    old_size: int
    size: int
    hashes: list[str]


class ProofQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    index: int | None = Field(None, description="Leaf index (or give 'statement')")
    statement: str | None = Field(None, description="Statement id; proves its leaf")
    size: int | None = Field(None, description="Tree size of the checkpoint; default latest")


class ConsistencyQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    old_size: int = Field(description="Size of the checkpoint the client holds")
    size: int | None = Field(None, description="Newer size; default latest")


class Leaf(BaseModel):
    model_config = ConfigDict(extra="forbid")
    index: int
    leaf: str = Field(description="Base64 of the exact leaf bytes")


class LeavesPage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    leaves: list[Leaf]
    next: int | None = Field(description="Index to continue from, null at the end")


class LeavesQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    start: int = 0
    limit: int = Field(1000, ge=1, le=MAX_LEAVES_PAGE)
    end: int | None = Field(None, ge=0, description="NDJSON stream: stop before this index")
    format: Literal["base64", "raw"] = Field(
        "base64",
        description="NDJSON stream: 'base64' lines {index, leaf}; 'raw' lines are the leaves' "
        "exact bytes in order from 'start' (a leaf is canonical JSON: it holds no newline), "
        "with a line {kind: gap, next} where an index is missing. Either way an "
        "{kind: end} trailer closes the stream",
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


STATEMENT_LEAF = select(statements.c.leaf_idx).where(statements.c.id == bindparam("sid"))


async def _latest_size(request: web.Request, db: Database) -> int:
    """The log size read when the request was authenticated (read now if it was not)."""
    size = log_size_of(request)
    if size is None:
        head = await db.point.first(HEAD)
        assert head is not None
        size = int(head[0])
    return size


def _proof_tiles(request: web.Request, db: Database) -> ProofTiles:
    return ProofTiles(point_fetch(db.point), request.app[TILES])


def _tree_size(request: web.Request, current: int, name: str = "size") -> int:
    size = int_query(request, name, current, minimum=0)
    if size > current:
        raise HashfedError(Problem.NOT_FOUND, f"the log has {current} leaves, not {size}")
    return size


async def get_checkpoint(request: web.Request) -> web.Response:
    principal_of(request)
    point = request.app[DB].point
    if "size" in request.query:
        note = await checkpoint_at(point, int_query(request, "size", 0, minimum=0))
    else:
        note = await latest_checkpoint(point)
    response = web.Response(text=note, content_type="text/plain", charset="utf-8")
    response.headers["Hashfed-Log-Key"] = request.app[INTAKE].signer.verifier_key
    return response


async def get_inclusion_proof(request: web.Request) -> web.Response:
    principal_of(request).require(*PROOF_READERS)
    db = request.app[DB]
    size = _tree_size(request, await _latest_size(request, db))
    sid = request.query.get("statement")
    if sid is not None:
        row = await db.point.first(STATEMENT_LEAF, sid=sid)
        if row is None:
            raise HashfedError(Problem.NOT_FOUND, f"no statement {sid} in the log")
        index = int(row[0])
    else:
        if "index" not in request.query:
            raise HashfedError(Problem.MALFORMED_REQUEST, "give 'index' or 'statement'")
        index = int_query(request, "index", 0, minimum=0)
    if not 0 <= index < size:
        raise HashfedError(Problem.NOT_FOUND, f"leaf {index} is not in the tree of size {size}")
    leaf_hash, proof = await _proof_tiles(request, db).inclusion_proof(index, size)
    return json_response(
        {
            "index": index,
            "size": size,
            "leaf_hash": _b64(leaf_hash),
            "hashes": [_b64(h) for h in proof],
        }
    )


async def get_consistency_proof(request: web.Request) -> web.Response:
    principal_of(request).require(*PROOF_READERS)
    db = request.app[DB]
    size = _tree_size(request, await _latest_size(request, db))
    old = _tree_size(request, size, "old_size")
    if "old_size" not in request.query or old == 0:
        raise HashfedError(
            Problem.MALFORMED_REQUEST, "'old_size' must be a positive tree size you hold"
        )
    proof = await _proof_tiles(request, db).consistency_proof(old, size) if old < size else []
    return json_response({"old_size": old, "size": size, "hashes": [_b64(h) for h in proof]})


async def get_leaves(request: web.Request) -> web.StreamResponse:
    principal_of(request).require(*LEAF_READERS)
    start = int_query(request, "start", 0, minimum=0)
    if NDJSON in request.headers.get("Accept", ""):
        end = int_query(request, "end", 0, minimum=0) if "end" in request.query else None
        form = request.query.get("format", "base64")
        if form not in ("base64", "raw"):
            raise HashfedError(Problem.MALFORMED_REQUEST, "'format' must be base64 or raw")
        return await _stream_leaves(request, start, end, raw=form == "raw")
    limit = min(int_query(request, "limit", 1000), MAX_LEAVES_PAGE)
    async with request.app[DB].reading() as conn:
        rows = (
            await conn.execute(
                select(log.c.idx, log.c.leaf)
                .where(log.c.idx >= start)
                .order_by(log.c.idx)
                .limit(limit)
            )
        ).all()
    leaves: list[dict[str, Any]] = [
        {"index": int(r.idx), "leaf": _b64(bytes(r.leaf))} for r in rows
    ]
    return json_response(
        {"leaves": leaves, "next": leaves[-1]["index"] + 1 if len(leaves) == limit else None}
    )


async def _stream_leaves(
    request: web.Request, start: int, end: int | None, *, raw: bool
) -> web.StreamResponse:
    """Leaves [start, end) as NDJSON lines, then an ``end`` trailer.

    A line is ``{"index", "leaf"}`` (base64), or with ``raw`` the leaf's bytes
    themselves: no encoding on either side, and a third less to send.
    """
    db = request.app[DB]
    async with db.reading() as conn:
        size = await log_size(conn)
    end = size if end is None else min(end, size)
    async with NdjsonStream(request) as stream:
        await _write_leaves(stream, db, start, end, size, raw)
    return stream.response


async def _write_leaves(
    stream: NdjsonStream, db: Database, position: int, end: int, size: int, raw: bool
) -> None:
    while position < end:
        async with db.reading() as conn:
            rows = await read_leaves(conn, position, end, STREAM_CHUNK)
        if not rows:
            break
        if raw:
            await stream.write(_raw_lines(position, rows))
        else:
            await stream.write(
                b"".join(
                    b'{"index":%d,"leaf":"%s"}\n' % (idx, base64.b64encode(leaf))
                    for idx, leaf in rows
                )
            )
        position = rows[-1][0] + 1
    await stream.write(orjson.dumps({"kind": "end", "next": position, "size": size}) + b"\n")


def _raw_lines(position: int, rows: list[tuple[int, bytes]]) -> bytes:
    """Each leaf on a line; where an index is missing from the table, a line
    ``{"kind":"gap","next":N}`` says the next leaf is at N (no leaf starts so)."""
    if rows[0][0] == position and rows[-1][0] - position == len(rows) - 1:
        return b"".join([leaf + b"\n" for _, leaf in rows])
    lines = []
    for idx, leaf in rows:
        if idx != position:
            lines.append(b'{"kind":"gap","next":%d}\n' % idx)
        lines.append(leaf + b"\n")
        position = idx + 1
    return b"".join(lines)


class StatementLeaf(BaseModel):
    model_config = ConfigDict(extra="forbid")
    index: int
    leaf: str = Field(description="Base64 of the statement's leaf (signed bytes and signature)")


class KeyInfoOut(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key_id: str
    org: str
    public_key: str = Field(description="Base64 raw Ed25519 key; its SHA-256 prefix is the id")
    status: str
    added_index: int
    retired_index: int | None
    revoked_index: int | None


async def get_statement(request: web.Request) -> web.Response:
    """A statement's leaf; members see those that caused a version consumers see."""
    principal = principal_of(request)
    sid = request.match_info["statement_id"]
    async with request.app[DB].reading() as conn:
        row = (
            await conn.execute(
                select(statements.c.leaf_idx, statements.c.org_id).where(statements.c.id == sid)
            )
        ).first()
        allowed = row is not None and (
            principal.roles & {Role.ADMIN, Role.AUDITOR} or row.org_id == principal.org_id
        )
        if row is not None and not allowed:
            # Its versions are the leaves up to the next statement leaf.
            following = (
                await conn.execute(
                    select(func.min(log.c.idx)).where(
                        log.c.idx > row.leaf_idx, log.c.kind == LEAF_STATEMENT
                    )
                )
            ).scalar()
            bound = [log.c.idx > row.leaf_idx, log.c.visible.is_(True)]
            if following is not None:
                bound.append(log.c.idx < following)
            allowed = (
                await conn.execute(select(log.c.idx).where(*bound).limit(1))
            ).first() is not None
        if row is None or not allowed:
            raise HashfedError(
                Problem.NOT_FOUND, f"no statement {sid} visible to {principal.org_id!r}"
            )
        leaf = (
            await conn.execute(select(log.c.leaf).where(log.c.idx == row.leaf_idx))
        ).scalar_one()
    return json_response({"index": row.leaf_idx, "leaf": _b64(bytes(leaf))})


async def get_key(request: web.Request) -> web.Response:
    """A registered public key and its history (public keys are not secret)."""
    principal_of(request)
    kid = request.match_info["key_id"]
    async with request.app[DB].reading() as conn:
        row = (await conn.execute(select(keys).where(keys.c.id == kid))).first()
    if row is None:
        raise HashfedError(Problem.NOT_FOUND, f"no key {kid}")
    return json_response(
        {
            "key_id": row.id,
            "org": row.org_id,
            "public_key": _b64(bytes(row.public_key)),
            "status": row.status,
            "added_index": row.added_idx,
            "retired_index": row.retired_idx,
            "revoked_index": row.revoked_idx,
        }
    )


PROOF_ROUTES: tuple[Route, ...] = (
    Route("GET", "/v1/log/checkpoint", get_checkpoint,
          "The latest signed checkpoint (C2SP tlog-checkpoint note), or the one at ?size=",
          tuple(Role), tags=("log",)),
    Route("GET", "/v1/log/proof/inclusion", get_inclusion_proof,
          "Inclusion proof of a leaf (by index or statement id) in a checkpoint",
          PROOF_READERS, response=InclusionProof, query=ProofQuery, tags=("log",)),
    Route("GET", "/v1/log/proof/consistency", get_consistency_proof,
          "Consistency proof between two tree sizes", PROOF_READERS,
          response=ConsistencyProof, query=ConsistencyQuery, tags=("log",)),
    Route("GET", "/v1/log/leaves", get_leaves, "Leaves by range, exact bytes (auditors)",
          LEAF_READERS, response=LeavesPage, query=LeavesQuery, tags=("log",)),
    Route("GET", "/v1/statements/{statement_id}", get_statement,
          "A statement's leaf (own, overseers', or one that caused a visible version)",
          tuple(Role), response=StatementLeaf, tags=("log",), path_params=("statement_id",)),
    Route("GET", "/v1/keys/{key_id}", get_key, "A registered public key and its history",
          tuple(Role), response=KeyInfoOut, tags=("log",), path_params=("key_id",)),
)  # fmt: skip
