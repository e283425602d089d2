"""Fixtures: a real federation (migrated database + server on a socket) per backend.

Every test that takes ``fed`` runs once on SQLite and once on PostgreSQL. The
PostgreSQL run uses ``HASHFED_TEST_POSTGRES_URL`` (an asyncpg URL to a server;
each test creates and drops its own database) or, when unset, the server on
127.0.0.1:5432. Without PostgreSQL those runs are skipped and the session ends
with a loud notice; with ``HASHFED_REQUIRE_POSTGRES=1`` (CI) they fail instead.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.engine import make_url

from clients.client import FederationClient, Identity
from federation.api.app import create_app
from federation.bootstrap import init_federation
from federation.protocol.keys import generate_private_key, load_private_key
from federation.settings import Settings
from federation.store.db import Database
from federation.store.migrate import upgrade_to_head

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DEFAULT_PG = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
_pg_state: dict[str, Any] = {}


def postgres_admin_url() -> str | None:
    """The admin URL of a reachable PostgreSQL server, or None."""
    if "url" in _pg_state:
        return _pg_state["url"]  # type: ignore[no-any-return]
    url = os.environ.get("HASHFED_TEST_POSTGRES_URL", DEFAULT_PG)
    parsed = make_url(url)
    try:
        with socket.create_connection((parsed.host or "127.0.0.1", parsed.port or 5432), 2):
            pass
    except OSError:
        url = None  # type: ignore[assignment]
    _pg_state["url"] = url
    return url


@pytest.fixture(scope="session")
def pg_admin_url() -> str | None:
    return postgres_admin_url()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _pg_state.get("url") is None and _pg_state.get("wanted"):
        terminalreporter.write_sep("!", "PostgreSQL SUITE SKIPPED", red=True, bold=True)
        terminalreporter.write_line(
            "No PostgreSQL server answered (HASHFED_TEST_POSTGRES_URL or 127.0.0.1:5432): "
            "every PostgreSQL run of the suite was skipped. Only SQLite was tested.",
            red=True,
        )


async def _pg_exec(admin_url: str, sql: str) -> None:
    parsed = make_url(admin_url)
    conn = await asyncpg.connect(
        host=parsed.host,
        port=parsed.port or 5432,
        user=parsed.username,
        password=parsed.password,
        database=parsed.database or "postgres",
    )
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", "postgres"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh, empty database URL on each backend (not migrated)."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'hashfed.db'}"
        return
    _pg_state["wanted"] = True
    admin = postgres_admin_url()
    if admin is None:
        if os.environ.get("HASHFED_REQUIRE_POSTGRES") == "1":
            pytest.fail("HASHFED_REQUIRE_POSTGRES=1 but no PostgreSQL server answered")
        pytest.skip("PostgreSQL not available")
    name = f"hashfed_test_{secrets.token_hex(6)}"
    await _pg_exec(admin, f'CREATE DATABASE "{name}"')
    try:
        yield make_url(admin).set(database=name).render_as_string(hide_password=False)
    finally:
        await _pg_exec(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    """A :class:`Database` on a fresh database migrated to head, on each backend."""
    await asyncio.to_thread(upgrade_to_head, database_url)
    database = Database(database_url)
    yield database
    await database.close()


@dataclass
class Federation:
    """A running federation: settings, database, server URL and the governance identity."""

    settings: Settings
    db: Database
    url: str
    governance: Identity
    backend: str
    _clients: list[FederationClient] = field(default_factory=list)

    def client(self, identity: Identity, **kwargs: Any) -> FederationClient:
        client = FederationClient(self.url, identity, **kwargs)
        self._clients.append(client)
        return client

    async def admit(
        self, org: str, roles: tuple[str, ...] = ("contributor", "consumer")
    ) -> Identity:
        key: Ed25519PrivateKey = generate_private_key()
        async with FederationClient(self.url, self.governance) as gov:
            await gov.admit_org(org, org.title(), roles, key.public_key())
        return Identity(org, key)


@pytest.fixture
async def fed(database_url: str, tmp_path: Path) -> AsyncIterator[Federation]:
    settings = Settings(data_dir=tmp_path / "var", database_url=database_url)
    result = await asyncio.to_thread(init_federation, settings)
    db = Database(database_url)
    server = TestServer(create_app(settings, db), host="127.0.0.1")
    await server.start_server()
    federation = Federation(
        settings=settings,
        db=db,
        url=str(server.make_url("")).rstrip("/"),
        governance=Identity(result.org, load_private_key(result.key_path)),
        backend="sqlite" if database_url.startswith("sqlite") else "postgres",
    )
    try:
        yield federation
    finally:
        for c in federation._clients:
            await c.close()
        await server.close()
        await db.close()


@pytest.fixture
def shared_vectors() -> Iterator[Path]:
    yield SHARED / "vectors"
