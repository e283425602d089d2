"""Pydantic models at the HTTP edge; the OpenAPI document is generated from them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from federation.protocol.statements import Envelope

__all__ = [
    "Counts",
    "Envelope",
    "FeedEnd",
    "FeedPage",
    "FeedQuery",
    "GovernanceResult",
    "Health",
    "ItemProblem",
    "ItemResult",
    "KeyOut",
    "Me",
    "OrgList",
    "OrgOut",
    "ProblemDetails",
    "RecordList",
    "RecordOut",
    "RecordVersion",
    "StatementResult",
]


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProblemDetails(_Out):
    """RFC 9457 problem details; ``type`` is stable, match on it."""

    model_config = ConfigDict(extra="allow")
    type: str = Field(examples=["urn:hashfed:problem:signature-invalid"])
    title: str
    status: int
    detail: str
    instance: str | None = None


class ItemProblem(_Out):
    type: str
    title: str
    detail: str


class ItemResult(_Out):
    index: int = Field(description="Position of the item in the statement's items")
    status: Literal["accepted", "duplicate", "refused"]
    record: str | None = Field(None, description="Record id (absent when the item was refused)")
    problem: ItemProblem | None = None


class Counts(_Out):
    accepted: int
    duplicate: int
    refused: int


class StatementResult(_Out):
    """Per-item outcome of a submissions or withdrawals statement."""

    statement_id: str = Field(description="Hex SHA-256 of the signed bytes")
    leaf_index: int | None = Field(
        description="Log index of the statement's leaf; null when nothing changed"
    )
    counts: Counts
    results: list[ItemResult]


class GovernanceResult(_Out):
    statement_id: str
    type: str
    leaf_index: int
    org: str | None = None
    key_id: str | None = None
    status: str | None = None
    roles: list[str] | None = None


class RecordVersion(_Out):
    """One feed item: a record version, exactly the bytes of its log leaf."""

    kind: Literal["version"]
    index: int = Field(description="Log index of this version")
    record: str
    version: int
    signal_type: str
    value: str
    state: str = Field(
        description="approved, or a tombstone: withdrawn (by its contributors) or retracted "
        "(by governance); pending and rejected versions never reach consumers"
    )
    labels: list[str]
    contributors: list[str]
    disputed: bool = Field(description="An open dispute, or a false positive against a positive")
    opinions: dict[str, int] = Field(description="Opinion counts by kind")
    cause: str = Field(description="Id of the statement that caused this version")
    time: int


class FeedPage(_Out):
    items: list[RecordVersion]
    next_cursor: str = Field(description="Pass as 'after' to continue; opaque")
    has_more: bool


class FeedEnd(_Out):
    """Last line of an NDJSON feed stream; a stream without it was truncated."""

    kind: Literal["end"]
    next_cursor: str
    count: int
    has_more: bool


class FeedQuery(_Out):
    after: str | None = Field(None, description="Cursor from a previous page; omit to start")
    limit: int = Field(1000, ge=1, description="Page size (JSON: at most 10,000)")
    end: int | None = Field(
        None,
        ge=0,
        description="Only versions before this log index: pins the feed to a checkpoint's "
        "tree size (an auditor comparing the feed with the checkpoint it audited)",
    )


class KeyOut(_Out):
    key_id: str
    status: str
    added_index: int
    retired_index: int | None
    revoked_index: int | None
    revoked_at: int | None


class OrgOut(_Out):
    id: str
    name: str
    status: str
    roles: list[str]
    admitted_index: int
    keys: list[KeyOut]


class OrgList(_Out):
    orgs: list[OrgOut]


class RecordOut(_Out):
    id: str
    signal_type: str
    value: str
    state: str
    labels: list[str]
    contributors: list[str]
    disputed: bool
    opinions: dict[str, int]
    version: int
    head_index: int
    created_at: int
    updated_at: int


class RecordList(_Out):
    records: list[RecordOut]
    next: str | None = Field(description="Pass as 'after' for the next page")


class RecordsQuery(_Out):
    after: str | None = Field(None, description="Record id to continue after; omit to start")
    limit: int = Field(1000, ge=1, description="Page size (JSON: at most 10,000; NDJSON: all)")


class RecordState(_Out):
    """A record's state as the log determines it: one line of the NDJSON listing (all
    records, in no particular order), canonical JSON (sorted keys, no spaces), so that
    an auditor compares bytes."""

    contributors: list[str]
    disputed: bool
    head_index: int
    id: str
    labels: list[str]
    state: str
    version: int


class RecordsEnd(_Out):
    """Last line of an NDJSON records listing; a stream without it was truncated."""

    kind: Literal["end"]
    count: int


class Me(_Out):
    org: str
    key_id: str
    roles: list[str]
    origin: str
    log_size: int
    server_version: str


class Health(_Out):
    status: Literal["ok"]
