"""What the benches share: the machine, server processes, PostgreSQL databases, py-spy.

Every bench here runs the real ``hashfed`` server as a subprocess in a process
group of its own (so a Ctrl-C reaches only the bench, which then stops the
server and drops its database), talks to it through :class:`FederationClient`,
and prints the machine it ran on, including the load average at the start and
at the end: the reference machine is shared and noisy.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from sqlalchemy.engine import make_url

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PG_ADMIN_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
SERVER_START_TIMEOUT_S = 120.0
SERVER_STOP_TIMEOUT_S = 15.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the machine


def machine_info() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(mem_kib / 2**20, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def code_state() -> str:
    """Which code ran: the commit, the uncommitted product files, and where it was imported from.

    Other engineers edit the tree while benches run; a figure means little
    without the code it was measured on.
    """
    import federation

    root = Path(federation.__file__).resolve().parents[1]
    commit, dirty = "?", ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=10, check=False,
        ).stdout.strip() or "?"  # fmt: skip
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "federation", "clients"],
            capture_output=True, text=True, timeout=10, check=False,
        ).stdout.split("\n")  # fmt: skip
        changed = [line[3:] for line in status if line.strip()]
        dirty = f" + uncommitted {', '.join(changed)}" if changed else ""
    return f"{root} at {commit}{dirty}"


def loadavg() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def machine_lines(machine: dict[str, Any], load_start: str, load_end: str) -> list[str]:
    return [
        f"machine: {machine['nproc']} CPU ({machine['cpu_model']}), {machine['memory_gib']} GiB "
        f"RAM, Python {machine['python']}, Linux {machine['kernel']}",
        f"load average (1/5/15 min): at start {load_start}; at end {load_end}",
        f"code: {code_state()}",
    ]


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (all its threads)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def descendants(pid: int) -> list[int]:
    """The live child processes of ``pid``, their children, and so on."""
    found: list[int] = []
    pending = [pid]
    while pending:
        parent = pending.pop()
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{parent}/task").iterdir():
                with contextlib.suppress(OSError):
                    kids = [int(k) for k in (task / "children").read_text().split()]
                    found.extend(kids)
                    pending.extend(kids)
    return found


def process_tree_cpu_s(pid: int) -> float:
    """CPU seconds of ``pid`` and its live descendants (a server's helper processes)."""
    return process_cpu_s(pid) + sum(process_cpu_s(child) for child in descendants(pid))


def machine_busy_cpu_s() -> float:
    """CPU seconds the whole machine spent busy (all cores)."""
    first = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    ticks = [int(x) for x in first[1:]]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
    return (sum(ticks[:8]) - idle) / CLOCK_TICKS


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def rss_peak_mib(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return 0.0


@dataclass
class CpuMeter:
    """Wall and CPU time of one phase: this process, the server, a child, the rest."""

    server_pid: int
    t0: float = 0.0
    own0: float = 0.0
    server0: float = 0.0
    children0: float = 0.0
    machine0: float = 0.0

    def __enter__(self) -> CpuMeter:
        self.t0 = time.perf_counter()
        self.own0 = time.process_time()
        self.server0 = process_tree_cpu_s(self.server_pid)
        self.children0 = children_cpu_s()
        self.machine0 = machine_busy_cpu_s()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.t0
        self.own_cpu_s = time.process_time() - self.own0
        self.server_cpu_s = process_tree_cpu_s(self.server_pid) - self.server0
        self.children_cpu_s = children_cpu_s() - self.children0
        busy = machine_busy_cpu_s() - self.machine0
        self.other_cpu_s = max(busy - self.own_cpu_s - self.server_cpu_s - self.children_cpu_s, 0.0)


# ---------------------------------------------------------------- statistics


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (no interpolation: p99 of 3,000 is the 2,970th value)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5 - 1e-9)))
    return ordered[rank - 1]


def latency_summary(seconds: Sequence[float], wall: float) -> dict[str, float]:
    return {
        "n": len(seconds),
        "median_ms": statistics.median(seconds) * 1000,
        "p90_ms": percentile(seconds, 90) * 1000,
        "p99_ms": percentile(seconds, 99) * 1000,
        "max_ms": max(seconds) * 1000,
        "per_s": len(seconds) / wall if wall else 0.0,
    }


# ---------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def venv_tool(name: str) -> str:
    for candidate in (Path(sys.executable).parent / name, REPO / ".venv" / "bin" / name):
        if candidate.exists():
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} not found (install it into the venv)")
    return found


def hashfed_command() -> list[str]:
    return [venv_tool("hashfed")]


def child_env(**extra: str) -> dict[str, str]:
    """Our environment without HASHFED_* (the flags say everything), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HASHFED_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def spawn(
    args: Sequence[str],
    log_path: Path,
    env: dict[str, str] | None = None,
    stdout_path: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``args`` in a process group of its own; stderr (and stdout unless
    ``stdout_path`` is given) appended to ``log_path``."""
    with log_path.open("ab") as err, (stdout_path or log_path).open("ab") as out:
        return subprocess.Popen(
            list(args),
            stdout=out,
            stderr=err,
            env=env or child_env(),
            start_new_session=True,
        )


def stop_process_group(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Signal the group (the server drains), then SIGKILL what is left."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    try:
        process.wait(SERVER_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def file_tail(path: Path, chars: int = 3000) -> str:
    with contextlib.suppress(OSError):
        return path.read_text(errors="replace")[-chars:]
    return ""


async def run_checked(
    args: Sequence[str], log_path: Path, env: dict[str, str] | None = None
) -> int:
    """Run a command to completion (stopped if we are cancelled); returns its exit status."""
    process = spawn(args, log_path, env)
    try:
        return await asyncio.to_thread(process.wait)
    finally:
        stop_process_group(process)


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid


async def server_init(data_dir: Path, database_url: str, log_path: Path) -> None:
    """``hashfed server init``: migrate, found the federation (idempotent)."""
    flags = ["--data-dir", str(data_dir), "--database-url", database_url]
    code = await run_checked([*hashfed_command(), "server", "init", *flags], log_path)
    if code != 0:
        raise RuntimeError(f"hashfed server init exited with {code}:\n{file_tail(log_path)}")


@contextlib.asynccontextmanager
async def running_server(
    data_dir: Path, database_url: str, log_path: Path
) -> AsyncIterator[Server]:
    """``hashfed server run`` on a free port until the block exits."""
    port = free_port()
    flags = ["--data-dir", str(data_dir), "--database-url", database_url]
    address = ["--host", "127.0.0.1", "--port", str(port)]
    process = spawn([*hashfed_command(), "server", "run", *flags, *address], log_path)
    server = Server(process, f"http://127.0.0.1:{port}", log_path)
    try:
        await _wait_healthy(server)
        yield server
    finally:
        stop_process_group(process)


async def _wait_healthy(server: Server) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{file_tail(server.log_path)}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{server.url}/healthz") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"server not healthy after {SERVER_START_TIMEOUT_S} s")


def install_sigterm() -> None:
    """SIGTERM cancels the main task like Ctrl-C does, so every ``finally`` runs."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)


# ---------------------------------------------------------------- PostgreSQL


async def pg_connect(url: str) -> asyncpg.Connection:
    parsed = make_url(url)
    return await asyncpg.connect(
        host=parsed.host or "127.0.0.1",
        port=parsed.port or 5432,
        user=parsed.username,
        password=parsed.password,
        database=parsed.database or "postgres",
    )


async def pg_execute(admin_url: str, sql: str) -> Any:
    conn = await pg_connect(admin_url)
    try:
        return await conn.fetch(sql)
    finally:
        await conn.close()


def pg_database_url(admin_url: str, name: str) -> str:
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


async def pg_create(admin_url: str, prefix: str) -> str:
    name = f"{prefix}_{secrets.token_hex(5)}"
    await pg_execute(admin_url, f'CREATE DATABASE "{name}"')
    log(f"created PostgreSQL database {name}")
    return name


async def pg_drop(admin_url: str, name: str) -> None:
    # Shielded: a Ctrl-C while dropping must not leave the database behind.
    await asyncio.shield(pg_execute(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    log(f"dropped PostgreSQL database {name}")


async def pg_exists(admin_url: str, name: str) -> bool:
    rows = await pg_execute(admin_url, f"SELECT 1 FROM pg_database WHERE datname = '{name}'")
    return bool(rows)


# ---------------------------------------------------------------- py-spy


@contextlib.asynccontextmanager
async def py_spy(pid: int, out: Path, rate: int = 100) -> AsyncIterator[None]:
    """Sample ``pid`` (collapsed stacks in ``out``) while the block runs."""
    args = [venv_tool("py-spy"), "record", "--pid", str(pid), "--rate", str(rate),
            "--nonblocking", "--format", "raw", "--output", str(out)]  # fmt: skip
    recorder = spawn(args, out.with_suffix(".log"))
    await asyncio.sleep(1.0)  # py-spy attaches
    try:
        yield
    finally:
        if recorder.poll() is None:
            recorder.send_signal(signal.SIGINT)  # py-spy writes the file on SIGINT
        try:
            await asyncio.to_thread(recorder.wait, 120)
        except subprocess.TimeoutExpired:
            stop_process_group(recorder)


@dataclass
class Hotspots:
    samples: int = 0
    self_pct: list[tuple[str, float]] = field(default_factory=list)
    inclusive_pct: list[tuple[str, float]] = field(default_factory=list)


def collapsed_hotspots(path: Path, own: Sequence[str], top: int = 20) -> Hotspots:
    """Top functions of a py-spy ``raw`` profile: by self samples, and inclusive for frames
    whose file path starts with one of ``own`` (e.g. ``clients/``), once per sample."""
    self_w: dict[str, int] = defaultdict(int)
    incl_w: dict[str, int] = defaultdict(int)
    total = 0
    if not path.exists():
        return Hotspots()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        self_w[_short(frames[-1])] += count
        seen = set()
        for frame in frames:
            if any(f"({m}" in frame or f"/{m}" in frame for m in own):
                name = _short(frame, with_line=False)
                if name not in seen:
                    seen.add(name)
                    incl_w[name] += count

    def ranked(weights: dict[str, int]) -> list[tuple[str, float]]:
        best = sorted(weights.items(), key=lambda kv: -kv[1])[:top]
        return [(name, 100 * w / total) for name, w in best]

    return Hotspots(total, ranked(self_w), ranked(incl_w))


def _short(frame: str, with_line: bool = True) -> str:
    """``func (path/to/file.py:12)`` → ``func (file.py:12)``."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    file, _, line = where.rpartition(":")
    parts = Path(file).parts
    shown = "/".join(parts[-2:]) if parts else where
    return f"{name} ({shown}:{line})" if with_line and line else f"{name} ({shown})"


def print_hotspots(title: str, hot: Hotspots) -> None:
    print(f"\n{title}: {hot.samples} samples")
    print("  by self time (where the samples landed):")
    for name, pct in hot.self_pct:
        print(f"    {pct:5.1f} %  {name}")
    print("  project functions, inclusive:")
    for name, pct in hot.inclusive_pct:
        print(f"    {pct:5.1f} %  {name}")
