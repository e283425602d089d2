"""Push N submissions in signed batches to a real server, then pull them all back.

Starts ``hashfed server init`` + ``hashfed server run`` as a subprocess on a free
port with a temporary data directory (and, for PostgreSQL, a fresh database
``hashfed_bench_<random>`` dropped at the end), admits one member organisation,
pushes the items through :meth:`FederationClient.submit` with bounded
concurrency, then pulls the whole feed as JSON pages and as one NDJSON stream;
``--pull store`` also pulls it into a fresh local store (``hashfed pull``'s
:func:`clients.sync_feed.pull`), so that its client CPU per version can be set
against the raw NDJSON pull's (``--pull ndjson,lines,store --repeat 3``;
``lines`` reads the stream's lines without decoding any: the transport alone).

Prints records/s for each phase, the CPU each side used (this process, the
server process, the rest of the machine: PostgreSQL), the server's peak RSS,
and the client-side cost of building and signing one batch on its own.

Goal on the 2-core reference machine (SQLite): push >= 25,000 records/s, pull
>= 100,000 records/s.

    .venv/bin/python bench/push_pull.py --backend sqlite --records 100000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson

# Run as a script, this directory is on sys.path: the benches share bench/common.py.
from common import (
    code_state,
    file_tail,
    free_port,
    log,
    machine_busy_cpu_s,
    machine_info,
    process_cpu_s,
    process_tree_cpu_s,
)
from sqlalchemy.engine import make_url

from clients.client import FederationClient, Identity
from clients.store import LocalStore
from clients.sync_feed import pull as pull_into_store
from federation.protocol.keys import generate_private_key, load_private_key
from federation.protocol.statements import StatementType

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PG_ADMIN_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
LABELS = ("glorification", "recruitment", "instruction", "imminent_credible_threat")
PDQ_SHARE = 0.6  # the rest are md5
JSON_PAGE_LIMIT = 10_000
GOAL_PUSH_RPS = 25_000
GOAL_PULL_RPS = 100_000
SERVER_START_TIMEOUT_S = 60.0
SERVER_STOP_TIMEOUT_S = 10.0
CLIENT_TIMEOUT_S = 3600.0  # one NDJSON stream of a million versions is a single request
SIGN_SAMPLE_BATCHES = 10
MEMBER_ORG = "bench-member"
PROFILE_RATE_HZ = 200
PROFILE_TOP = 25


# The machine and processes


def code_fingerprint() -> str:
    """A short hash of the server's source: tells runs of different code apart."""
    import federation

    digest = hashlib.sha256()
    root = Path(federation.__file__).parent
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return f"{digest.hexdigest()[:12]} ({root})"


def runqueue_wait_s(pid: int) -> dict[int, float]:
    """Seconds each thread of ``pid`` spent runnable but waiting for a CPU, by thread id."""
    waits: dict[int, float] = {}
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError, IndexError):
                waits[int(task.name)] = int((task / "schedstat").read_text().split()[1]) / 1e9
    return waits


def memory_kib(pid: int) -> dict[str, int]:
    """VmHWM (peak RSS) and VmRSS of ``pid`` in KiB."""
    found = {"VmHWM": 0, "VmRSS": 0}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name = line.split(":", 1)[0]
            if name in found:
                found[name] = int(line.split()[1])
    return found


def postgres_backends_cpu_s(database: str) -> dict[int, float]:
    """CPU seconds of each PostgreSQL backend process serving ``database``, by pid."""
    found: dict[int, float] = {}
    marker = f" {database} ".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if cmdline.startswith(b"postgres:") and marker in cmdline:
            found[int(entry.name)] = process_cpu_s(int(entry.name))
    return found


@dataclass
class CpuMeter:
    """CPU used during one phase by this process, the server, PostgreSQL and the rest.

    "Other" is whatever else ran on the machine meanwhile: on a shared machine,
    a large figure there means the phase competed for the cores.
    """

    server_pid: int
    database: str | None = None  # the PostgreSQL database whose backends to count
    _start: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    _db_start: dict[int, float] = field(default_factory=dict)
    _wait_start: dict[int, float] = field(default_factory=dict)

    def start(self) -> None:
        self._start = self._now()
        self._wait_start = runqueue_wait_s(self.server_pid)
        self._db_start = postgres_backends_cpu_s(self.database) if self.database else {}

    def _now(self) -> tuple[float, float, float, float]:
        return (
            time.perf_counter(),
            time.process_time(),
            process_tree_cpu_s(self.server_pid),
            machine_busy_cpu_s(),
        )

    def stop(self) -> dict[str, float]:
        db_end = postgres_backends_cpu_s(self.database) if self.database else {}
        wall, client, server, machine = (
            b - a for a, b in zip(self._start, self._now(), strict=True)
        )
        # Backends that exited during the phase are missed (the pool keeps them open).
        database = sum(cpu - self._db_start.get(pid, 0.0) for pid, cpu in db_end.items())
        # Threads that ended during the phase are missed (NullPool SQLite connections).
        waited = sum(
            w - self._wait_start.get(tid, 0.0)
            for tid, w in runqueue_wait_s(self.server_pid).items()
        )
        return {
            "seconds": wall,
            "client_cpu_s": client,
            "server_cpu_s": server,
            "postgres_cpu_s": database,
            "other_cpu_s": max(machine - client - server - database, 0.0),
            "server_runqueue_wait_s": waited,
        }


# Items and the client-side cost of a batch


def generate_items(count: int, seed: int) -> list[dict[str, Any]]:
    """``count`` distinct valid submissions: mostly PDQ, the rest MD5, 1–2 labels each."""
    rng = random.Random(seed)
    items: list[dict[str, Any]] = []
    append = items.append
    for i in range(count):
        # The index in the value's tail makes every value distinct.
        if rng.random() < PDQ_SHARE:
            item = {"signal_type": "pdq", "value": f"{rng.getrandbits(192):048x}{i:016x}"}
        else:
            item = {"signal_type": "md5", "value": f"{rng.getrandbits(64):016x}{i:016x}"}
        first = rng.randrange(len(LABELS))
        if rng.random() < 0.25:
            item["labels"] = [LABELS[first], LABELS[(first + 1) % len(LABELS)]]
        else:
            item["labels"] = [LABELS[first]]
        append(item)
    return items


def batched(items: Sequence[dict[str, Any]], size: int) -> list[Sequence[dict[str, Any]]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def measure_client_signing(batches: Sequence[Sequence[dict[str, Any]]]) -> dict[str, Any]:
    """Time what :meth:`FederationClient.submit` does before the network, stage by stage.

    ``sign_statement`` is canonical JSON + SHA-256 (the id) + Ed25519; the first
    two and the last are also timed on their own as a breakdown.
    """
    from federation.protocol.statements import canonical_json

    key = generate_private_key()
    client = FederationClient("http://127.0.0.1:1", Identity(MEMBER_ORG, key))
    url = client.url("/v1/submissions")
    sample = list(batches[:SIGN_SAMPLE_BATCHES])
    stages = dict.fromkeys(
        ("build_items", "sign_statement", "envelope_json", "http_signature"), 0.0
    )
    parts = dict.fromkeys(("canonical_json", "ed25519_sign"), 0.0)
    total_items = 0
    for batch in sample:
        total_items += len(batch)
        t0 = time.perf_counter()
        payload = {"type": StatementType.SUBMISSIONS.value, "items": [dict(i) for i in batch]}
        t1 = time.perf_counter()
        statement = client.sign(payload)
        t2 = time.perf_counter()
        body = statement.envelope().model_dump_json().encode()
        t3 = time.perf_counter()
        client.signed_headers("POST", url, body)
        t4 = time.perf_counter()
        canonical_json(statement.payload)
        t5 = time.perf_counter()
        key.sign(statement.signed_bytes)
        t6 = time.perf_counter()
        for name, seconds in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            stages[name] += seconds
        parts["canonical_json"] += t5 - t4
        parts["ed25519_sign"] += t6 - t5
    total = sum(stages.values())
    n = len(sample)
    return {
        "batches_sampled": n,
        "batch_items": round(total_items / n),
        "body_bytes": len(body),
        "ms_per_batch": {k: round(v / n * 1000, 2) for k, v in stages.items()},
        "of_which_ms": {k: round(v / n * 1000, 2) for k, v in parts.items()},
        "ms_per_batch_total": round(total / n * 1000, 2),
        "records_per_s": round(total_items / total) if total else 0,
    }


# The server


def hashfed_command() -> list[str]:
    for candidate in (Path(sys.executable).parent / "hashfed", REPO / ".venv" / "bin" / "hashfed"):
        if candidate.exists():
            return [str(candidate)]
    return [sys.executable, "-c", "from clients.cli.main import main; main()"]


def child_env() -> dict[str, str]:
    """Our environment without HASHFED_* (the flags say everything)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HASHFED_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    data_dir: Path
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self) -> str:
        return file_tail(self.log_path)


def stop_process_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the group (the server drains), then SIGKILL what is left."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(SERVER_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def spawn(args: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start ``args`` in a process group of its own (Ctrl-C reaches only us), output to a log."""
    with log_path.open("ab") as out:
        return subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, env=child_env(), start_new_session=True
        )


async def run_checked(args: list[str], log_path: Path) -> None:
    """Run a command to completion; stop it if we are cancelled."""
    process = spawn(args, log_path)
    try:
        code = await asyncio.to_thread(process.wait)
    finally:
        stop_process_group(process)
    if code != 0:
        raise RuntimeError(f"{' '.join(args)} exited with {code}:\n{file_tail(log_path)}")


@contextlib.asynccontextmanager
async def running_server(database_url: str, work_dir: Path) -> AsyncIterator[Server]:
    """``hashfed server init`` then ``hashfed server run`` on a free port, until exit."""
    data_dir = work_dir / "var"
    log_path = work_dir / "server.log"
    flags = ["--data-dir", str(data_dir), "--database-url", database_url]
    await run_checked([*hashfed_command(), "server", "init", *flags], log_path)
    port = free_port()
    address = ["--host", "127.0.0.1", "--port", str(port)]
    process = spawn([*hashfed_command(), "server", "run", *flags, *address], log_path)
    server = Server(process, f"http://127.0.0.1:{port}", data_dir, log_path)
    try:
        await wait_healthy(server)
        yield server
    finally:
        stop_process_group(process)


async def wait_healthy(server: Server) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{server.log_tail()}")
            try:
                async with session.get(f"{server.url}/healthz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"server not healthy after {SERVER_START_TIMEOUT_S} s:\n{server.log_tail()}")


# PostgreSQL databases


async def _pg_execute(admin_url: str, sql: str) -> None:
    parsed = make_url(admin_url)
    conn = await asyncpg.connect(
        host=parsed.host or "127.0.0.1",
        port=parsed.port or 5432,
        user=parsed.username,
        password=parsed.password,
        database=parsed.database or "postgres",
    )
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def postgres_database(admin_url: str) -> AsyncIterator[str]:
    name = f"hashfed_bench_{secrets.token_hex(6)}"
    await _pg_execute(admin_url, f'CREATE DATABASE "{name}"')
    log(f"created PostgreSQL database {name}")
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        # Shielded: a Ctrl-C while dropping must not leave the database behind.
        await asyncio.shield(
            _pg_execute(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        )
        log(f"dropped PostgreSQL database {name}")


@contextlib.asynccontextmanager
async def backend_database(backend: str, work_dir: Path, pg_admin_url: str) -> AsyncIterator[str]:
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{work_dir / 'var' / 'hashfed.db'}"
        return
    async with postgres_database(pg_admin_url) as url:
        yield url


# Profiling (optional): py-spy attached to the server for each phase


def py_spy_command() -> str:
    for candidate in (Path(sys.executable).parent / "py-spy", REPO / ".venv" / "bin" / "py-spy"):
        if candidate.exists():
            return str(candidate)
    found = shutil.which("py-spy")
    if found is None:
        raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
    return found


@contextlib.asynccontextmanager
async def profiled(server: Server, out: Path | None) -> AsyncIterator[None]:
    """Record the server with py-spy (speedscope JSON at ``out``) while the block runs."""
    if out is None:
        yield
        return
    target = ["--pid", str(server.pid), "--rate", str(PROFILE_RATE_HZ), "--nonblocking"]
    output = ["--format", "speedscope", "--output", str(out)]
    recorder = spawn([py_spy_command(), "record", *target, *output], out.with_suffix(".log"))
    await asyncio.sleep(1.0)  # py-spy attaches
    try:
        yield
    finally:
        if recorder.poll() is None:
            recorder.send_signal(signal.SIGINT)  # py-spy writes the file on SIGINT
        try:
            await asyncio.to_thread(recorder.wait, 60)
        except subprocess.TimeoutExpired:
            stop_process_group(recorder)


def speedscope_hotspots(path: Path, top: int = PROFILE_TOP) -> dict[str, Any]:
    """The top functions of a py-spy speedscope profile, as shares of the sampled time.

    By self time (where the samples landed, any code) and by inclusive time of
    the server's own functions (``federation/``), so framework frames such as
    the event loop do not crowd the list.
    """
    document = orjson.loads(path.read_bytes())
    frames = document["shared"]["frames"]
    names = [f"{f['name']} ({Path(f.get('file') or '?').name}:{f.get('line', 0)})" for f in frames]
    own = [f"{os.sep}federation{os.sep}" in (f.get("file") or "") for f in frames]
    self_weight: dict[str, float] = {}
    total_weight: dict[str, float] = {}
    threads: dict[str, float] = {}
    grand = 0.0
    for profile in document["profiles"]:
        thread = "main" if "MainThread" in profile["name"] else "other threads"
        for stack, weight in zip(profile["samples"], profile["weights"], strict=True):
            grand += weight
            threads[thread] = threads.get(thread, 0.0) + weight
            if stack:
                leaf = names[stack[-1]]
                self_weight[leaf] = self_weight.get(leaf, 0.0) + weight
            # A function once per sample, however deep it recurses; by name, not line.
            for name in {names[i].rsplit(":", 1)[0] + ")" for i in stack if own[i]}:
                total_weight[name] = total_weight.get(name, 0.0) + weight

    def ranked(weights: dict[str, float]) -> list[tuple[str, float]]:
        best = sorted(weights.items(), key=lambda kv: -kv[1])[:top]
        return [(name, round(100 * w / grand, 1)) for name, w in best]

    return {
        "sampled_s": round(grand, 1),
        "threads_pct": {k: round(100 * v / grand, 1) for k, v in threads.items()},
        "self_pct": ranked(self_weight),
        "server_functions_inclusive_pct": ranked(total_weight),
    }


def print_hotspots(title: str, hotspots: dict[str, Any]) -> None:
    shares = ", ".join(f"{k} {v} %" for k, v in hotspots["threads_pct"].items())
    print(f"\n{title}: {hotspots['sampled_s']} s sampled ({shares})", file=sys.stderr)
    for kind in ("self_pct", "server_functions_inclusive_pct"):
        print(f"  by {kind.removesuffix('_pct').replace('_', ' ')}:", file=sys.stderr)
        for name, pct in hotspots[kind]:
            print(f"    {pct:5.1f} %  {name}", file=sys.stderr)


# The phases


@dataclass
class PhaseResult:
    phase: str
    records: int
    seconds: float
    records_per_s: float
    client_cpu_s: float
    server_cpu_s: float
    postgres_cpu_s: float
    other_cpu_s: float
    records_per_server_cpu_s: float
    client_us_per_record: float
    server_runqueue_wait_s: float
    server_vmhwm_mib: float
    server_vmrss_mib: float
    extra: dict[str, Any] = field(default_factory=dict)


def phase_result(
    phase: str, records: int, cpu: dict[str, float], server: Server, **extra: Any
) -> PhaseResult:
    mem = memory_kib(server.pid)
    seconds = cpu["seconds"]
    return PhaseResult(
        phase=phase,
        records=records,
        seconds=round(seconds, 2),
        records_per_s=round(records / seconds) if seconds else 0.0,
        client_cpu_s=round(cpu["client_cpu_s"], 2),
        server_cpu_s=round(cpu["server_cpu_s"], 2),
        postgres_cpu_s=round(cpu["postgres_cpu_s"], 2),
        other_cpu_s=round(cpu["other_cpu_s"], 2),
        records_per_server_cpu_s=round(records / cpu["server_cpu_s"]) if cpu["server_cpu_s"] else 0,
        client_us_per_record=round(cpu["client_cpu_s"] / records * 1e6, 2) if records else 0.0,
        server_runqueue_wait_s=round(cpu["server_runqueue_wait_s"], 2),
        server_vmhwm_mib=round(mem["VmHWM"] / 1024, 1),
        server_vmrss_mib=round(mem["VmRSS"] / 1024, 1),
        extra=extra,
    )


async def push(
    client: FederationClient, batches: Sequence[Sequence[dict[str, Any]]], concurrency: int
) -> dict[str, int]:
    """Submit every batch, ``concurrency`` requests in flight; returns the summed counts."""
    totals = {"accepted": 0, "duplicate": 0, "refused": 0}
    pending: Iterator[Sequence[dict[str, Any]]] = iter(batches)
    done = 0
    report_every = max(len(batches) // 10, 1)

    async def worker() -> None:
        nonlocal done
        for batch in pending:  # one shared iterator: each batch goes to one worker
            result = await client.submit(batch)
            for status, n in result["counts"].items():
                totals[status] = totals.get(status, 0) + n
            if totals["refused"]:
                refused = next(r for r in result["results"] if r["status"] == "refused")
                raise RuntimeError(f"the server refused an item: {refused}")
            done += 1
            if done % report_every == 0:
                log(f"  pushed {done}/{len(batches)} batches")

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return totals


async def pull_json(client: FederationClient) -> tuple[int, int]:
    """Follow ``next_cursor`` through JSON pages; returns (versions, pages)."""
    versions = pages = 0
    cursor: str | None = None
    while True:
        page = await client.feed_page(cursor, limit=JSON_PAGE_LIMIT)
        pages += 1
        versions += sum(1 for item in page["items"] if item.get("kind") == "version")
        cursor = page["next_cursor"]
        if not page["has_more"]:
            return versions, pages


async def pull_ndjson(client: FederationClient, expected: int) -> tuple[int, int]:
    """Stream the feed as NDJSON (one request unless the server caps it); (versions, requests)."""
    versions = requests = 0
    cursor: str | None = None
    while True:
        requests += 1
        end: dict[str, Any] | None = None
        async for item in client.stream_feed(cursor, limit=max(expected, 1) + 1000):
            kind = item.get("kind")
            if kind == "version":
                versions += 1
            elif kind == "end":
                end = item
        assert end is not None  # stream_feed raises on a missing trailer
        cursor = end["next_cursor"]
        if not end["has_more"]:
            return versions, requests


async def pull_lines(client: FederationClient, expected: int) -> tuple[int, int]:
    """Stream the feed as raw lines, decoding none (the transport alone); (versions, requests)."""
    versions = requests = 0
    cursor: str | None = None
    while True:
        requests += 1
        last = b""
        async for lines in client.stream_feed_lines(cursor, limit=max(expected, 1) + 1000):
            versions += len(lines)
            last = lines[-1]
        end = orjson.loads(last)
        versions -= 1  # the trailer
        cursor = end["next_cursor"]
        if not end["has_more"]:
            return versions, requests


async def pull_store(client: FederationClient, path: Path) -> tuple[int, int]:
    """Pull the whole feed into a fresh local store at ``path``; (versions, requests)."""
    with LocalStore.open(path) as store:
        result = await pull_into_store(client, store)
    for suffix in ("", "-wal", "-shm", ".lock"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    return result.versions, result.requests


async def admit_member(server: Server) -> Identity:
    governance = load_private_key(server.data_dir / "keys" / "governance.key")
    member_key = generate_private_key()
    async with FederationClient(server.url, Identity("governance", governance)) as gov:
        await gov.admit_org(
            MEMBER_ORG, "Bench member", ("contributor", "consumer"), member_key.public_key()
        )
    return Identity(MEMBER_ORG, member_key)


async def bench_backend(
    backend: str, items: list[dict[str, Any]], args: argparse.Namespace
) -> dict[str, Any]:
    log(
        f"== {backend}: {len(items):,} records, batches of {args.batch:,}, "
        f"{args.concurrency} in flight"
    )
    batches = batched(items, args.batch)
    work_dir = Path(tempfile.mkdtemp(prefix=f"hashfed-bench-{backend}-"))
    phases: list[PhaseResult] = []
    try:
        async with (
            backend_database(backend, work_dir, args.pg_admin_url) as database_url,
            running_server(database_url, work_dir) as server,
        ):
            log(f"server pid {server.pid} on {server.url} (log {server.log_path})")
            identity = await admit_member(server)
            start_mem = memory_kib(server.pid)
            async with FederationClient(server.url, identity, timeout_s=CLIENT_TIMEOUT_S) as client:
                database = make_url(database_url).database if backend == "postgres" else None
                meter = CpuMeter(server.pid, database)
                async with profiled(server, profile_path(args, backend, "push")):
                    meter.start()
                    counts = await push(client, batches, args.concurrency)
                    cpu = meter.stop()
                if counts["accepted"] != len(items):
                    raise RuntimeError(f"expected {len(items)} accepted, got {counts}")
                phases.append(phase_result("push", counts["accepted"], cpu, server, **counts))
                add_hotspots(phases[-1], profile_path(args, backend, "push"), backend)
                log(f"  push: {phases[-1].records_per_s:,.0f} records/s")
                for round_, mode in enumerate(pull_modes(args.pull) * args.repeat):
                    async with profiled(server, profile_path(args, backend, f"pull-{mode}")):
                        meter.start()
                        if mode == "json":
                            versions, requests = await pull_json(client)
                        elif mode == "ndjson":
                            versions, requests = await pull_ndjson(client, len(items))
                        elif mode == "lines":
                            versions, requests = await pull_lines(client, len(items))
                        else:
                            store_path = work_dir / f"store-{round_}.db"
                            versions, requests = await pull_store(client, store_path)
                        cpu = meter.stop()
                    if versions != len(items):
                        raise RuntimeError(
                            f"pull {mode}: {versions} versions, expected {len(items)}"
                        )
                    phases.append(
                        phase_result(f"pull {mode}", versions, cpu, server, requests=requests)
                    )
                    add_hotspots(phases[-1], profile_path(args, backend, f"pull-{mode}"), backend)
                    log(
                        f"  pull {mode}: {phases[-1].records_per_s:,.0f} records/s, "
                        f"client {phases[-1].client_us_per_record} us CPU/version"
                    )
            db_size = directory_mib(server.data_dir) if backend == "sqlite" else None
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    return {
        "backend": backend,
        "records": len(items),
        "batch": args.batch,
        "concurrency": args.concurrency,
        "server_rss_at_start_mib": round(start_mem["VmRSS"] / 1024, 1),
        "sqlite_data_dir_mib": db_size,
        "phases": [asdict(p) for p in phases],
    }


def add_hotspots(phase: PhaseResult, path: Path | None, backend: str) -> None:
    if path is None:
        return
    if not path.exists():
        log(f"py-spy wrote no profile at {path} (see {path.with_suffix('.log')})")
        return
    hotspots = speedscope_hotspots(path)
    phase.extra["profile"] = str(path)
    phase.extra["hotspots"] = hotspots
    print_hotspots(f"{backend} {phase.phase}: server hotspots ({path})", hotspots)


def profile_path(args: argparse.Namespace, backend: str, phase: str) -> Path | None:
    if args.profile is None:
        return None
    args.profile.mkdir(parents=True, exist_ok=True)
    return Path(args.profile) / f"{backend}-{phase}.speedscope.json"


def directory_mib(path: Path) -> float:
    return round(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20, 1)


PULL_MODES = ("json", "ndjson", "lines", "store")


def pull_modes(choice: str) -> list[str]:
    """``both`` (JSON pages, then NDJSON) or a comma-separated list of :data:`PULL_MODES`."""
    if choice == "both":
        return ["json", "ndjson"]
    modes = [m.strip() for m in choice.split(",") if m.strip()]
    unknown = [m for m in modes if m not in PULL_MODES]
    if unknown or not modes:
        raise argparse.ArgumentTypeError(f"unknown pull mode(s) {unknown}: use {PULL_MODES}")
    return modes


# Output


def print_table(report: dict[str, Any]) -> None:
    m = report["machine"]
    print(
        f"\nmachine: {m['nproc']} CPU ({m['cpu_model']}), {m['memory_gib']} GiB RAM, "
        f"Python {m['python']}, Linux {m['kernel']}"
    )
    print(f"server code: {report['server_code']}")
    print(f"code: {report['code']}")
    s = report["client_signing"]
    stages = ", ".join(f"{k} {v} ms" for k, v in s["ms_per_batch"].items())
    parts = ", ".join(f"{k} {v} ms" for k, v in s["of_which_ms"].items())
    print(
        f"client build+sign of one {s['batch_items']:,}-item batch: {s['ms_per_batch_total']} ms "
        f"= {s['records_per_s']:,} records/s on one core\n"
        f"  ({stages}; sign_statement includes {parts})\n"
    )
    columns = (
        ("backend", 9, "<"),
        ("records", 10, ">"),
        ("phase", 13, "<"),
        ("seconds", 8, ">"),
        ("records/s", 10, ">"),
        ("client cpu", 11, ">"),
        ("server cpu", 11, ">"),
        ("pg cpu", 8, ">"),
        ("other cpu", 10, ">"),
        ("rec/srv-cpu-s", 14, ">"),
        ("srv cpu-wait", 13, ">"),
        ("srv peak RSS", 13, ">"),
        ("goal (SQLite)", 20, ">"),
    )
    header = " ".join(f"{name:{align}{width}}" for name, width, align in columns)
    print(header)
    print("-" * len(header))
    for run in report["runs"]:
        for p in run["phases"]:
            goal = GOAL_PUSH_RPS if p["phase"] == "push" else GOAL_PULL_RPS
            verdict = ""
            if run["backend"] == "sqlite":
                verdict = f"{'ok' if p['records_per_s'] >= goal else 'MISS'} (>= {goal:,})"
            cells = (
                run["backend"],
                f"{p['records']:,}",
                p["phase"],
                f"{p['seconds']:.2f}",
                f"{p['records_per_s']:,.0f}",
                f"{p['client_cpu_s']:.1f} s",
                f"{p['server_cpu_s']:.1f} s",
                f"{p['postgres_cpu_s']:.1f} s",
                f"{p['other_cpu_s']:.1f} s",
                f"{p['records_per_server_cpu_s']:,.0f}",
                f"{p['server_runqueue_wait_s']:.1f} s",
                f"{p['server_vmhwm_mib']:,.0f} MiB",
                verdict,
            )
            print(
                " ".join(
                    f"{cell:{align}{width}}"
                    for cell, (_, width, align) in zip(cells, columns, strict=True)
                )
            )
    for run in report["runs"]:
        print_store_overhead(run)
    for run in report["runs"]:
        if run["sqlite_data_dir_mib"] is not None:
            print(f"\nSQLite data directory after the run: {run['sqlite_data_dir_mib']:,} MiB")
    print(
        "\nclient cpu: this process (HTTP client, signing, parsing); server cpu: the hashfed "
        "process (all threads) and its item-checking helper;\npg cpu: PostgreSQL backends of "
        "the bench database; other: the "
        "rest of the machine (a large figure means the phase competed for the cores);\n"
        "rec/srv-cpu-s: records per CPU-second of the server process; srv cpu-wait: time the "
        "server's threads were\nrunnable but waiting for a core (schedstat); srv peak RSS: "
        "VmHWM of the server so far.\n"
        f"load average (1 min) at the end: {m['loadavg_1m_at_end']:.2f}"
    )


def print_store_overhead(run: dict[str, Any]) -> None:
    """What pulling into the local store adds to the raw NDJSON pull (best round of each)."""
    best: dict[str, dict[str, Any]] = {}
    for p in run["phases"]:
        mode = p["phase"].removeprefix("pull ")
        if mode in ("ndjson", "store") and (
            mode not in best or p["client_cpu_s"] < best[mode]["client_cpu_s"]
        ):
            best[mode] = p
    if len(best) < 2:
        return
    raw, store = best["ndjson"], best["store"]
    cpu = store["client_us_per_record"] / raw["client_us_per_record"] - 1
    wall = store["seconds"] / raw["seconds"] - 1
    both = (store["client_cpu_s"] + store["server_cpu_s"]) / (
        raw["client_cpu_s"] + raw["server_cpu_s"]
    ) - 1
    print(
        f"\n{run['backend']}: the store pull adds {cpu:+.0%} client CPU per version "
        f"({raw['client_us_per_record']} -> {store['client_us_per_record']} us), {both:+.0%} "
        f"client + server CPU and {wall:+.0%} wall time ({raw['seconds']} -> "
        f"{store['seconds']} s) to the raw NDJSON pull (least client CPU of the rounds)"
    )


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    # SIGTERM cancels like Ctrl-C does, so the cleanup in `finally` blocks runs.
    task = asyncio.current_task()
    assert task is not None

    def terminate() -> None:
        args.terminated = True
        task.cancel()

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, terminate)
    log(f"generating {args.records:,} items")
    items = generate_items(args.records, args.seed)
    signing = measure_client_signing(batched(items, args.batch))
    log(f"client build+sign: {signing['records_per_s']:,} records/s")
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    runs = [await bench_backend(b, items, args) for b in backends]
    return {
        "machine": {**machine_info(), "loadavg_1m_at_end": os.getloadavg()[0]},
        "server_code": code_fingerprint(),
        "code": code_state(),
        "client_signing": signing,
        "runs": runs,
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=50_000, help="items per signed statement")
    parser.add_argument("--concurrency", type=int, default=2, help="push requests in flight")
    parser.add_argument(
        "--pull",
        default="both",
        help="pull phases: 'both' (json, ndjson) or a comma-separated list of "
        f"{', '.join(PULL_MODES)} (lines: NDJSON lines read, none decoded; store: into a "
        "fresh local store, as 'hashfed pull' does)",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="run the pull phases this many rounds (noise)"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--pg-admin-url",
        default=os.environ.get("HASHFED_TEST_POSTGRES_URL", DEFAULT_PG_ADMIN_URL),
        help="asyncpg URL of a PostgreSQL server allowed to CREATE/DROP DATABASE",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="record the server with py-spy during each phase (speedscope JSON in DIR) "
        "and print its hotspots; the figures then include py-spy's overhead",
    )
    args = parser.parse_args(argv)
    if args.records < 1 or args.batch < 1 or args.concurrency < 1 or args.repeat < 1:
        parser.error("--records, --batch, --concurrency and --repeat must be positive")
    try:
        pull_modes(args.pull)
    except argparse.ArgumentTypeError as err:
        parser.error(str(err))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # Started in the background by a script, we would inherit SIGINT ignored: take it
    # back, so that an interrupt always stops the server and drops the database.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        report = asyncio.run(main_async(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        log("interrupted; server stopped and database dropped")
        return 128 + (signal.SIGTERM if getattr(args, "terminated", False) else signal.SIGINT)
    if args.json:
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
