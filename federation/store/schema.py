"""The database schema, as SQLAlchemy Core tables (Alembic owns its creation).

Times are integer unix seconds so SQLite and PostgreSQL agree to the byte.
The ``log`` table is the append-only event log: one row per leaf, holding the
leaf's exact bytes; its ``idx`` is the global sequence the feed pages over.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
)

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING)

# Leaf kinds in the log.
LEAF_STATEMENT = 1
LEAF_VERSION = 2

log = Table(
    "log",
    metadata,
    Column("idx", BigInteger, primary_key=True, autoincrement=False),
    Column("kind", SmallInteger, nullable=False),
    Column("leaf", LargeBinary, nullable=False),
    # True for record versions a consumer may see (the feed's filter).
    Column("visible", Boolean, nullable=False),
)

# One row: the log's size. Appenders lock it (SELECT … FOR UPDATE) so that
# sequence numbers are handed out in commit order across workers.
# ``identities`` counts changes to organisations and keys (bumped in the same
# transaction): every request reads it with the size, and key lookups cached
# under another value are thrown away (federation/identities/cache.py).
log_head = Table(
    "log_head",
    metadata,
    Column("id", SmallInteger, primary_key=True, autoincrement=False),
    Column("size", BigInteger, nullable=False),
    Column("identities", BigInteger, nullable=False, server_default="0"),
)

orgs = Table(
    "orgs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("status", String(16), nullable=False),  # active | suspended
    Column("roles", String(100), nullable=False),  # comma-separated, sorted
    Column("admitted_idx", BigInteger, nullable=False),
    Column("updated_idx", BigInteger, nullable=False),
)

keys = Table(
    "keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("org_id", String(64), ForeignKey("orgs.id"), nullable=False, index=True),
    Column("public_key", LargeBinary(32), nullable=False),
    Column("status", String(16), nullable=False),  # active | retired | revoked
    Column("added_idx", BigInteger, nullable=False),
    Column("retired_idx", BigInteger),
    Column("revoked_idx", BigInteger),
    Column("revoked_at", BigInteger),
)

statements = Table(
    "statements",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("type", String(40), nullable=False),
    Column("org_id", String(64), nullable=False),
    Column("key_id", String(32), nullable=False),
    Column("leaf_idx", BigInteger, nullable=False, unique=True),
    Column("received_at", BigInteger, nullable=False),
    # The response given the first time, replayed verbatim for a duplicate.
    Column("result", LargeBinary, nullable=False),
)

records = Table(
    "records",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("signal_type", String(16), nullable=False),
    Column("value", Text, nullable=False),
    Column("state", String(16), nullable=False),
    Column("labels", Text, nullable=False),  # JSON list, sorted
    Column("contributors", Text, nullable=False),  # JSON list of org ids, sorted
    Column("version", Integer, nullable=False),
    # Whether a consumer has ever been shown a version (so tombstones reach them).
    Column("published", Boolean, nullable=False),
    Column("head_idx", BigInteger, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    # Governance state: approvals, opinions, open disputes, relabelling (JSON object).
    Column("gov", Text, nullable=False, server_default="{}"),
    Index("ix_records_state_head_idx", "state", "head_idx"),
)

contributions = Table(
    "contributions",
    metadata,
    Column("record_id", String(32), primary_key=True),
    Column("org_id", String(64), primary_key=True),
    Column("status", String(16), nullable=False),  # active | withdrawn
    Column("labels", Text, nullable=False),  # JSON list, sorted
    Column("statement_id", String(64), nullable=False),
    Column("note", Text),
    Column("ref", String(256)),
    Column("updated_idx", BigInteger, nullable=False),
)

nonces = Table(
    "nonces",
    metadata,
    Column("key_id", String(32), primary_key=True),
    Column("nonce", String(128), primary_key=True),
    Column("expires_at", BigInteger, nullable=False),
    Index("ix_nonces_expires_at", "expires_at"),
)

# Merkle tiles (C2SP tlog-tiles layout): tile (level L, index k) holds up to 256
# consecutive 32-byte hashes of level L, where a level-L hash covers 256**L
# leaves. A partial tile is the right edge; it grows until it holds 256.
tiles = Table(
    "tiles",
    metadata,
    Column("level", SmallInteger, primary_key=True, autoincrement=False),
    Column("idx", BigInteger, primary_key=True, autoincrement=False),
    Column("hashes", LargeBinary, nullable=False),
)

# Every signed checkpoint, by tree size (C2SP tlog-checkpoint signed notes).
checkpoints = Table(
    "checkpoints",
    metadata,
    Column("size", BigInteger, primary_key=True, autoincrement=False),
    Column("root_hash", LargeBinary(32), nullable=False),
    Column("note", Text, nullable=False),
    Column("created_at", BigInteger, nullable=False),
)

# The federation's policy, one row per version (each set by a signed statement).
policies = Table(
    "policies",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("document", Text, nullable=False),
    Column("statement_id", String(64), nullable=False),
    Column("leaf_idx", BigInteger, nullable=False),
)

disputes = Table(
    "disputes",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("record_id", String(32), nullable=False, index=True),
    Column("opened_by", String(64), nullable=False),
    Column("reason", String(32), nullable=False),
    Column("note", Text, nullable=False),
    Column("state", String(16), nullable=False),  # open | upheld | retracted
    Column("votes", Text, nullable=False),  # JSON: org -> choice
    Column("opened_idx", BigInteger, nullable=False),
    Column("resolved_idx", BigInteger),
)

# Each organisation's inbox: what happened to its submissions and disputes.
notifications = Table(
    "notifications",
    metadata,
    Column("org_id", String(64), primary_key=True),
    Column("idx", BigInteger, primary_key=True, autoincrement=False),  # log index of the cause
    Column("seq", SmallInteger, primary_key=True, autoincrement=False),
    Column("kind", String(32), nullable=False),
    Column("record_id", String(32)),
    Column("dispute_id", String(32)),
    Column("detail", Text, nullable=False),  # JSON object
)
