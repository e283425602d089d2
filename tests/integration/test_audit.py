"""The auditor against a real federation, and against one tampered with behind its back."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from sqlalchemy import select, update

from clients.audit import AuditReport, audit
from clients.client import FederationClient, Identity
from clients.errors import ForbiddenRole
from federation.protocol.keys import generate_private_key, load_private_key, raw_public_key
from federation.protocol.signals import record_id
from federation.store.schema import LEAF_STATEMENT, LEAF_VERSION, keys, log, records
from tests.conftest import Federation

MD5S = [f"{i:032x}" for i in range(1, 9)]


async def run_audit(fed: Federation, **kwargs: Any) -> AuditReport:
    async with FederationClient(fed.url, fed.governance) as client:
        return await audit(
            client,
            log_key=load_private_key(fed.settings.log_key_path).public_key(),
            origin=fed.settings.origin,
            governance_key=fed.governance.private_key.public_key(),
            **kwargs,
        )


async def busy_federation(fed: Federation) -> dict[str, FederationClient]:
    """Every kind of statement: admissions, policy, submissions, reviews, opinions,
    disputes with votes, withdrawals, key rotation and revocation."""
    ids = {
        "alpha": await fed.admit("alpha", ("contributor", "consumer")),
        "beta": await fed.admit("beta", ("contributor", "consumer")),
        "judge": await fed.admit("judge", ("admin",)),
        "judge2": await fed.admit("judge2", ("admin",)),
    }
    c = {name: fed.client(identity) for name, identity in ids.items()}
    c["gov"] = fed.client(fed.governance)
    for client in c.values():
        await client.__aenter__()
    await c["gov"].update_policy(auto_approve=False, approvals_required=2)
    items = [{"signal_type": "md5", "value": v, "labels": ["recruitment"]} for v in MD5S]
    await c["alpha"].submit(items)
    await c["beta"].submit(items[:3])
    rids = [record_id("md5", v) for v in MD5S]
    await c["judge"].review([{"record": r, "decision": "approve"} for r in rids[:6]])
    await c["judge2"].review([{"record": r, "decision": "approve"} for r in rids[:5]])
    await c["judge2"].review([{"record": rids[7], "decision": "reject", "reason": "not_tvec"}])
    await c["beta"].opine([{"record": rids[0], "kind": "false_positive"}])
    await c["alpha"].opine([{"record": rids[1], "kind": "seen"}])
    await c["gov"].update_policy(dispute_quorum=2)
    opened = await c["beta"].open_dispute(rids[4], "false_positive", "film still")
    dispute = opened["results"][0]["dispute"]
    await c["judge"].resolve_dispute(dispute, "retract", "agreed")
    await c["judge2"].resolve_dispute(dispute, "retract", "agreed")
    await c["alpha"].withdraw([{"signal_type": "md5", "value": MD5S[2]}])
    # Rotation: alpha gets a new key, the old one retires; later beta's key is revoked.
    new_key = generate_private_key()
    await c["gov"].add_key("alpha", new_key.public_key())
    async with fed.client(Identity("alpha", new_key)) as rotated:
        await rotated.submit([{"signal_type": "pdq", "value": "a" * 64, "labels": ["instruction"]}])
    await c["gov"].set_key_status("alpha", ids["alpha"].key_id, revoke=False)
    await c["gov"].set_key_status("beta", ids["beta"].key_id, revoke=True, note="leaked")
    return c


async def test_a_busy_federation_audits_clean(fed: Federation) -> None:
    await busy_federation(fed)
    report = await run_audit(fed)
    assert report.violations == []
    assert report.ok and report.checkpoint_verified
    assert report.leaves == report.size > 20
    assert report.signatures_verified == report.statements
    assert report.versions_checked > 10 and report.records_compared == 9
    assert report.feed_items_compared > 0
    assert report.statement_types["dispute.resolve"] == 2


async def test_auditors_read_but_never_write(fed: Federation) -> None:
    auditor = await fed.admit("watchdog", ("auditor",))
    async with fed.client(auditor) as client:
        assert (await client.get_json("/v1/log/leaves", {"limit": 2}))["leaves"]
        with pytest.raises(ForbiddenRole):
            await client.submit(
                [{"signal_type": "md5", "value": MD5S[0], "labels": ["recruitment"]}]
            )
        with pytest.raises(ForbiddenRole):
            await client.review([{"record": "0" * 32, "decision": "approve"}])


async def _leaf(fed: Federation, kind: int, nth: int = 0) -> tuple[int, bytes]:
    async with fed.db.reading() as conn:
        rows = (
            await conn.execute(
                select(log.c.idx, log.c.leaf).where(log.c.kind == kind).order_by(log.c.idx)
            )
        ).all()
    row = rows[nth]
    return int(row.idx), bytes(row.leaf)


async def _set_leaf(fed: Federation, idx: int, leaf: bytes) -> None:
    async with fed.db.writing() as conn:
        await conn.execute(update(log).where(log.c.idx == idx).values(leaf=leaf))


def checks_at(report: AuditReport) -> set[tuple[int | None, str]]:
    return {(v.index, v.check) for v in report.violations}


async def test_changed_statement_bytes_are_caught(fed: Federation) -> None:
    await busy_federation(fed)
    idx, leaf = await _leaf(fed, LEAF_STATEMENT, 7)  # some member statement
    doc = orjson.loads(leaf)
    signed = base64.b64decode(doc["statement"]).replace(b"recruitment", b"glorification")
    doc["statement"] = base64.b64encode(signed).decode()
    await _set_leaf(fed, idx, orjson.dumps(doc, option=orjson.OPT_SORT_KEYS))
    report = await run_audit(fed)
    assert (idx, "signature") in checks_at(report)
    assert (None, "root") in checks_at(report)


async def test_a_deleted_leaf_is_caught(fed: Federation) -> None:
    await busy_federation(fed)
    idx, _ = await _leaf(fed, LEAF_VERSION, 3)
    async with fed.db.writing() as conn:
        await conn.execute(log.delete().where(log.c.idx == idx))
    report = await run_audit(fed)
    assert any(v.check == "sequence" and v.index == idx + 1 for v in report.violations), report
    assert (None, "root") in checks_at(report)


async def test_reordered_leaves_are_caught(fed: Federation) -> None:
    await busy_federation(fed)
    i, leaf_i = await _leaf(fed, LEAF_VERSION, 1)
    j, leaf_j = await _leaf(fed, LEAF_VERSION, 2)
    await _set_leaf(fed, i, leaf_j)
    await _set_leaf(fed, j, leaf_i)
    report = await run_audit(fed)
    assert {(i, "position"), (j, "position"), (None, "root")} <= checks_at(report)


async def test_a_state_changed_without_a_statement_is_caught(fed: Federation) -> None:
    await busy_federation(fed)
    rid = record_id("md5", MD5S[6])  # approved once, still pending
    async with fed.db.writing() as conn:
        await conn.execute(update(records).where(records.c.id == rid).values(state="approved"))
    report = await run_audit(fed)
    found = [v for v in report.violations if v.check == "records"]
    assert len(found) == 1 and rid in found[0].detail and "state" in found[0].detail
    assert (None, "root") not in checks_at(report)  # the log itself is intact


async def test_a_swapped_key_is_caught(fed: Federation) -> None:
    clients = await busy_federation(fed)
    judge = clients["judge"].identity
    # The operator swaps the judge's registered key for one it holds, then signs as the judge.
    forged = generate_private_key()
    async with fed.db.writing() as conn:
        await conn.execute(
            update(keys).where(keys.c.id == judge.key_id)
            .values(public_key=raw_public_key(forged.public_key()))
        )  # fmt: skip
    async with FederationClient(fed.url, _Impersonating("judge", forged, judge.key_id)) as client:
        result = await client.review([{"record": record_id("md5", MD5S[6]), "decision": "approve"}])
    report = await run_audit(fed)
    assert (result["leaf_index"], "signature") in checks_at(report)


@dataclass(frozen=True)
class _Impersonating(Identity):
    """An identity that signs with one key but names another key's id."""

    claimed: str = ""

    @property
    def key_id(self) -> str:
        return self.claimed


async def test_audit_resumes_from_its_cache(fed: Federation, tmp_path: Any) -> None:
    await busy_federation(fed)
    cache = tmp_path / "leaves.ndjson"
    first = await run_audit(fed, cache=cache)
    lines = cache.read_bytes().splitlines(keepends=True)
    cache.write_bytes(b"".join(lines[:10]) + lines[10][:15])  # interrupted mid-line
    second = await run_audit(fed, cache=cache)
    assert first.ok and second.ok and second.leaves == first.leaves


async def test_large_batches_and_a_long_feed_audit_clean(fed: Federation) -> None:
    """A 5,000-item statement (a line over aiohttp's 512 KiB default) and > 1,000 feed items."""
    member = await fed.admit("bulk")
    async with fed.client(member) as client:
        await client.submit(
            [{"signal_type": "md5", "value": f"{i:032x}", "labels": ["recruitment"]}
             for i in range(5_000)]
        )  # fmt: skip
    report = await run_audit(fed)
    assert report.violations == []
    assert report.feed_items_compared == 5_000


async def test_a_cache_of_another_format_or_a_longer_log_starts_again(
    fed: Federation, tmp_path: Any
) -> None:
    await busy_federation(fed)
    cache = tmp_path / "leaves.ndjson"
    cache.write_bytes(b'{"index":0,"leaf":"e30="}\n')  # an earlier format
    first = await run_audit(fed, cache=cache)
    assert first.violations == [] and first.leaves == first.size
    lines = cache.read_bytes().splitlines(keepends=True)
    assert len(lines) == 1 + first.size  # a header, then a leaf a line
    cache.write_bytes(b"".join(lines) + lines[-1])  # a leaf more than the log holds
    second = await run_audit(fed, cache=cache)
    assert second.violations == [] and second.leaves == first.size
    assert len(cache.read_bytes().splitlines()) == 1 + first.size


async def test_a_feed_hiding_or_inventing_versions_is_caught(fed: Federation) -> None:
    await busy_federation(fed)
    async with fed.db.writing() as conn:
        rows = (
            await conn.execute(
                select(log.c.idx, log.c.visible).where(log.c.kind == LEAF_VERSION)
                .order_by(log.c.idx)
            )
        ).all()  # fmt: skip
        shown = next(int(r.idx) for r in rows if r.visible)
        hidden = next(int(r.idx) for r in rows if not r.visible)
        await conn.execute(update(log).where(log.c.idx == shown).values(visible=False))
        await conn.execute(update(log).where(log.c.idx == hidden).values(visible=True))
    report = await run_audit(fed)
    feed = {(v.index, v.detail) for v in report.violations if v.check == "feed"}
    assert feed == {
        (shown, "a visible version is missing from the feed"),
        (hidden, "the feed serves a version consumers should not see"),
    }
    assert (None, "root") not in checks_at(report)  # the log itself is intact


async def test_a_version_with_an_out_of_range_time_is_caught(fed: Federation) -> None:
    await busy_federation(fed)
    idx, leaf = await _leaf(fed, LEAF_VERSION, 2)
    at = leaf.index(b'"time":') + len(b'"time":')
    end = leaf.index(b",", at)
    await _set_leaf(fed, idx, leaf[:at] + b"1" + b"0" * 30 + leaf[end:])
    report = await run_audit(fed)
    assert (idx, "leaf") in checks_at(report)
    assert (None, "root") in checks_at(report)
