"""A member's journey through the real ``hashfed`` command line, against the real server.

``hashfed server init`` and ``hashfed server run`` start a federation on a
free port (SQLite with one worker, PostgreSQL with two; the harness in
``test_server_process.py``). Every organisation then works as a member
company would: its own ``HASHFED_HOME``, a key from ``hashfed keys
generate``, a profile checked against the server, and one ``hashfed``
subprocess per command. Covered:

- governance admits two members (keys 0600, profiles ``--check``-ed);
- member A pushes a CSV with good and bad lines: the bad ones are named by
  ``file:line`` and nothing is sent (the server's log does not grow); with
  ``--skip-invalid`` the good ones go;
- member B pulls and exports exactly A's good records (normalised);
- A withdraws one (the SDK's ``FederationClient.withdraw``: the command line
  has no verb for it); B's next pull brings the ``withdrawn`` tombstone,
  which ``export`` leaves out unless ``--include-retracted``;
- B's first pull of a 60,000-record list is SIGKILLed after some, not all,
  versions were committed; ``hashfed pull`` again resumes where it stopped
  and the store ends identical (export, status, indexes) to that of a store
  that pulled without interruption.

The helpers here (``federation``, ``Federation``, ``Member``, ``hashfed``)
are shared with ``test_governance_journey.py``.
"""

from __future__ import annotations

import hashlib
import json
import re
import signal
import sqlite3
import stat
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from clients.client import FederationClient, Identity
from federation.protocol.keys import load_private_key
from federation.protocol.signals import normalize_signal, record_id
from tests.e2e.test_server_process import HASHFED, Server, _env, running, server_init

pytestmark = pytest.mark.slow

CLI_TIMEOUT_S = 120.0
KILL_WINDOW_S = 90.0  # how long to wait for a pull to commit a part of the big list


# The command line


def cli_env(home: Path) -> dict[str, str]:
    """The environment of a member's ``hashfed``: no inherited HASHFED_*, its own home.

    A wide, colourless console so that messages are not wrapped mid-sentence.
    """
    return {**_env(), "HASHFED_HOME": str(home), "COLUMNS": "250", "NO_COLOR": "1"}


def hashfed(
    home: Path, *args: str, expect: int | None = 0, timeout: float = CLI_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """Run ``hashfed ARGS`` in ``home`` (also its working directory); check its exit status."""
    done = subprocess.run(
        [HASHFED, *args],
        capture_output=True,
        text=True,
        env=cli_env(home),
        cwd=home,
        timeout=timeout,
    )
    if expect is not None:
        assert done.returncode == expect, (
            f"hashfed {' '.join(args)} exited {done.returncode}, expected {expect}\n"
            f"--- stdout:\n{done.stdout}\n--- stderr:\n{done.stderr}"
        )
    return done


def parallel(*calls: Callable[[], Any]) -> list[Any]:
    """Run independent commands side by side (each ``hashfed`` takes seconds to start)."""
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        futures = [pool.submit(call) for call in calls]
        return [f.result() for f in futures]


@dataclass(frozen=True)
class Member:
    """One organisation's seat at the command line: its home, key, profile and local store."""

    org: str
    home: Path
    key: Path
    profile: str  # a profile in ``home``
    store: Path  # the profile's local store, as ``hashfed profile add`` reported it

    def run(
        self, *args: str, expect: int | None = 0, timeout: float = CLI_TIMEOUT_S
    ) -> subprocess.CompletedProcess[str]:
        return hashfed(self.home, "--profile", self.profile, *args, expect=expect, timeout=timeout)

    def json(self, *args: str, expect: int | None = 0, timeout: float = CLI_TIMEOUT_S) -> Any:
        """``hashfed ARGS --json``, parsed."""
        done = self.run(*args, "--json", expect=expect, timeout=timeout)
        try:
            return json.loads(done.stdout)
        except json.JSONDecodeError:
            pytest.fail(f"hashfed {' '.join(args)} --json printed no JSON:\n{done.stdout}")

    def popen(self, *args: str, log: Path) -> subprocess.Popen[bytes]:
        """``hashfed ARGS`` in the background, its output to ``log``."""
        with log.open("wb") as out:
            return subprocess.Popen(
                [HASHFED, "--profile", self.profile, *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                # A stuck command dumps its threads' stacks on SIGABRT (for diagnosis).
                env={**cli_env(self.home), "PYTHONFAULTHANDLER": "1"},
                cwd=self.home,
            )

    def pull(self) -> dict[str, Any]:
        result: dict[str, Any] = self.json("pull")
        return result

    def status(self) -> dict[str, Any]:
        """``hashfed status --json --offline``: the local store only."""
        result: dict[str, Any] = self.json("status", "--offline")
        return result

    def export_lines(self, *flags: str) -> list[str]:
        """``hashfed export --format jsonl FLAGS``: the raw lines, sorted."""
        done = self.run("export", "--format", "jsonl", *flags)
        return sorted(line for line in done.stdout.splitlines() if line.strip())

    def export(self, *flags: str) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.export_lines(*flags)]

    def identity(self) -> Identity:
        return Identity(self.org, load_private_key(self.key))


@dataclass
class Federation:
    """A running ``hashfed server run`` and its governance at the command line."""

    server: Server
    root: Path
    governance: Member

    @property
    def url(self) -> str:
        return self.server.url

    def add_profile(
        self,
        org: str,
        home: Path,
        key: Path,
        name: str,
        roles: Sequence[str],
        *,
        store: Path | None = None,
    ) -> Member:
        """``hashfed profile add NAME … --check``: the server must know the key as ``org``."""
        args = ["profile", "add", name, "--server", self.url, "--org", org, "--key", str(key)]
        if store is not None:
            args += ["--store", str(store)]
        added = json.loads(hashfed(home, *args, "--check", "--json").stdout)
        check = added["server_check"]
        assert check["org"] == org and sorted(check["roles"]) == sorted(roles), added
        return Member(org, home, key, name, Path(added["store"]))

    def admit(self, org: str, roles: Sequence[str]) -> Member:
        """The whole admission: the member makes a key, governance admits it, a checked profile."""
        home = self.root / org
        home.mkdir()
        key = home / f"{org}.key"
        made = json.loads(hashfed(home, "keys", "generate", "--out", str(key), "--json").stdout)
        public = Path(made["public_key_file"])
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, oct(key.stat().st_mode)
        assert public == key.with_name(key.name + ".pub") and public.exists()
        assert b"PRIVATE" not in public.read_bytes()
        admitted = self.governance.json(
            "orgs", "add", org, "--name", org.title(), "--roles", ",".join(roles),
            "--public-key", str(public),
        )  # fmt: skip
        assert admitted["type"] == "org.admit", admitted
        return self.add_profile(org, home, key, org, roles)

    def admit_all(self, *members: tuple[str, Sequence[str]]) -> list[Member]:
        """:meth:`admit` each ``(org, roles)``, side by side."""
        return parallel(*(lambda m=m: self.admit(*m) for m in members))

    async def log_size(self) -> int:
        """The server's log size (asked with the SDK, as governance)."""
        async with FederationClient(self.url, self.governance.identity(), retries=0) as client:
            return int((await client.me())["log_size"])


@asynccontextmanager
async def federation(tmp_path: Path, database_url: str) -> AsyncIterator[Federation]:
    """Found a federation (``hashfed server init``), serve it, and set up governance's profile."""
    data_dir = tmp_path / "var"
    server_init(data_dir, database_url)
    workers = 1 if database_url.startswith("sqlite") else 2
    with running(data_dir, database_url, workers) as server:
        await server.wait_healthy()
        root = tmp_path / "members"
        home = root / "governance"
        home.mkdir(parents=True)
        key = data_dir / "keys" / "governance.key"
        # Governance's own seat is a profile like any other (added before it is used).
        fed = Federation(server, root, Member("governance", home, key, "governance", home))
        fed.governance = fed.add_profile(
            "governance", home, key, "governance", ("admin", "auditor")
        )
        yield fed


async def withdraw(fed: Federation, member: Member, items: list[dict[str, str]]) -> dict[str, Any]:
    """A withdrawal through the SDK (the command line has no verb for it)."""
    async with FederationClient(fed.url, member.identity(), retries=0) as client:
        return await client.withdraw(items, reason="no longer confirmed")


def md5_of(seed: str) -> str:
    return hashlib.md5(seed.encode()).hexdigest()


# (1) push with bad lines, pull, withdraw

HEADER = "signal_type,value,labels,note,ref"
# Line number -> CSV line. Line 1 is the header.
GOOD_LINES = {
    2: "pdq,f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22,"
    "glorification;recruitment,,case-1187",
    3: "md5,D41D8CD98F00B204E9800998ECF8427E,instruction,manual page 3,case-1188",
    5: "sha1,da39a3ee5e6b4b0d3255bfef95601890afd80709,recruitment,,",
    6: "url,HTTPS://Example.COM/path/video,imminent_credible_threat,,",
    8: "sha256,e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855,incident,,",
    10: "video_md5,9e107d9d372bb6826bd81d3542a419d6,graphic_violence_against_defenceless,,",
}
BAD_LINES = {  # line -> (CSV line, what the reason must say)
    4: (
        "pdq,f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b2,glorification,,",
        "64 hexadecimal characters, got 63",
    ),
    7: (
        "sha256,2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae,beheading,,",
        "unknown label 'beheading'",
    ),
    9: ("sha512,cf83e1357eefb8bdf1542850d66d8007,recruitment,,", "unknown signal type 'sha512'"),
}


def hashes_csv() -> str:
    lines = {1: HEADER, **GOOD_LINES, **{n: text for n, (text, _) in BAD_LINES.items()}}
    return "".join(lines[n] + "\n" for n in sorted(lines))


def expected_records() -> dict[tuple[str, str], list[str]]:
    """A's good lines as the federation holds them: (signal_type, normalised value) -> labels."""
    expected = {}
    for text in GOOD_LINES.values():
        signal_type, value, labels = text.split(",")[:3]
        expected[signal_type, normalize_signal(signal_type, value)] = sorted(labels.split(";"))
    return expected


async def test_push_bad_lines_pull_and_withdraw(tmp_path: Path, database_url: str) -> None:
    async with federation(tmp_path, database_url) as fed:
        alpha, beta = fed.admit_all(("alpha", ("contributor", "consumer")), ("beta", ("consumer",)))
        (alpha.home / "hashes.csv").write_text(hashes_csv())
        log_size = await fed.log_size()

        # Bad lines are refused locally, each by file:line and reason; nothing is sent.
        refused = alpha.run("push", "hashes.csv", "--json", expect=1)
        named = {int(n) for n in re.findall(r"^hashes\.csv:(\d+): ", refused.stderr, re.M)}
        assert named == set(BAD_LINES), refused.stderr
        for line, (_, reason) in BAD_LINES.items():
            assert re.search(rf"^hashes\.csv:{line}: .*{re.escape(reason)}", refused.stderr, re.M)
        assert "nothing was sent" in refused.stderr
        report = json.loads(refused.stdout)
        assert (report["accepted"], report["batches"], report["statements"]) == (0, 0, [])
        assert [(i["file"], i["line"]) for i in report["invalid"]] == [
            ("hashes.csv", n) for n in sorted(BAD_LINES)
        ]
        assert await fed.log_size() == log_size  # the server saw nothing

        # --skip-invalid pushes the six good lines and still lists the bad ones.
        pushed = alpha.json("push", "hashes.csv", "--skip-invalid")
        assert (pushed["accepted"], pushed["duplicate"], pushed["refused"]) == (6, 0, 0), pushed
        assert [i["line"] for i in pushed["invalid"]] == sorted(BAD_LINES)
        assert await fed.log_size() > log_size

        # B pulls exactly A's good records.
        first = beta.pull()
        assert (first["versions"], first["new"], first["tombstones"]) == (6, 6, 0), first
        assert (first["held"], first["held_tombstones"]) == (6, 0), first
        expected = expected_records()
        held = beta.export()
        assert {(r["signal_type"], r["value"]): r["labels"] for r in held} == expected
        for r in held:
            assert r["state"] == "approved" and r["contributors"] == ["alpha"], r
            assert r["record"] == record_id(r["signal_type"], r["value"])
        assert beta.pull()["versions"] == 0  # up to date: nothing twice

        # A withdraws the md5; B's next pull brings the tombstone.
        md5 = normalize_signal("md5", GOOD_LINES[3].split(",")[1])
        before = next(r for r in held if r["value"] == md5)
        withdrawn = await withdraw(fed, alpha, [{"signal_type": "md5", "value": md5}])
        assert withdrawn["counts"] == {"accepted": 1, "duplicate": 0, "refused": 0}, withdrawn
        second = beta.pull()
        assert (second["versions"], second["new"], second["tombstones"]) == (1, 0, 1), second
        everything, live, status = parallel(
            lambda: beta.export("--include-retracted"), beta.export, beta.status
        )
        tombstone = next(r for r in everything if r["value"] == md5)
        assert tombstone["state"] == "withdrawn", tombstone
        assert tombstone["record"] == before["record"]
        assert tombstone["version"] == before["version"] + 1
        assert len(everything) == 6
        assert {(r["signal_type"], r["value"]) for r in live} == set(expected) - {("md5", md5)}
        assert (status["records"], status["tombstones"]) == (5, 1), status


# (2) a pull SIGKILLed mid-way, resumed

BIG = 60_000
WITHDRAWN = 10  # tombstones at the end of the feed, after the big list


def store_held(store: Path) -> int:
    """Records (tombstones included) committed in a local store, read without writing to it."""
    if not store.exists():
        return 0
    try:
        conn = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=1.0)
        try:
            row = conn.execute("SELECT coalesce(sum(records), 0) FROM counts").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:  # not created or migrated yet
        return 0
    return int(row[0])


def store_facts(store: Path) -> tuple[list[str], str]:
    """The store's index names and its integrity check."""
    conn = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        indexes = [
            str(name)
            for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND name NOT LIKE "
                "'sqlite_autoindex%' ORDER BY name"
            )
        ]
        integrity = str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()
    return indexes, integrity


def kill_pull_midway(member: Member, store: Path, total: int, server: Server) -> None:
    """Start ``hashfed pull`` and SIGKILL it once the store holds some, not all, records."""
    log = member.home / "killed-pull.log"
    started = time.monotonic()
    proc = member.popen("pull", log=log)
    seen, killed = 0, False
    try:
        while time.monotonic() - started < KILL_WINDOW_S and proc.poll() is None:
            seen = store_held(store)
            if 0 < seen < total:
                proc.send_signal(signal.SIGKILL)
                killed = True
                break
            time.sleep(0.002)
    finally:
        if proc.poll() is None and not killed:
            proc.send_signal(signal.SIGABRT)  # still running: its stacks go to the log
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        proc.wait(30)
    assert killed and proc.returncode == -signal.SIGKILL, (
        f"the pull was not killed mid-way: exit {proc.returncode} after "
        f"{time.monotonic() - started:.1f} s, the store held {seen} of {total} records\n"
        f"--- pull:\n{log.read_text(errors='replace')}\n--- server:\n{server.log[-5000:]}"
    )


async def test_pull_killed_midway_resumes_to_the_same_state(
    tmp_path: Path, database_url: str
) -> None:
    async with federation(tmp_path, database_url) as fed:
        alpha, beta = fed.admit_all(("alpha", ("contributor", "consumer")), ("beta", ("consumer",)))
        values = [md5_of(f"journey-{i}") for i in range(BIG)]
        big = alpha.home / "big.csv"
        big.write_text(
            "signal_type,value,labels\n" + "".join(f"md5,{v},recruitment\n" for v in values)
        )
        pushed = alpha.json("push", "big.csv")
        assert (pushed["accepted"], pushed["refused"]) == (BIG, 0), {
            k: v for k, v in pushed.items() if k != "statements"
        }
        withdrawn = await withdraw(
            fed, alpha, [{"signal_type": "md5", "value": v} for v in values[:WITHDRAWN]]
        )
        assert withdrawn["counts"]["accepted"] == WITHDRAWN, withdrawn["counts"]
        log_size = await fed.log_size()

        # B's first pull streams the whole list; SIGKILL lands after a partial commit.
        kill_pull_midway(beta, beta.store, BIG, fed.server)
        partial = beta.status()
        assert 0 < partial["records"] < BIG and partial["tombstones"] == 0, partial
        assert 0 < partial["position"] < log_size, partial
        assert store_facts(beta.store)[1] == "ok"

        # Pulling again resumes exactly there: nothing skipped, nothing applied twice.
        resumed = beta.pull()
        assert resumed["start_position"] == partial["position"], resumed
        assert resumed["skipped"] == 0, resumed
        assert resumed["new"] == BIG - partial["records"], resumed
        assert resumed["tombstones"] == WITHDRAWN and resumed["position"] == log_size, resumed

        # The same local state as a store that pulled without interruption.
        reference = fed.add_profile(
            "beta", beta.home, beta.key, "beta-uninterrupted", ("consumer",),
            store=beta.home / "uninterrupted.db",
        )  # fmt: skip
        whole = reference.pull()
        assert whole["versions"] == partial["records"] + resumed["versions"], (whole, resumed)
        assert whole["position"] == log_size

        exported, expected, live, mine, theirs = parallel(
            lambda: beta.export_lines("--include-retracted"),
            lambda: reference.export_lines("--include-retracted"),
            beta.export_lines,
            beta.status,
            reference.status,
        )
        assert len(exported) == BIG
        assert exported == expected
        assert {json.loads(line)["value"] for line in live} == set(values[WITHDRAWN:])
        fields = ("cursor", "position", "records", "tombstones", "counts", "last_log_size")
        assert {f: mine[f] for f in fields} == {f: theirs[f] for f in fields}
        assert (mine["records"], mine["tombstones"]) == (BIG - WITHDRAWN, WITHDRAWN)
        assert store_facts(beta.store) == store_facts(reference.store)
        assert "ix_records_id" in store_facts(beta.store)[0]
