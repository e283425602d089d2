"""Merkle proofs at scale: inclusion and consistency proofs served from a 10,000,000-leaf log.

Goal (issue "Provenance"): inclusion and consistency proofs served in under
5 ms at the 99th percentile on a 10,000,000-leaf log.

Building 10M leaves through the API would take hours, so the log is built
straight into the database, honestly: ``hashfed server init`` creates the
schema and founds the federation (genesis and policy leaves, tiles and the
first checkpoint); then synthetic record-version leaves (canonical JSON, as
the server writes them) go into the ``log`` table in big transactions
(SQLite: ``executemany`` of the Core insert, 100,000-ish rows per commit;
PostgreSQL: ``COPY``), the Merkle tiles are built with the server's own
:func:`federation.log.tree.extend_tiles` chunk by chunk (the partial edge
tiles kept in memory) and inserted, ``log_head.size`` is set, and checkpoints
are signed with the log key. An independent :class:`CompactRange` over every
leaf hash must give the same root as the stored tiles, and gives the roots of
a few hundred older sizes, each signed as a checkpoint too.

Then the real server (``hashfed server run``, a subprocess) serves a few
thousand signed requests per endpoint through :class:`FederationClient`:
``GET /v1/log/proof/inclusion`` at random indexes and
``GET /v1/log/proof/consistency`` from random old sizes, one at a time
(latency: median, p99, max) and then several in flight (requests/s). Every
inclusion proof is verified against the signed checkpoint's root with the
leaf hash recomputed from the generator, and every consistency proof from a
size whose root is known is verified against both signed checkpoints.
Finally the same proofs are timed in this process without HTTP (as the
handlers serve them: point reads of the tiles missing from a warm tile
cache; the uncached MerkleTree proof on an open connection; the pure
computation on cached tiles), to separate HTTP, authentication and
signatures from the cost of the proof itself. ``GET /healthz`` (unsigned)
gives the HTTP floor, ``GET /v1/me`` the authentication floor.

    .venv/bin/python bench/proofs.py [--leaves 10000000] [--postgres [URL]] [--reuse DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import random
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

# Run as a script, this directory is on sys.path: the benches share bench/common.py.
from common import (
    DEFAULT_PG_ADMIN_URL,
    CpuMeter,
    collapsed_hotspots,
    file_tail,
    install_sigterm,
    latency_summary,
    loadavg,
    log,
    machine_info,
    machine_lines,
    pg_connect,
    pg_create,
    pg_database_url,
    pg_drop,
    pg_exists,
    print_hotspots,
    py_spy,
    running_server,
    server_init,
)
from sqlalchemy import and_, bindparam, insert, select, update
from sqlalchemy.dialects import sqlite as sqlite_dialect

from clients.client import FederationClient, Identity
from federation.log.checkpoints import CheckpointSigner, record_checkpoint
from federation.log.feed import log_size
from federation.log.tree import (
    TILE_WIDTH,
    MerkleTree,
    ProofTiles,
    TileCache,
    _needed_tiles,
    edge_tile_keys,
    extend_tiles,
    point_fetch,
    subtree_hash_from,
)
from federation.protocol.keys import load_private_key
from federation.protocol.merkle import (
    HASH_SIZE,
    CompactRange,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)
from federation.protocol.note import open_note, parse_checkpoint, parse_verifier_key
from federation.protocol.signals import record_id
from federation.protocol.statements import canonical_json
from federation.store.db import Database
from federation.store.schema import LEAF_VERSION, log_head, tiles
from federation.store.schema import log as log_table

GOAL_P99_MS = 5.0
ORIGIN = "hashfed.local/federation"
META = "bench.json"
FULL_TILE = TILE_WIDTH * HASH_SIZE
LABELS = ("glorification", "recruitment", "instruction", "imminent_credible_threat")
STATEMENT_EVERY = 5_000  # synthetic versions share a "cause" per this many leaves
BASE_TIME = 1_790_000_000

TileKey = tuple[int, int]


# ---------------------------------------------------------------- synthetic leaves


def synthetic_leaf(i: int) -> bytes:
    """Leaf ``i``: a record version as the server writes it (canonical JSON), deterministic."""
    value = f"{(i * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) % (1 << 128):032x}"
    batch = i // STATEMENT_EVERY
    return canonical_json(
        {
            "cause": hashlib.sha256(b"bench-statement-%d" % batch).hexdigest(),
            "contributors": ["bench"],
            "disputed": False,
            "index": i,
            "kind": "version",
            "labels": [LABELS[i % 4]],
            "opinions": {},
            "record": record_id("md5", value),
            "signal_type": "md5",
            "state": "approved",
            "time": BASE_TIME + batch,
            "value": value,
            "version": 1,
        }
    )


# ---------------------------------------------------------------- the build


@dataclass
class Built:
    backend: str
    database_url: str
    pg_database: str | None
    target_leaves: int
    seed: int
    leaves: int = 0
    founded_leaves: int = 0
    root: str = ""
    old_roots: dict[str, str] = field(default_factory=dict)  # size -> base64 root
    timings: dict[str, float] = field(default_factory=dict)
    database_mib: float | None = None
    complete: bool = False


class Loader:
    """Bulk writes into one backend: log rows and tiles, in big transactions."""

    async def open(self) -> None: ...
    async def close(self) -> None: ...

    async def write(
        self,
        rows: list[tuple[int, int, bytes, bool]],
        tile_inserts: list[tuple[int, int, bytes]],
        tile_updates: list[tuple[int, int, bytes]],
    ) -> None:
        raise NotImplementedError


class SqliteLoader(Loader):
    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn: sqlite3.Connection | None = None
        dialect = sqlite_dialect.dialect()  # type: ignore[no-untyped-call]
        self.insert_log = str(
            insert(log_table).compile(
                dialect=dialect, column_keys=["idx", "kind", "leaf", "visible"]
            )
        )
        self.insert_tile = str(
            insert(tiles).compile(dialect=dialect, column_keys=["level", "idx", "hashes"])
        )
        self.update_tile = str(
            update(tiles)
            .where(and_(tiles.c.level == bindparam("b_level"), tiles.c.idx == bindparam("b_idx")))
            .values(hashes=bindparam("b_hashes"))
            .compile(dialect=dialect)
        )

    async def open(self) -> None:
        def connect() -> sqlite3.Connection:
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA cache_size=-262144")
            return conn

        self.conn = await asyncio.to_thread(connect)

    async def close(self) -> None:
        if self.conn is not None:
            await asyncio.to_thread(self.conn.close)
            self.conn = None

    async def write(
        self,
        rows: list[tuple[int, int, bytes, bool]],
        tile_inserts: list[tuple[int, int, bytes]],
        tile_updates: list[tuple[int, int, bytes]],
    ) -> None:
        conn = self.conn
        assert conn is not None

        def work() -> None:
            conn.execute("BEGIN")
            conn.executemany(self.insert_log, rows)
            if tile_inserts:
                conn.executemany(self.insert_tile, tile_inserts)
            if tile_updates:
                conn.executemany(self.update_tile, [(h, lv, ix) for lv, ix, h in tile_updates])
            conn.execute("COMMIT")

        await asyncio.to_thread(work)


class PostgresLoader(Loader):
    def __init__(self, url: str) -> None:
        self.url = url
        self.conn: Any = None

    async def open(self) -> None:
        self.conn = await pg_connect(self.url)

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()
            self.conn = None

    async def write(
        self,
        rows: list[tuple[int, int, bytes, bool]],
        tile_inserts: list[tuple[int, int, bytes]],
        tile_updates: list[tuple[int, int, bytes]],
    ) -> None:
        async with self.conn.transaction():
            await self.conn.copy_records_to_table(
                "log", records=rows, columns=["idx", "kind", "leaf", "visible"]
            )
            if tile_inserts:
                await self.conn.copy_records_to_table(
                    "tiles", records=tile_inserts, columns=["level", "idx", "hashes"]
                )
            for level, idx, hashes in tile_updates:
                await self.conn.execute(
                    "UPDATE tiles SET hashes = $1 WHERE level = $2 AND idx = $3",
                    hashes,
                    level,
                    idx,
                )


async def read_founding(db: Database) -> tuple[int, list[bytes], dict[TileKey, bytes]]:
    """What ``hashfed server init`` wrote: size, leaves and the edge tiles."""
    async with db.reading() as conn:
        size = await log_size(conn)
        leaves = [
            bytes(r.leaf)
            for r in await conn.execute(select(log_table.c.leaf).order_by(log_table.c.idx))
        ]
        edges: dict[TileKey, bytes] = {}
        for level, idx in edge_tile_keys(size):
            row = (
                await conn.execute(
                    select(tiles.c.hashes).where(and_(tiles.c.level == level, tiles.c.idx == idx))
                )
            ).first()
            if row is not None:
                edges[(level, idx)] = bytes(row.hashes)
    return size, leaves, edges


async def build(args: argparse.Namespace, work: Path, built: Built) -> None:
    data_dir = work / "var"
    target = args.leaves
    log(f"building a {target:,}-leaf log in {work} ({built.backend})")
    t0 = time.perf_counter()
    await server_init(data_dir, built.database_url, work / "server.log")
    built.timings["server_init_s"] = round(time.perf_counter() - t0, 1)
    db = Database(built.database_url)
    try:
        start, founding, edges = await read_founding(db)
    finally:
        await db.close()
    built.founded_leaves = start
    in_db = set(edges)  # tiles that exist in the database already: update, not insert

    rng = random.Random(args.seed)
    old_sizes = sorted(set(rng.randrange(start + 1, target) for _ in range(args.known_roots)))
    compact = CompactRange()
    for leaf in founding:
        compact.append(leaf_hash(leaf))

    loader: Loader
    if built.backend == "sqlite":
        loader = SqliteLoader(data_dir / "hashfed.db")
    else:
        loader = PostgresLoader(built.database_url)
    await loader.open()
    spent = dict.fromkeys(("generate_hash_s", "compact_range_s", "tiles_s", "db_write_s"), 0.0)
    pending: dict[TileKey, bytes] = dict(edges)
    writing: asyncio.Task[None] | None = None
    old_iter = iter(old_sizes)
    next_old = next(old_iter, None)
    size = start
    chunks = 0
    t_load = time.perf_counter()
    try:
        while size < target:
            end = min(size + args.chunk, target)
            t = time.perf_counter()
            rows = [(i, LEAF_VERSION, synthetic_leaf(i), True) for i in range(size, end)]
            hashes = [leaf_hash(r[2]) for r in rows]
            t1 = time.perf_counter()
            append = compact.append
            pos = 0
            while next_old is not None and next_old <= end:
                for h in hashes[pos : next_old - size]:
                    append(h)
                pos = next_old - size
                built.old_roots[str(next_old)] = base64.b64encode(compact.root()).decode()
                next_old = next(old_iter, None)
            for h in hashes[pos:]:
                append(h)
            t2 = time.perf_counter()
            changed = extend_tiles(size, pending, hashes)
            inserts, updates = [], []
            for key, data in changed.items():
                if len(data) == FULL_TILE:
                    pending.pop(key, None)
                    (updates if key in in_db else inserts).append((*key, data))
                else:
                    pending[key] = data
            t3 = time.perf_counter()
            spent["generate_hash_s"] += t1 - t
            spent["compact_range_s"] += t2 - t1
            spent["tiles_s"] += t3 - t2
            if writing is not None:
                tw = time.perf_counter()
                await writing  # the previous chunk: its write overlapped this chunk's hashing
                spent["db_write_s"] += time.perf_counter() - tw
            writing = asyncio.ensure_future(loader.write(rows, inserts, updates))
            size = end
            chunks += 1
            if chunks % 10 == 0 or size == target:
                rate = (size - start) / (time.perf_counter() - t_load)
                log(f"  {size:,} leaves ({rate:,.0f}/s)")
        if writing is not None:
            tw = time.perf_counter()
            await writing
            spent["db_write_s"] += time.perf_counter() - tw
        # The partial edge tiles, once.
        last_inserts = [(*k, v) for k, v in pending.items() if k not in in_db]
        last_updates = [(*k, v) for k, v in pending.items() if k in in_db]
        await loader.write([], last_inserts, last_updates)
    finally:
        if writing is not None and not writing.done():
            writing.cancel()
            with contextlib.suppress(BaseException):
                await writing
        await loader.close()
    built.timings.update({k: round(v, 1) for k, v in spent.items()})
    built.timings["load_wall_s"] = round(time.perf_counter() - t_load, 1)
    built.timings["load_leaves_per_s"] = round((target - start) / built.timings["load_wall_s"])

    t = time.perf_counter()
    root = compact.root()
    signer = CheckpointSigner.from_file(ORIGIN, data_dir / "keys" / "log.key")
    db = Database(built.database_url)
    try:
        async with db.writing() as conn:
            await conn.execute(update(log_head).where(log_head.c.id == 1).values(size=target))
            stored = await MerkleTree(conn).root(target)
            if stored != root:
                raise RuntimeError("the tiles' root differs from the independent CompactRange's")
            for old, old_root in built.old_roots.items():
                await record_checkpoint(conn, signer, int(old), base64.b64decode(old_root))
            await record_checkpoint(conn, signer, target, root)
    finally:
        await db.close()
    built.timings["checkpoints_s"] = round(time.perf_counter() - t, 1)
    built.timings["total_build_s"] = round(time.perf_counter() - t0, 1)
    built.leaves = target
    built.root = base64.b64encode(root).decode()
    if built.backend == "sqlite":
        built.database_mib = round(
            sum(p.stat().st_size for p in data_dir.glob("hashfed.db*")) / 2**20
        )
    built.complete = True
    log(f"built {target:,} leaves in {built.timings['total_build_s']:,} s; tiles' root matches")


# ---------------------------------------------------------------- serving


@dataclass
class Result:
    name: str
    stats: dict[str, float]
    verified: int = 0
    note: str = ""


async def timed_requests(
    count: int, concurrency: int, call: Callable[[int], Awaitable[None]]
) -> tuple[list[float], float]:
    """Run ``call(n)`` ``count`` times with ``concurrency`` in flight; per-call seconds, wall."""
    times: list[float] = []
    counter = iter(range(count))

    async def worker() -> None:
        for n in counter:
            t = time.perf_counter()
            await call(n)
            times.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return times, time.perf_counter() - t0


def leaf_hash_of(index: int, founding: dict[int, bytes]) -> bytes:
    return founding[index] if index in founding else leaf_hash(synthetic_leaf(index))


async def serve_and_measure(
    args: argparse.Namespace, work: Path, built: Built
) -> tuple[list[Result], dict[str, Any]]:
    data_dir = work / "var"
    gov = Identity("governance", load_private_key(data_dir / "keys" / "governance.key"))
    signer = CheckpointSigner.from_file(ORIGIN, data_dir / "keys" / "log.key")
    origin, log_key = parse_verifier_key(signer.verifier_key)
    n = built.leaves
    rng = random.Random(args.seed + 1)
    results: list[Result] = []
    db = Database(built.database_url)
    try:
        async with db.reading() as conn:
            rows = await conn.execute(
                select(log_table.c.leaf)
                .where(log_table.c.idx < built.founded_leaves)
                .order_by(log_table.c.idx)
            )
            founding_leaves = [bytes(r.leaf) for r in rows]
    finally:
        await db.close()
    founding = {i: leaf_hash(leaf) for i, leaf in enumerate(founding_leaves)}
    known = {int(k): base64.b64decode(v) for k, v in built.old_roots.items()}
    known_sizes = sorted(known)
    extra: dict[str, Any] = {}

    async with running_server(data_dir, built.database_url, work / "server.log") as server:
        log(f"server pid {server.pid} on {server.url}")
        async with FederationClient(server.url, gov) as client:
            note = (await client.request("GET", "/v1/log/checkpoint")).body.decode()
            checkpoint = parse_checkpoint(open_note(note, origin, log_key))
            if (
                checkpoint.size != n
                or base64.b64encode(checkpoint.root_hash).decode() != built.root
            ):
                raise RuntimeError(f"the server's checkpoint is not the built one: {checkpoint}")
            root = checkpoint.root_hash
            old_roots: dict[int, bytes] = {}
            for size in known_sizes:  # every known old size, fetched and opened as a client would
                old_note = (
                    await client.request("GET", "/v1/log/checkpoint", params={"size": size})
                ).body.decode()
                old = parse_checkpoint(open_note(old_note, origin, log_key))
                if old.root_hash != known[size]:
                    raise RuntimeError(f"checkpoint at {size} has another root than the build's")
                old_roots[size] = old.root_hash

            # Warm up (connections, page cache), then the measured runs.
            for _ in range(50):
                await client.get_json("/v1/log/proof/inclusion", {"index": rng.randrange(n)})
                await client.get_json(
                    "/v1/log/proof/consistency", {"old_size": rng.randrange(1, n)}
                )

            inclusion_out: list[tuple[int, dict[str, Any]]] = []

            async def inclusion(_: int) -> None:
                index = rng.randrange(n)
                body = await client.get_json("/v1/log/proof/inclusion", {"index": index})
                inclusion_out.append((index, body))

            consistency_out: list[tuple[int, dict[str, Any]]] = []

            async def consistency(k: int) -> None:
                # Every fourth old size has a known signed root: its proof is verified below.
                old = known_sizes[k % len(known_sizes)] if k % 4 == 0 else rng.randrange(1, n)
                body = await client.get_json("/v1/log/proof/consistency", {"old_size": old})
                consistency_out.append((old, body))

            async def me(_: int) -> None:
                await client.get_json("/v1/me")

            health = aiohttp.ClientSession()

            async def healthz(_: int) -> None:
                async with health.get(f"{server.url}/healthz") as resp:
                    await resp.read()

            for name, call in (
                ("inclusion proof", inclusion),
                ("consistency proof", consistency),
                ("GET /v1/me (auth floor)", me),
                ("GET /healthz (unsigned: HTTP floor)", healthz),
            ):
                for concurrency in (1, args.concurrency):
                    count = args.requests if concurrency == 1 else args.requests // 2
                    with CpuMeter(server.pid) as meter:
                        times, wall = await timed_requests(count, concurrency, call)
                    stats = latency_summary(times, wall)
                    stats["server_cpu_ms_per_req"] = meter.server_cpu_s / count * 1000
                    stats["client_cpu_ms_per_req"] = meter.own_cpu_s / count * 1000
                    stats["other_cpu_s"] = meter.other_cpu_s
                    results.append(Result(f"{name}, {concurrency} in flight", stats))
                    log(
                        f"  {name}, {concurrency} in flight: median {stats['median_ms']:.2f} ms, "
                        f"p99 {stats['p99_ms']:.2f} ms, {stats['per_s']:,.0f}/s"
                    )

            await health.close()
            if args.profile is not None:  # extra runs under py-spy, not in the figures
                args.profile.mkdir(parents=True, exist_ok=True)
                for name, call in (("inclusion", inclusion), ("consistency", consistency),
                                   ("me", me)):  # fmt: skip
                    log(f"  profiling the server during {args.requests:,} {name} requests")
                    async with py_spy(server.pid, args.profile / f"server-{name}.txt"):
                        await timed_requests(args.requests, 1, call)

            verified_incl = 0
            for index, body in inclusion_out:
                proof = [base64.b64decode(h) for h in body["hashes"]]
                expected = leaf_hash_of(index, founding)
                if base64.b64decode(body["leaf_hash"]) != expected or body["size"] != n:
                    raise RuntimeError(f"inclusion proof of {index}: wrong leaf hash or size")
                verify_inclusion(expected, index, n, proof, root)
                verified_incl += 1
            verified_cons = 0
            for old, body in consistency_out:
                if old in old_roots:
                    proof = [base64.b64decode(h) for h in body["hashes"]]
                    verify_consistency(old, n, proof, old_roots[old], root)
                    verified_cons += 1
            for r in results:
                if r.name.startswith("inclusion"):
                    r.verified = verified_incl
                    r.note = "every proof verified (leaf hash recomputed)"
                elif r.name.startswith("consistency"):
                    r.verified = verified_cons
                    r.note = "proofs from the known signed old sizes verified"
            extra["inclusion_verified"] = verified_incl
            extra["consistency_verified"] = verified_cons
            extra["proof_hashes"] = {
                "inclusion": len(inclusion_out[0][1]["hashes"]) if inclusion_out else 0,
            }
    results.extend(await in_process(args, built, rng))
    return results, extra


async def in_process(args: argparse.Namespace, built: Built, rng: random.Random) -> list[Result]:
    """The proofs without HTTP: the handler's database work, the proof alone, the computation."""
    n = built.leaves
    count = args.requests
    results: list[Result] = []
    db = Database(built.database_url)
    try:
        # What the handlers do: point reads of the tiles the process has not cached.
        served = ProofTiles(point_fetch(db.point), TileCache())

        async def handler_like_inclusion() -> None:
            await served.inclusion_proof(rng.randrange(n), n)

        async def handler_like_consistency() -> None:
            await served.consistency_proof(rng.randrange(1, n), n)

        for name, call in (
            ("inclusion: handler's tile reads and proof", handler_like_inclusion),
            ("consistency: handler's tile reads and proof", handler_like_consistency),
        ):
            times = []
            t0 = time.perf_counter()
            for _ in range(count):
                t = time.perf_counter()
                await call()
                times.append(time.perf_counter() - t)
            results.append(Result(name, latency_summary(times, time.perf_counter() - t0)))

        async with db.reading() as conn:
            for name, proof in (
                ("inclusion: MerkleTree proof, open connection", "inclusion"),
                ("consistency: MerkleTree proof, open connection", "consistency"),
            ):
                times = []
                t0 = time.perf_counter()
                for _ in range(count):
                    t = time.perf_counter()
                    tree = MerkleTree(conn)
                    if proof == "inclusion":
                        await tree.inclusion_proof(rng.randrange(n), n)
                    else:
                        await tree.consistency_proof(rng.randrange(1, n), n)
                    times.append(time.perf_counter() - t)
                results.append(Result(name, latency_summary(times, time.perf_counter() - t0)))

            # Pure computation: the tiles each proof needs are loaded first, outside the timing.
            for name, proof in (
                ("inclusion: computation only (tiles cached)", "inclusion"),
                ("consistency: computation only (tiles cached)", "consistency"),
            ):
                times = []
                wall = 0.0
                for _ in range(count):
                    tree = MerkleTree(conn)
                    if proof == "inclusion":
                        index = rng.randrange(n)
                        await tree._load(_needed_tiles(lambda h, i=index: inclusion_proof(i, n, h)))
                        t = time.perf_counter()
                        inclusion_proof(index, n, subtree_hash_from(tree._tile))
                    else:
                        old = rng.randrange(1, n)
                        await tree._load(_needed_tiles(lambda h, o=old: consistency_proof(o, n, h)))
                        t = time.perf_counter()
                        consistency_proof(old, n, subtree_hash_from(tree._tile))
                    times.append(time.perf_counter() - t)
                    wall += times[-1]
                results.append(Result(name, latency_summary(times, wall)))
    finally:
        await db.close()
    return results


# ---------------------------------------------------------------- the run


async def prepare(args: argparse.Namespace, work: Path) -> Built:
    backend = "postgres" if args.postgres else "sqlite"
    meta = work / META
    if meta.exists():
        built = Built(**orjson.loads(meta.read_bytes()))
        same = (
            built.backend == backend
            and built.target_leaves == args.leaves
            and built.seed == args.seed
        )
        alive = built.pg_database is None or (
            args.postgres is not None and await pg_exists(args.postgres, built.pg_database)
        )
        if built.complete and same and alive:
            log(f"reusing the {built.leaves:,}-leaf log in {work}")
            return built
        log(f"{work} holds another or an incomplete build: discarding it")
        await discard(args, work, built)
    await asyncio.to_thread(work.mkdir, parents=True, exist_ok=True)
    pg_name = await pg_create(args.postgres, "hashfed_bench_proofs") if args.postgres else None
    url = (
        pg_database_url(args.postgres, pg_name)
        if pg_name
        else f"sqlite+aiosqlite:///{(work / 'var' / 'hashfed.db').resolve()}"
    )
    built = Built(backend, url, pg_name, args.leaves, args.seed)
    meta.write_bytes(orjson.dumps(asdict(built)))  # so an interrupted build is cleaned up
    await build(args, work, built)
    meta.write_bytes(orjson.dumps(asdict(built), option=orjson.OPT_INDENT_2))
    return built


async def discard(args: argparse.Namespace, work: Path, built: Built | None) -> None:
    meta = work / META
    if built is None and meta.exists():  # a build that failed half-way: its database too
        built = Built(**orjson.loads(meta.read_bytes()))
    if built is not None and built.pg_database and args.postgres:
        await pg_drop(args.postgres, built.pg_database)
    await asyncio.to_thread(shutil.rmtree, work, ignore_errors=True)


async def run(args: argparse.Namespace) -> int:
    install_sigterm()
    machine, load_start = machine_info(), loadavg()
    reuse = args.reuse is not None
    work = args.reuse.resolve() if reuse else Path(tempfile.mkdtemp(prefix="hashfed-proofs-"))
    built: Built | None = None
    try:
        built = await prepare(args, work)
        results, extra = await serve_and_measure(args, work, built)
    except Exception:
        log(f"failed; the server's log ends with:\n{file_tail(work / 'server.log', 4000)}")
        raise
    finally:
        if not reuse:
            await discard(args, work, built)
            log(f"removed {work}")
    assert built is not None
    show(machine, load_start, loadavg(), built, results, extra)
    if args.profile is not None:
        own = ("federation/", "clients/")
        for name in ("inclusion", "consistency", "me"):
            hot = collapsed_hotspots(args.profile / f"server-{name}.txt", own)
            print_hotspots(f"server hotspots, {name} requests", hot)
    return 0


def show(
    machine: dict[str, Any],
    load_start: str,
    load_end: str,
    built: Built,
    results: list[Result],
    extra: dict[str, Any],
) -> None:
    print()
    for line in machine_lines(machine, load_start, load_end):
        print(line)
    size = f", database {built.database_mib:,} MiB" if built.database_mib else ""
    print(f"backend: {built.backend}   log: {built.leaves:,} leaves{size}")
    t = built.timings
    print(
        f"build: {t.get('total_build_s', 0):,} s in all = server init {t.get('server_init_s')} s"
        f" + bulk load {t.get('load_wall_s')} s ({t.get('load_leaves_per_s', 0):,} leaves/s:"
        f" generate+hash {t.get('generate_hash_s')} s, CompactRange {t.get('compact_range_s')} s,"
        f" extend_tiles {t.get('tiles_s')} s, waiting on DB writes {t.get('db_write_s')} s)"
        f" + root check and {len(built.old_roots) + 1} checkpoints {t.get('checkpoints_s')} s"
    )
    print(
        f"verified: {extra.get('inclusion_verified', 0):,} inclusion proofs and "
        f"{extra.get('consistency_verified', 0):,} consistency proofs against signed checkpoints"
        f" (inclusion proofs hold {extra.get('proof_hashes', {}).get('inclusion', 0)} hashes)"
    )
    print()
    header = (
        f"{'measurement':<50} {'n':>6} {'median ms':>9} {'p99 ms':>8} {'max ms':>8} "
        f"{'req/s':>7} {'srv cpu ms':>10} {'cli cpu ms':>10} {'other cpu s':>11} "
        f"{'goal p99<5ms':>12}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        s = r.stats
        goal = ""
        if r.name.startswith(("inclusion proof", "consistency proof")):
            goal = "ok" if s["p99_ms"] < GOAL_P99_MS else "MISS"
        cpu = f"{s['server_cpu_ms_per_req']:.2f}" if "server_cpu_ms_per_req" in s else ""
        client = f"{s['client_cpu_ms_per_req']:.2f}" if "client_cpu_ms_per_req" in s else ""
        other = f"{s['other_cpu_s']:.1f}" if "other_cpu_s" in s else ""
        print(
            f"{r.name:<50} {s['n']:>6,} {s['median_ms']:>9.3f} {s['p99_ms']:>8.3f} "
            f"{s['max_ms']:>8.2f} {s['per_s']:>7,.0f} {cpu:>10} {client:>10} {other:>11} "
            f"{goal:>12}"
        )
    print(
        "\nThrough the client: wall time of a signed request as the caller sees it (signing, "
        "HTTP, the server's\nauthentication, the proof, JSON). srv cpu ms / cli cpu ms: the "
        "server's / this process's CPU\nper request. In process: the same proofs on this "
        "process's own connections, without HTTP or\nauthentication. other cpu s: CPU the "
        "rest of the machine used meanwhile (other users of this\nshared machine: large means "
        "noisy figures)."
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--leaves", type=int, default=10_000_000)
    parser.add_argument("--requests", type=int, default=3_000, help="requests per measurement")
    parser.add_argument("--concurrency", type=int, default=8, help="in flight for req/s")
    parser.add_argument("--chunk", type=int, default=131_072, help="leaves per transaction")
    parser.add_argument("--known-roots", type=int, default=200, help="old sizes signed")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--postgres",
        metavar="URL",
        nargs="?",
        const=DEFAULT_PG_ADMIN_URL,
        help=f"PostgreSQL server (asyncpg URL allowed to CREATE DATABASE; default "
        f"{DEFAULT_PG_ADMIN_URL}); a fresh database is created and dropped (kept with --reuse)",
    )
    parser.add_argument(
        "--reuse",
        type=Path,
        metavar="DIR",
        help="keep the built log in DIR (and its PostgreSQL database) and reuse it",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="add py-spy-profiled request runs (server side); print the hotspots",
    )
    args = parser.parse_args(argv)
    if args.leaves < 1000 or args.requests < 10 or args.chunk < TILE_WIDTH:
        parser.error("need --leaves >= 1000, --requests >= 10, --chunk >= 256")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return asyncio.run(run(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        log("interrupted: server stopped" + ("" if args.reuse else ", data removed"))
        return 130


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
