"""Submissions, withdrawals, idempotency and the feed, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest
from sqlalchemy import func, select

from clients.client import FederationClient
from clients.errors import (
    FederationError,
    MalformedRequest,
    StatementKeyMismatch,
    StatementMalformed,
    StatementNotCanonical,
    StatementSignatureInvalid,
    StatementStale,
    StatementWrongType,
)
from federation.log.feed import encode_cursor, log_size
from federation.protocol.problems import Problem
from federation.protocol.signals import record_id
from federation.protocol.statements import DOMAIN_TAG, SignedStatement, canonical_json
from federation.store.schema import contributions, records
from tests.conftest import Federation

MD5 = "d41d8cd98f00b204e9800998ecf8427e"
PDQ = "f" * 64


def item(value: str = MD5, signal_type: str = "md5", labels: list[str] | None = None) -> Any:
    return {"signal_type": signal_type, "value": value, "labels": labels or ["recruitment"]}


async def pull_all(client: FederationClient) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        page = await client.feed_page(cursor, limit=3)
        items.extend(page["items"])
        cursor = page["next_cursor"]
        if not page["has_more"]:
            return items


async def _size(fed: Federation) -> int:
    async with fed.db.reading() as conn:
        return await log_size(conn)


@pytest.fixture
async def members(fed: Federation) -> tuple[FederationClient, FederationClient]:
    a = fed.client(await fed.admit("alpha"))
    b = fed.client(await fed.admit("beta"))
    await a.__aenter__()
    await b.__aenter__()
    return a, b


async def test_batch_gives_per_item_results(fed: Federation, members: Any) -> None:
    a, _ = members
    result = await a.submit(
        [
            item(MD5.upper()),
            item("xyz"),
            item(PDQ, "pdq"),
            item(MD5),  # same signal as the first, after normalisation
            item("a" * 40, "sha1", ["no-such-label"]),
            item("b" * 32, "bogus"),
        ]
    )
    assert result["counts"] == {"accepted": 2, "duplicate": 0, "refused": 4}
    by_index = {r["index"]: r for r in result["results"]}
    assert by_index[0]["status"] == "accepted"
    assert by_index[0]["record"] == record_id("md5", MD5)
    assert by_index[1]["problem"]["type"] == Problem.INVALID_SIGNAL.uri
    assert by_index[3]["problem"]["type"] == Problem.DUPLICATE_ITEM.uri
    assert by_index[4]["problem"]["type"] == Problem.UNKNOWN_LABEL.uri
    assert by_index[5]["problem"]["type"] == Problem.UNKNOWN_SIGNAL_TYPE.uri
    feed = await pull_all(a)
    assert sorted(v["value"] for v in feed) == sorted([MD5, PDQ])


async def test_same_statement_twice_is_idempotent(fed: Federation, members: Any) -> None:
    a, _ = members
    statement = a.sign({"type": "submissions", "items": [item()]})
    first = await a.send_statement("/v1/submissions", statement)
    size = await _size(fed)
    response = await a.request(
        "POST", "/v1/submissions", body=statement.envelope().model_dump_json().encode()
    )
    assert response.json() == first
    assert response.headers.get("Hashfed-Replayed") == "true"
    assert await _size(fed) == size


async def test_resubmitting_a_signal_is_a_duplicate(fed: Federation, members: Any) -> None:
    a, _ = members
    await a.submit([item()])
    size = await _size(fed)
    again = await a.submit([item(labels=["glorification"])])
    assert again["counts"]["duplicate"] == 1 and again["leaf_index"] is None
    assert await _size(fed) == size


async def test_two_members_make_one_record_with_two_contributions(
    fed: Federation, members: Any
) -> None:
    a, b = members
    await a.submit([item(labels=["recruitment"])])
    result = await b.submit([item(labels=["glorification"])])
    assert result["counts"]["accepted"] == 1
    async with fed.db.reading() as conn:
        assert (await conn.execute(select(func.count()).select_from(records))).scalar() == 1
        assert (await conn.execute(select(func.count()).select_from(contributions))).scalar() == 2
    versions = await pull_all(a)
    assert [v["version"] for v in versions] == [1, 2]
    assert versions[-1]["contributors"] == ["alpha", "beta"]
    assert versions[-1]["labels"] == ["glorification", "recruitment"]
    record = await a.get_record(record_id("md5", MD5))
    assert record["version"] == 2 and record["contributors"] == ["alpha", "beta"]


async def test_withdrawal_and_tombstone(fed: Federation, members: Any) -> None:
    a, b = members
    await a.submit([item(labels=["recruitment"])])
    await b.submit([item(labels=["glorification"])])
    first = await a.withdraw([{"signal_type": "md5", "value": MD5}], reason="mistake")
    assert first["counts"]["accepted"] == 1
    versions = await pull_all(a)
    assert versions[-1]["state"] == "approved"
    assert versions[-1]["contributors"] == ["beta"] and versions[-1]["labels"] == ["glorification"]
    again = await a.withdraw([{"signal_type": "md5", "value": MD5}])
    assert again["results"][0]["problem"]["type"] == Problem.NOT_CONTRIBUTOR.uri
    await b.withdraw([{"signal_type": "md5", "value": MD5}])
    tombstone = (await pull_all(a))[-1]
    assert tombstone["state"] == "withdrawn" and tombstone["contributors"] == []
    # A new submission brings the record back.
    revived = await a.submit([item()])
    assert revived["counts"]["accepted"] == 1
    last = (await pull_all(a))[-1]
    assert (last["state"], last["contributors"], last["version"]) == ("approved", ["alpha"], 5)


async def _raw_post(client: FederationClient, path: str, body: bytes) -> FederationError:
    with pytest.raises(FederationError) as info:
        await client.request("POST", path, body=body)
    return info.value


def _envelope(data: bytes, signature: bytes) -> bytes:
    return orjson.dumps(
        {
            "statement": base64.b64encode(data).decode(),
            "signature": base64.b64encode(signature).decode(),
        }
    )


async def test_malformed_statements_write_nothing(fed: Federation, members: Any) -> None:
    a, b = members
    key = a.identity.private_key
    good = a.sign({"type": "submissions", "items": [item()]})
    size = await _size(fed)
    cases: list[tuple[bytes, type[FederationError]]] = [
        (b"not json", MalformedRequest),
        (b'{"statement": "AA==", "signature": "AA==", "extra": 1}', MalformedRequest),
        (_envelope(good.signed_bytes, b"\x00" * 64), StatementSignatureInvalid),
        (_envelope(b"nonsense", key.sign(b"nonsense")), StatementMalformed),
    ]
    spaced = good.signed_bytes.replace(b'":', b'": ')
    cases.append((_envelope(spaced, key.sign(spaced)), StatementNotCanonical))
    floats = DOMAIN_TAG + b"submissions\n" + canonical_json({**good.payload, "created": 1.5e9})
    cases.append((_envelope(floats, key.sign(floats)), StatementMalformed))
    withdrawal = a.sign({"type": "withdrawals", "items": [{"signal_type": "md5", "value": MD5}]})
    cases.append((withdrawal.envelope().model_dump_json().encode(), StatementWrongType))
    old = a.sign({"type": "submissions", "items": [item()], "created": 1_000_000})
    cases.append((old.envelope().model_dump_json().encode(), StatementStale))
    for body, expected in cases:
        err = await _raw_post(a, "/v1/submissions", body)
        assert isinstance(err, expected), (body[:60], err)
    # Beta relaying alpha's statement: signed by a key that is not the requester's.
    relayed = await _raw_post(b, "/v1/submissions", good.envelope().model_dump_json().encode())
    assert isinstance(relayed, StatementKeyMismatch)
    assert await _size(fed) == size


async def test_malformed_batch_writes_nothing_at_all(fed: Federation, members: Any) -> None:
    a, _ = members
    size = await _size(fed)
    bad = a.sign({"type": "submissions", "items": [item()], "unexpected": True})
    err = await _raw_post(a, "/v1/submissions", bad.envelope().model_dump_json().encode())
    assert isinstance(err, StatementMalformed)
    empty = a.sign({"type": "submissions", "items": []})
    err = await _raw_post(a, "/v1/submissions", empty.envelope().model_dump_json().encode())
    assert isinstance(err, StatementMalformed)
    assert await _size(fed) == size


async def test_feed_json_pages_and_ndjson_stream_agree(fed: Federation, members: Any) -> None:
    a, _ = members
    values = [f"{i:032x}" for i in range(25)]
    await a.submit([item(v) for v in values])
    paged = await pull_all(a)
    streamed = [x async for x in a.stream_feed()]
    assert streamed[-1]["kind"] == "end" and streamed[-1]["count"] == 25
    assert streamed[:-1] == paged
    assert [v["value"] for v in paged] == values
    indexes = [v["index"] for v in paged]
    assert indexes == sorted(indexes)
    # Resuming from the trailer's cursor yields nothing new.
    tail = [x async for x in a.stream_feed(after=streamed[-1]["next_cursor"])]
    assert tail == [{"kind": "end", "next_cursor": streamed[-1]["next_cursor"], "count": 0,
                     "has_more": False}]  # fmt: skip


async def test_feed_stream_respects_limit(fed: Federation, members: Any) -> None:
    a, _ = members
    await a.submit([item(f"{i:032x}") for i in range(10)])
    lines = [x async for x in a.stream_feed(limit=4)]
    assert len(lines) == 5 and lines[-1]["has_more"] is True
    rest = [x async for x in a.stream_feed(after=lines[-1]["next_cursor"])]
    assert [x["value"] for x in lines[:-1] + rest[:-1]] == [f"{i:032x}" for i in range(10)]


async def test_feed_refuses_bad_cursor_and_limit(fed: Federation, members: Any) -> None:
    a, _ = members
    for params in ({"after": "garbage!"}, {"after": encode_cursor(1)[:-2] + "zz"}, {"limit": 0}):
        with pytest.raises(MalformedRequest):
            await a.get_json("/v1/feed", params)


async def test_pending_records_stay_out_of_the_feed(fed: Federation, members: Any) -> None:
    """With auto-approve off, submissions wait for review and consumers see nothing."""
    a, _ = members
    async with fed.client(fed.governance) as gov:
        await gov.update_policy(auto_approve=False)
    result = await a.submit([item()])
    assert result["counts"]["accepted"] == 1
    assert (await a.feed_page())["items"] == []
    record = await a.get_record(record_id("md5", MD5))
    assert record["state"] == "pending"  # the contributor sees its own
    # A pending record withdrawn never reached consumers: no tombstone for them.
    await a.withdraw([{"signal_type": "md5", "value": MD5}])
    assert (await a.feed_page())["items"] == []


async def test_statement_ids_are_sha256_of_signed_bytes(members: Any) -> None:
    a, _ = members
    statement: SignedStatement = a.sign({"type": "submissions", "items": [item()]})
    import hashlib

    assert statement.id == hashlib.sha256(statement.signed_bytes).hexdigest()
    result = await a.send_statement("/v1/submissions", statement)
    assert result["statement_id"] == statement.id
