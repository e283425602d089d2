"""Record lookups take any number of ids in one bound parameter, on both engines.

A 50,000-item statement looks up 50,000 record ids at once. They go to the
database as one JSON array (SQLite ``json_each``) or one text array
(PostgreSQL ``= ANY``), past both engines' limits on bound parameters
(32,766 on SQLite, 32,767 on PostgreSQL), and only existing records come back.
"""

from __future__ import annotations

import secrets

from federation.records.ingest import (
    CONTRIBUTION_COLUMNS,
    RECORD_COLUMNS,
    load_states,
)
from federation.store.bulk import insert_rows
from federation.store.db import Database
from federation.store.schema import contributions, records

LOOKED_UP = 40_000  # more ids than either engine takes as separate parameters


async def test_forty_thousand_ids_in_one_lookup_find_exactly_the_existing_records(
    db: Database,
) -> None:
    existing = sorted(secrets.token_hex(16) for _ in range(3))
    async with db.writing() as conn:
        await insert_rows(
            conn, records, RECORD_COLUMNS,
            [(rid, "md5", rid, "approved", '["incident"]', '["acme","beta"]', 2, True, n + 1,
              1, 1, "{}") for n, rid in enumerate(existing)],
        )  # fmt: skip
        await insert_rows(
            conn, contributions, CONTRIBUTION_COLUMNS,
            [(rid, org, status, '["incident"]', "s" * 64, None, None, 1)
             for rid in existing
             for org, status in (("acme", "active"), ("beta", "active"), ("gone", "withdrawn"))],
        )  # fmt: skip
    ids = [secrets.token_hex(16) for _ in range(LOOKED_UP)]
    ids[7], ids[20_000], ids[-1] = existing
    async with db.reading() as conn:
        states = await load_states(conn, ids)
    assert sorted(states) == existing
    for rid in existing:
        state = states[rid]
        assert (state.version, state.published, state.value) == (2, True, rid)
        assert state.contributions == {"acme": ("incident",), "beta": ("incident",)}
    async with db.reading() as conn:
        assert await load_states(conn, ids[:7]) == {}
        assert await load_states(conn, []) == {}
