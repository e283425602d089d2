"""The served OpenAPI document equals docs/openapi.json; migrations reach head on both engines."""

from __future__ import annotations

import asyncio
import json

import aiohttp
from sqlalchemy import inspect

from federation.api.openapi import render
from federation.store.db import Database
from federation.store.migrate import alembic_config, upgrade_to_head
from tests.conftest import REPO, Federation

EXPECTED_TABLES = {
    "alembic_version",
    "checkpoints",
    "contributions",
    "keys",
    "log",
    "log_head",
    "nonces",
    "orgs",
    "records",
    "statements",
    "tiles",
}


async def test_served_openapi_matches_docs(fed: Federation) -> None:
    async with aiohttp.ClientSession() as session, session.get(fed.url + "/v1/openapi.json") as r:
        served = await r.json()
    documented = json.loads((REPO / "docs" / "openapi.json").read_text())
    assert served == documented, "docs/openapi.json is stale: run 'make openapi'"
    assert served["openapi"].startswith("3.1")
    assert "/v1/submissions" in served["paths"] and "/v1/feed" in served["paths"]


def test_docs_openapi_is_rendered_from_code() -> None:
    assert (REPO / "docs" / "openapi.json").read_text() == render()


async def test_migrations_upgrade_an_empty_database_to_head(database_url: str) -> None:
    await asyncio.to_thread(upgrade_to_head, database_url)
    await asyncio.to_thread(upgrade_to_head, database_url)  # idempotent
    db = Database(database_url)
    try:
        async with db.reading() as conn:
            tables = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
            version = (
                await conn.exec_driver_sql("SELECT version_num FROM alembic_version")
            ).scalar()
    finally:
        await db.close()
    assert tables >= EXPECTED_TABLES
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config(database_url)).get_current_head()
    assert version == head


async def test_migrations_downgrade_to_base_and_back(database_url: str) -> None:
    from alembic import command

    await asyncio.to_thread(upgrade_to_head, database_url)
    await asyncio.to_thread(command.downgrade, alembic_config(database_url), "base")
    db = Database(database_url)
    try:
        async with db.reading() as conn:
            tables = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
    finally:
        await db.close()
    assert tables <= {"alembic_version"}
    await asyncio.to_thread(upgrade_to_head, database_url)
