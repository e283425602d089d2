"""Auditing a live federation: writes while the audit runs are no violations.

The audit pins the checkpoint it starts from. Leaves and feed stop at its
size; a record changed after it is checked against the version leaf it is
served at, in a newer checkpoint that extends the audited log.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from sqlalchemy import update

from clients.audit import AuditReport, audit
from clients.client import FederationClient, Response
from federation.protocol.keys import load_private_key
from federation.protocol.signals import record_id
from federation.store.schema import records
from tests.conftest import Federation
from tests.integration.test_audit import MD5S, busy_federation, checks_at

NEW = [f"{i:032x}" for i in range(100, 140)]


class _MovesOn(FederationClient):
    """An auditor's client after whose checkpoint request the federation moves on."""

    def __init__(self, *args: Any, writes: Callable[[], Awaitable[None]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.writes: Callable[[], Awaitable[None]] | None = writes

    async def request(self, method: str, path: str, *args: Any, **kwargs: Any) -> Response:
        response = await super().request(method, path, *args, **kwargs)
        if path == "/v1/log/checkpoint" and self.writes is not None:
            writes, self.writes = self.writes, None
            await writes()
        return response


async def _audit(fed: Federation, client: FederationClient) -> AuditReport:
    async with client:
        return await audit(
            client,
            log_key=load_private_key(fed.settings.log_key_path).public_key(),
            origin=fed.settings.origin,
            governance_key=fed.governance.private_key.public_key(),
        )


async def _log_size(fed: Federation) -> int:
    async with fed.client(fed.governance) as gov:
        return int((await gov.me())["log_size"])


async def _live(fed: Federation) -> FederationClient:
    """A busy federation, auto-approving, and a member who will write during the audit."""
    await busy_federation(fed)
    async with fed.client(fed.governance) as gov:
        await gov.update_policy(auto_approve=True)
    writer = fed.client(await fed.admit("gamma"))
    await writer.__aenter__()
    return writer


def _items(values: list[str]) -> list[Mapping[str, Any]]:
    return [{"signal_type": "md5", "value": v, "labels": ["instruction"]} for v in values]


async def test_writes_after_the_checkpoint_are_no_violations(fed: Federation) -> None:
    writer = await _live(fed)

    async def writes() -> None:
        # New records (visible: in the feed), a new contributor to an existing record
        # and an opinion on another: both change records the audited log also holds.
        await writer.submit(_items([*NEW[:10], MD5S[0]]))
        await writer.opine([{"record": record_id("md5", MD5S[1]), "kind": "seen"}])

    client = _MovesOn(fed.url, fed.governance, writes=writes)
    report = await _audit(fed, client)
    assert report.violations == []
    assert report.size < await _log_size(fed)  # the audit is of the checkpoint it pinned
    assert report.records_after_checkpoint == 12  # 10 new, 2 changed
    assert report.records_compared == 9 + 10  # the busy federation's and the new


async def test_a_record_changed_behind_the_log_after_the_checkpoint_is_caught(
    fed: Federation,
) -> None:
    writer = await _live(fed)
    changed = record_id("md5", MD5S[1])

    async def writes() -> None:
        await writer.opine([{"record": changed, "kind": "seen"}])
        async with fed.db.writing() as conn:  # and the operator relabels it, unlogged
            await conn.execute(
                update(records).where(records.c.id == changed).values(labels='["glorification"]')
            )

    report = await _audit(fed, _MovesOn(fed.url, fed.governance, writes=writes))
    found = [v for v in report.violations if v.check == "records"]
    assert len(found) == 1 and changed in found[0].detail and "labels" in found[0].detail
    assert (None, "root") not in checks_at(report)


async def test_a_head_past_the_log_is_caught(fed: Federation) -> None:
    writer = await _live(fed)
    rid = record_id("md5", MD5S[1])

    async def writes() -> None:
        await writer.submit(_items(NEW[:2]))
        async with fed.db.writing() as conn:  # claims a change no leaf records
            await conn.execute(update(records).where(records.c.id == rid).values(head_idx=10**9))

    report = await _audit(fed, _MovesOn(fed.url, fed.governance, writes=writes))
    found = [v for v in report.violations if v.check == "records"]
    assert (
        len(found) == 1 and rid in found[0].detail and "not one of its versions" in found[0].detail
    )


async def test_an_audit_while_members_keep_writing_is_clean(fed: Federation) -> None:
    writer = await _live(fed)
    stop = asyncio.Event()

    async def keep_writing() -> int:
        batches = 0
        for start in range(0, len(NEW), 4):  # bounded: at most 10 batches
            if stop.is_set():
                break
            await writer.submit(_items(NEW[start : start + 4]))
            batches += 1
            await asyncio.sleep(0)
        return batches

    task = asyncio.create_task(keep_writing())
    await asyncio.sleep(0)
    async with fed.client(fed.governance) as client:
        report = await audit(
            client,
            log_key=load_private_key(fed.settings.log_key_path).public_key(),
            origin=fed.settings.origin,
            governance_key=fed.governance.private_key.public_key(),
        )
    stop.set()
    assert await task > 0
    assert report.violations == []
