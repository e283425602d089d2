"""The real server, as operators run it: ``hashfed server init`` then ``hashfed server run``.

Each test starts the command in its own process group, waits for
``/healthz``, talks to it with the real :class:`FederationClient`, and kills
the whole group in a ``finally``. Covered: SQLite with one worker; PostgreSQL
with ``--workers 3`` (concurrent writers and polling readers over
SO_REUSEPORT workers, every accepted version seen exactly once); SIGTERM in
the middle of a 20,000-item push (the batch lands whole or not at all, and
an idempotent resend applies it exactly once); and the refusal of several
workers on SQLite.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from clients.client import FederationClient, Identity
from clients.errors import TransportError
from federation.protocol.keys import generate_private_key, load_private_key
from federation.protocol.statements import SignedStatement, StatementType
from federation.store.db import Database
from federation.store.schema import statements
from tests.conftest import REPO, _pg_exec, _pg_state, postgres_admin_url
from tests.integration.test_feed_concurrency import (
    Accepted,
    Reader,
    assert_exactly_once,
    assert_no_hole,
    assert_no_page_stepped_over,
    batch_items,
    log_facts,
    poll,
)

pytestmark = pytest.mark.slow

HASHFED = str(Path(sys.executable).with_name("hashfed"))
if not Path(HASHFED).exists():  # not run from the project's venv
    HASHFED = str(REPO / ".venv" / "bin" / "hashfed")
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 40.0  # above the server's 30 s drain (shutdown_timeout_s)
BIG_PUSH = 20_000
LABELS = ["recruitment"]


# Processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env() -> dict[str, str]:
    """The environment without HASHFED_* so only the flags configure the server."""
    return {k: v for k, v in os.environ.items() if not k.startswith("HASHFED_")}


def _db_flags(data_dir: Path, database_url: str | None) -> list[str]:
    return [
        "--data-dir",
        str(data_dir),
        *(["--database-url", database_url] if database_url else []),
    ]


def server_init(data_dir: Path, database_url: str | None) -> Identity:
    """``hashfed server init``; the governance identity it created."""
    done = subprocess.run(
        [HASHFED, "server", "init", *_db_flags(data_dir, database_url)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Federation founded." in done.stdout, done.stdout
    key_path = data_dir / "keys" / "governance.key"
    assert key_path.exists()
    return Identity("governance", load_private_key(key_path))


class Server:
    """A ``hashfed server run`` process group; its output goes to a log file."""

    def __init__(self, data_dir: Path, database_url: str | None, workers: int) -> None:
        self.data_dir = data_dir
        self.database_url = database_url
        self.workers = workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = data_dir.parent / f"server-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    HASHFED,
                    "server",
                    "run",
                    *_db_flags(self.data_dir, self.database_url),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--workers",
                    str(self.workers),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_env(),
                start_new_session=True,  # its own process group, workers included
            )

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def wait_healthy(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    pytest.fail(f"server exited with {self.proc.returncode}:\n{self.log}")
                with suppress(aiohttp.ClientError):
                    async with session.get(f"{self.url}/healthz") as resp:
                        if resp.status == 200 and (await resp.json())["status"] == "ok":
                            return
                await asyncio.sleep(0.1)
        pytest.fail(f"server not healthy after {START_TIMEOUT_S} s:\n{self.log}")

    def signal_group(self, signum: int) -> None:
        assert self.proc is not None
        with suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signum)

    async def wait_exit(self) -> int:
        assert self.proc is not None
        proc = self.proc
        return await asyncio.wait_for(asyncio.to_thread(proc.wait), STOP_TIMEOUT_S)

    async def stop(self) -> int:
        self.signal_group(signal.SIGTERM)
        return await self.wait_exit()

    def kill(self) -> None:
        """SIGKILL the whole group, workers orphaned by a dead parent included."""
        if self.proc is None:
            return
        workers = self.worker_pids()  # in sessions of their own: not in the group
        self.signal_group(signal.SIGKILL)
        for pid in workers:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)

    def worker_pids(self) -> list[int]:
        """The parent's worker processes (children, in sessions of their own; Linux /proc)."""
        assert self.proc is not None
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == self.proc.pid:
                continue
            with suppress(OSError, IndexError, ValueError):
                # pid (comm) state ppid pgrp …; comm may hold spaces, so split after ")".
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == self.proc.pid:
                    pids.append(int(entry.name))
        return pids


@contextmanager
def running(data_dir: Path, database_url: str | None, workers: int) -> Iterator[Server]:
    server = Server(data_dir, database_url, workers)
    try:
        server.start()
        yield server
    finally:
        server.kill()


def pids_connected_to(port: int, pids: list[int]) -> set[int]:
    """Which of ``pids`` hold an established TCP connection to ``port`` (Linux /proc)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if int(fields[2].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                    inodes.add(fields[9])
    found: set[int] = set()
    for pid in pids:
        with suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with suppress(OSError):
                    link = os.readlink(fd)
                    if link.startswith("socket:[") and link[8:-1] in inodes:
                        found.add(pid)
    return found


# Databases


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    """A fresh PostgreSQL database, as tests/conftest.py's ``database_url`` makes them."""
    _pg_state["wanted"] = True  # the session ends with a loud notice if PostgreSQL is absent
    admin = postgres_admin_url()
    if admin is None:
        if os.environ.get("HASHFED_REQUIRE_POSTGRES") == "1":
            pytest.fail("HASHFED_REQUIRE_POSTGRES=1 but no PostgreSQL server answered")
        pytest.skip("PostgreSQL not available")
    name = f"hashfed_e2e_{secrets.token_hex(6)}"
    await _pg_exec(admin, f'CREATE DATABASE "{name}"')
    try:
        yield make_url(admin).set(database=name).render_as_string(hide_password=False)
    finally:
        await _pg_exec(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def sqlite_url(data_dir: Path) -> str:
    return f"sqlite+aiosqlite:///{(data_dir / 'hashfed.db').resolve()}"


# Federation helpers


async def admit(
    url: str, governance: Identity, org: str, roles: tuple[str, ...] = ("contributor", "consumer")
) -> Identity:
    key: Ed25519PrivateKey = generate_private_key()
    async with FederationClient(url, governance, retries=0) as gov:
        result = await gov.admit_org(org, org.title(), roles, key.public_key())
    assert result["type"] == StatementType.ORG_ADMIT
    return Identity(org, key)


def md5_item(seed: str) -> dict[str, Any]:
    return {"signal_type": "md5", "value": hashlib.md5(seed.encode()).hexdigest(), "labels": LABELS}


async def pull_everything(client: FederationClient) -> list[dict[str, Any]]:
    """The whole feed over NDJSON streams, following the cursor."""
    versions: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        end: dict[str, Any] = {}
        async for entry in client.stream_feed(cursor, limit=10_000):
            if entry["kind"] == "end":
                end = entry
            else:
                versions.append(entry)
        cursor = end["next_cursor"]
        if not end["has_more"]:
            return versions


# (i) SQLite, one worker


async def test_sqlite_single_worker_push_and_pull(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    governance = server_init(data_dir, None)
    with running(data_dir, None, workers=1) as server:
        await server.wait_healthy()
        assert "(1 worker)" in server.log
        alpha = await admit(server.url, governance, "alpha")
        beta = await admit(server.url, governance, "beta", roles=("consumer",))
        items = [md5_item(f"e2e-{i}") for i in range(3)]
        async with (
            FederationClient(server.url, alpha, retries=0) as pusher,
            FederationClient(server.url, beta, retries=0) as puller,
        ):
            statement = pusher.sign({"type": StatementType.SUBMISSIONS.value, "items": items})
            result = await pusher.send_statement("/v1/submissions", statement)
            assert result["counts"] == {"accepted": 3, "duplicate": 0, "refused": 0}
            again = await pusher.send_statement("/v1/submissions", statement)
            assert again == result  # the first answer, replayed

            page = await puller.feed_page(limit=100)
            assert page["has_more"] is False
            pulled = page["items"]
            assert sorted((v["value"], v["version"], v["contributors"]) for v in pulled) == sorted(
                (i["value"], 1, ["alpha"]) for i in items
            )
            assert all(v["state"] == "approved" and v["labels"] == LABELS for v in pulled)
            assert [v["index"] for v in pulled] == [result["leaf_index"] + k for k in (1, 2, 3)]
            me = await puller.me()
            # The statement and its three versions are the last leaves of the log.
            assert me["org"] == "beta" and me["log_size"] == result["leaf_index"] + 4
            # Nothing new: the cursor stays put.
            later = await puller.feed_page(page["next_cursor"])
            assert later["items"] == [] and later["next_cursor"] == page["next_cursor"]
        assert await server.stop() == 0


# (ii) PostgreSQL, three workers

WRITERS = 4
BATCHES = 20


async def test_postgres_three_workers_concurrent_writers_feed_exactly_once(
    tmp_path: Path, pg_url: str
) -> None:
    data_dir = tmp_path / "var"
    governance = server_init(data_dir, pg_url)
    with running(data_dir, pg_url, workers=3) as server:
        await server.wait_healthy()
        assert "(3 workers)" in server.log
        writers = [await admit(server.url, governance, f"writer{w}") for w in range(WRITERS)]
        consumer = await admit(server.url, governance, "watcher", roles=("consumer",))
        accepted = Accepted()
        done = asyncio.Event()
        readers = [Reader("reader(limit=7)"), Reader("head follower(limit=1000)")]

        def session() -> aiohttp.ClientSession:
            # A new connection per request: SO_REUSEPORT spreads them over the workers.
            return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))

        async def write(w: int) -> None:
            async with (
                session() as s,
                FederationClient(server.url, writers[w], retries=0, session=s) as client,
            ):
                for b in range(BATCHES):
                    accepted.add(w, await client.submit(batch_items(w, b)))

        async with (
            session() as s,
            FederationClient(server.url, consumer, retries=0, session=s) as client,
        ):
            tasks = [
                asyncio.create_task(poll(client, readers[0], done, 7)),
                asyncio.create_task(poll(client, readers[1], done, 1000)),
            ]
            try:
                await asyncio.gather(*(write(w) for w in range(WRITERS)))
                done.set()
                await asyncio.wait_for(asyncio.gather(*tasks), 60)
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

        # Several worker processes really served requests that touched the database.
        workers = server.worker_pids()
        pg_port = make_url(pg_url).port or 5432
        assert len(pids_connected_to(pg_port, workers)) >= 2, f"workers {workers}:\n{server.log}"

        assert accepted.statements == WRITERS * BATCHES
        assert accepted.interleavings() >= WRITERS * BATCHES // 8
        db = Database(pg_url)
        try:
            size, all_idx, visible = await log_facts(db)
        finally:
            await db.close()
        for reader in readers:
            reader.assert_read_mid_flight()
            assert_exactly_once(reader, accepted, visible)
            assert_no_page_stepped_over(reader, visible)
        assert_no_hole(size, all_idx)
        # 0, or 1 when a worker's drain was cut short: see the note in test (iii).
        assert await server.stop() in (0, 1), server.log


# (iii) SIGTERM during a large push


async def _statement_rows(url: str, statement_id: str) -> int:
    db = Database(url)
    try:
        async with db.reading() as conn:
            return int(
                (
                    await conn.execute(select(func.count()).where(statements.c.id == statement_id))
                ).scalar_one()
            )
    finally:
        await db.close()


async def _wait_append_in_progress(pg_url: str) -> None:
    """Until a server backend holds the log_head row lock with writes under way."""
    parsed = make_url(pg_url)
    conn = await asyncpg.connect(
        host=parsed.host, port=parsed.port or 5432, user=parsed.username, database="postgres"
    )
    try:
        deadline = time.monotonic() + 20.0
        while time.monotonic() < deadline:
            busy = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 "
                "AND backend_xid IS NOT NULL AND query NOT ILIKE '%nonces%'",
                parsed.database,
            )
            if busy:
                return
            await asyncio.sleep(0.01)
        pytest.fail("the 20,000-item append never showed up in pg_stat_activity")
    finally:
        await conn.close()


async def test_sigterm_during_large_push_sqlite_single_worker(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    await sigterm_during_large_push(data_dir, sqlite_url(data_dir), None, workers=1)


async def test_sigterm_during_large_push_postgres_three_workers(
    tmp_path: Path, pg_url: str
) -> None:
    await sigterm_during_large_push(tmp_path / "var", pg_url, pg_url, workers=3)


async def sigterm_during_large_push(
    data_dir: Path, url: str, database_url: str | None, workers: int
) -> None:
    """SIGTERM to the server's process group while a 20,000-item push is in flight.

    The client gets the complete result or a transport error; after a
    restart the statement is applied entirely or not at all, and resending
    the same signed statement applies it exactly once.
    """
    backend = "sqlite" if url.startswith("sqlite") else "postgres"
    governance = server_init(data_dir, database_url)
    items = [md5_item(f"big-{i}") for i in range(BIG_PUSH)]
    values = {i["value"] for i in items}

    with running(data_dir, database_url, workers) as server:
        await server.wait_healthy()
        alpha = await admit(server.url, governance, "alpha")
        body_sent = asyncio.Event()
        trace = aiohttp.TraceConfig()

        async def on_chunk(_s: Any, _c: Any, params: aiohttp.TraceRequestChunkSentParams) -> None:
            if params.method == "POST":
                body_sent.set()

        trace.on_request_chunk_sent.append(on_chunk)
        async with (
            aiohttp.ClientSession(trace_configs=[trace]) as s,
            FederationClient(server.url, alpha, retries=0, session=s, timeout_s=90) as client,
        ):
            statement: SignedStatement = client.sign(
                {"type": StatementType.SUBMISSIONS.value, "items": items}
            )
            push = asyncio.create_task(client.send_statement("/v1/submissions", statement))
            await asyncio.wait_for(body_sent.wait(), 30)
            if backend == "postgres":
                await _wait_append_in_progress(url)  # inside the append transaction
            else:
                await asyncio.sleep(0.3)  # the push takes seconds; this is mid-request
            assert not push.done(), "the push finished before SIGTERM; make it bigger"
            server.signal_group(signal.SIGTERM)
            first: dict[str, Any] | None = None
            try:
                first = await push
            except TransportError:
                first = None  # the connection broke: the client cannot know the outcome
            exit_code = await server.wait_exit()

        if first is not None:
            assert first["counts"] == {"accepted": BIG_PUSH, "duplicate": 0, "refused": 0}
        if workers == 1:
            # One process, one SIGTERM: aiohttp drains the request in flight, then exits 0.
            assert first is not None, f"the in-flight push was not drained:\n{server.log}"
            assert exit_code == 0, server.log
        # With several workers `kill -TERM -<pgid>` reaches each worker twice (directly
        # and forwarded by the parent): the second SIGTERM may cut the drain short
        # (exit code 1, TransportError). The batch must still be all or nothing.

    # Restarted (one worker is enough to look): the database decides what happened.
    with running(data_dir, database_url, 1) as server:
        await server.wait_healthy()
        async with FederationClient(server.url, alpha, retries=0) as client:
            before = [v for v in await pull_everything(client) if v["value"] in values]
            stored = await _statement_rows(url, statement.id)
            assert (len(before), stored) in ((0, 0), (BIG_PUSH, 1)), (
                f"half-written batch: {len(before)} of {BIG_PUSH} versions, {stored} statement rows"
            )
            if first is not None:
                assert len(before) == BIG_PUSH  # answered means committed

            resent = await client.send_statement("/v1/submissions", statement)
            assert resent["statement_id"] == statement.id
            assert resent["counts"] == {"accepted": BIG_PUSH, "duplicate": 0, "refused": 0}
            if first is not None:
                assert resent == first  # a replay of the first answer
            again = await client.send_statement("/v1/submissions", statement)
            assert again == resent

            after = [v for v in await pull_everything(client) if v["value"] in values]
            assert len(after) == BIG_PUSH
            assert {v["value"] for v in after} == values
            assert all(v["version"] == 1 for v in after)
            assert await _statement_rows(url, statement.id) == 1
            start = int(resent["leaf_index"])
            assert [v["index"] for v in after] == list(range(start + 1, start + 1 + BIG_PUSH))
        db = Database(url)
        try:
            size, all_idx, _ = await log_facts(db)
        finally:
            await db.close()
        assert_no_hole(size, all_idx)
        assert size == start + 1 + BIG_PUSH  # nothing appended after it, twice or otherwise


# (iv) SQLite refuses several workers


def test_sqlite_refuses_several_workers(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    done = subprocess.run(
        [
            *(HASHFED, "server", "run", "--data-dir", str(data_dir)),
            *("--port", str(free_port()), "--workers", "2"),
        ],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
    )
    assert done.returncode != 0
    assert "SQLite serves one worker" in done.stderr, done.stderr
    assert "--workers 1" in done.stderr and "PostgreSQL" in done.stderr
    assert "serving on" not in done.stdout
    assert not (data_dir / "hashfed.db").exists()  # refused before touching anything
