"""The ``hashfed`` command line, run as a real process against a running federation.

Subprocesses are started with ``asyncio.create_subprocess_exec``: the server
runs in the test's event loop, so a blocking ``subprocess.run`` would starve it.
Commands are written as a user types them and split with ``shlex``. Fixtures
set up profiles and members in-process (fast); the tests drive the CLI.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import signal
import stat
import sys
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from clients.client import FederationClient, Identity
from clients.errors import FederationError, ForbiddenRole, TransportError
from clients.profiles import Profile, ProfileStore
from clients.push import BatchPush, PushJournal, journal_path, plan_batches, read_inputs
from clients.sync import FederationClientSync
from federation.log.feed import log_size
from federation.protocol.keys import (
    generate_private_key,
    key_id,
    load_private_key,
    write_private_key,
)
from federation.protocol.statements import SignedStatement
from tests.conftest import Federation

HASHFED = str(Path(sys.executable).parent / "hashfed")
CLI_TIMEOUT_S = 120
LABELS = "recruitment;glorification"


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


class Cli:
    """Runs ``hashfed`` with its own HASHFED_HOME, in a working directory, as a shell would."""

    def __init__(self, home: Path, cwd: Path) -> None:
        self.home = home
        self.cwd = cwd
        self.env = {**os.environ, "HASHFED_HOME": str(home), "COLUMNS": "200", "NO_COLOR": "1"}
        self.env.pop("HASHFED_PROFILE", None)

    async def start(self, command: str, env: dict[str, str] | None = None) -> Any:
        return await asyncio.create_subprocess_exec(
            HASHFED,
            *shlex.split(command),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=self.cwd,
            env={**self.env, **(env or {})},
        )

    async def __call__(
        self, command: str, *, stdin: bytes | None = None, env: dict[str, str] | None = None
    ) -> Result:
        proc = await self.start(command, env)
        async with reaped(proc):
            out, err = await asyncio.wait_for(proc.communicate(stdin), CLI_TIMEOUT_S)
        assert proc.returncode is not None
        return Result(proc.returncode, out.decode(), err.decode())

    async def ok(self, command: str, *, stdin: bytes | None = None) -> Result:
        result = await self(command, stdin=stdin)
        assert result.code == 0, (command, result)
        return result


@contextlib.asynccontextmanager
async def reaped(proc: asyncio.subprocess.Process) -> AsyncIterator[asyncio.subprocess.Process]:
    """``proc``, killed if it still runs on the way out (a timeout, a failed check), and reaped.

    Its pipes are closed here, in the test's event loop: a process left behind
    would keep running, and its transport, collected during a later test once
    this loop is closed, would fail there with "Event loop is closed".
    """
    try:
        yield proc
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.communicate()  # drains stdout and stderr, and waits for the exit
        if proc.stdin is not None:
            proc.stdin.close()  # communicate() without input leaves it open


@dataclass
class Member:
    org: str
    key_file: Path

    @property
    def identity(self) -> Identity:
        return Identity(self.org, load_private_key(self.key_file))

    @property
    def key_id(self) -> str:
        return self.identity.key_id


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    work = tmp_path / "work"
    work.mkdir()
    return Cli(tmp_path / "home", work)


@pytest.fixture
def gov(fed: Federation, cli: Cli) -> str:
    """The default profile, 'gov', acting as the governance organisation."""
    store = ProfileStore(cli.home)
    key = fed.settings.governance_key_path()
    profile = Profile("gov", fed.url, fed.governance.org, str(key), str(cli.home / "gov.db"))
    store.add(profile, make_default=True)
    return "gov"


async def admit(
    fed: Federation, cli: Cli, org: str, roles: tuple[str, ...] = ("contributor", "consumer")
) -> Member:
    """Admit ``org`` with a fresh key file and give it a profile of its name (in-process)."""
    key_file = cli.cwd / f"{org}.key"
    private_key = generate_private_key()
    write_private_key(key_file, private_key)
    async with FederationClient(fed.url, fed.governance) as client:
        await client.admit_org(org, org.title(), roles, private_key.public_key())
    profile = Profile(org, fed.url, org, str(key_file), str(cli.home / f"{org}.db"))
    ProfileStore(cli.home).add(profile)
    return Member(org, key_file)


@pytest.fixture
async def acme(fed: Federation, cli: Cli, gov: str) -> Member:
    return await admit(fed, cli, "acme")


def md5(n: int) -> str:
    return f"{n:032x}"


def csv_file(path: Path, values: Sequence[str], extra: str = "") -> Path:
    lines = ["signal_type,value,labels", *(f"md5,{v},{LABELS}" for v in values)]
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


async def feed_records(fed: Federation) -> Counter[str]:
    """How many visible versions each record has in the feed."""
    seen: Counter[str] = Counter()
    cursor: str | None = None
    async with FederationClient(fed.url, fed.governance) as client:
        while True:
            page = await client.feed_page(cursor, limit=5000)
            seen.update(item["record"] for item in page["items"])
            cursor = page["next_cursor"]
            if not page["has_more"]:
                return seen


async def log_length(fed: Federation) -> int:
    async with fed.db.reading() as conn:
        return await log_size(conn)


def done_batches(journal_dir: Path) -> int:
    journals = list(journal_dir.glob("*.jsonl")) if journal_dir.exists() else []
    return journals[0].read_bytes().count(b'"kind":"done"') if journals else 0


# Keys and profiles


async def test_keys_generate_show_and_refuse_to_overwrite(cli: Cli) -> None:
    generated = await cli.ok("keys generate --out keys/acme.key")
    key_file = cli.cwd / "keys" / "acme.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    kid = key_id(load_private_key(key_file).public_key())
    assert f"key id      : {kid}" in generated.out
    assert "PRIVATE" not in generated.out + generated.err
    shown = (await cli.ok("keys show keys/acme.key.pub --json")).json()
    assert (shown["key_id"], shown["kind"]) == (kid, "public")
    assert (await cli.ok("keys show keys/acme.key --json")).json()["kind"] == "private"

    again = await cli("keys generate --out keys/acme.key")
    assert again.code == 1
    assert "not overwriting" in again.err and "--force" in again.err
    assert key_id(load_private_key(key_file).public_key()) == kid
    forced = (await cli.ok("keys generate --out keys/acme.key --force --json")).json()
    assert forced["key_id"] != kid
    assert forced["key_id"] == key_id(load_private_key(key_file).public_key())
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


async def test_governance_admits_a_member_who_makes_profiles(fed: Federation, cli: Cli) -> None:
    gov_key = fed.settings.governance_key_path()
    gov = f"profile add gov --server {fed.url} --org {fed.governance.org} --key {gov_key}"
    await cli.ok(gov)
    await cli.ok("keys generate --out acme.key")
    admitted = await cli.ok(
        "orgs add acme --name 'Acme Corp' --roles contributor,consumer --public-key acme.key.pub"
    )
    kid = key_id(load_private_key(cli.cwd / "acme.key").public_key())
    assert f"Admitted acme (Acme Corp) with roles consumer, contributor and key {kid}" in (
        admitted.out
    )

    add = f"profile add acme --server {fed.url} --org acme --key acme.key --check --json"
    added = (await cli.ok(add)).json()
    assert added["key_id"] == kid
    assert added["server_check"]["roles"] == ["consumer", "contributor"]
    assert added["store"] == str(cli.home / "stores" / "acme.db")
    assert added["key"] == str(cli.cwd / "acme.key")

    listing = (await cli.ok("profile list --json")).json()
    assert listing["default"] == "gov"
    assert {p["name"]: p["default"] for p in listing["profiles"]} == {"gov": True, "acme": False}

    # --check with a key the server does not know: exit 3 and nothing saved.
    await cli.ok("keys generate --out stranger.key")
    stranger = f"profile add stranger --server {fed.url} --org acme --key stranger.key --check"
    refused = await cli(stranger)
    assert refused.code == 3 and "not registered" in refused.err
    assert "stranger" not in (await cli.ok("profile list")).out


async def test_profiles_are_picked_by_flag_env_or_default(cli: Cli) -> None:
    """No server needed: which profile a command uses, and clear errors."""
    await cli.ok("keys generate --out a.key")
    await cli.ok("profile add gov --server http://127.0.0.1:9 --org governance --key a.key")
    await cli.ok("profile add acme --server https://hashfed.example/ --org acme --key a.key")
    assert (await cli.ok("profile show --json")).json()["name"] == "gov"  # the first is default
    assert (await cli.ok("--profile acme profile show --json")).json()["org"] == "acme"
    shown = (await cli.ok("profile show --profile acme --json")).json()
    assert shown["server"] == "https://hashfed.example"
    assert shown["key_id"] == key_id(load_private_key(cli.cwd / "a.key").public_key())
    by_env = await cli("profile show --json", env={"HASHFED_PROFILE": "acme"})
    assert by_env.json()["name"] == "acme"
    await cli.ok("profile use acme")
    assert "* │ acme" in (await cli.ok("profile list")).out

    unknown = await cli("--profile nope keys show")
    assert unknown.code == 1 and "no profile 'nope'" in unknown.err
    public = await cli("profile add x --server http://h --org acme --key a.key.pub")
    assert public.code == 1 and "not an unencrypted Ed25519 private key" in public.err
    bad_org = await cli("profile add x --server http://h --org ACME --key a.key")
    assert bad_org.code == 2 and "organisation id" in bad_org.err
    bad_url = await cli("profile add x --server hashfed.example --org acme --key a.key")
    assert bad_url.code == 2 and "base URL" in bad_url.err


# Governance


async def test_orgs_list_show_suspend_reinstate(fed: Federation, cli: Cli, acme: Member) -> None:
    orgs = {o["id"]: o for o in (await cli.ok("orgs list --json")).json()}
    assert orgs["acme"]["roles"] == ["consumer", "contributor"]
    assert [k["key_id"] for k in orgs["acme"]["keys"]] == [acme.key_id]
    listing = (await cli.ok("orgs list")).out
    assert "acme" in listing and acme.key_id in listing and "active keys" in listing
    shown = await cli.ok("orgs show acme")
    assert "contributor" in shown.out and acme.key_id in shown.out

    bad_role = await cli("orgs add newco --name N --roles contributor,boss --public-key x.pub")
    assert bad_role.code == 2 and "unknown: boss" in bad_role.err
    private = await cli("orgs add newco --name N --roles consumer --public-key acme.key")
    assert private.code == 1 and "PRIVATE key" in private.err

    csv_file(cli.cwd / "one.csv", [md5(1)])
    await cli.ok("orgs suspend acme --note audit")
    suspended = await cli("--profile acme push one.csv")
    assert suspended.code == 3
    assert "suspended" in suspended.err and "reinstate" in suspended.err
    await cli.ok("orgs reinstate acme")
    pushed = await cli.ok("--profile acme push one.csv")
    assert "accepted" in pushed.out and "Pushed in 1 batch" in pushed.out

    denied = await cli("--profile acme orgs list")
    assert denied.code == 3 and "lacks the role" in denied.err and "--profile" in denied.err


async def test_key_rotation_with_add_and_retire(fed: Federation, cli: Cli, acme: Member) -> None:
    await cli.ok("keys generate --out acme2.key")
    new_kid = (await cli.ok("keys add acme --public-key acme2.key.pub --json")).json()["key_id"]
    await cli.ok(f"profile add acme2 --server {fed.url} --org acme --key acme2.key")
    await cli.ok(f"keys retire acme {acme.key_id} --note rotated")
    csv_file(cli.cwd / "one.csv", [md5(7)])
    old = await cli("--profile acme push one.csv")
    assert old.code == 3 and "retired" in old.err and "hashfed keys generate" in old.err
    assert (await cli.ok("--profile acme2 push one.csv --json")).json()["accepted"] == 1
    shown = (await cli.ok("orgs show acme --json")).json()
    assert {k["key_id"]: k["status"] for k in shown["keys"]} == {
        acme.key_id: "retired",
        new_kid: "active",
    }


async def test_revoked_key_stops_the_next_push(fed: Federation, cli: Cli, acme: Member) -> None:
    unconfirmed = await cli(f"keys revoke acme {acme.key_id} --note 'laptop stolen'")
    assert unconfirmed.code == 2 and "--yes" in unconfirmed.err
    bad_id = await cli("keys revoke acme xyz --note n --yes")
    assert bad_id.code == 2 and "32 hexadecimal" in bad_id.err
    await cli.ok(f"keys revoke acme {acme.key_id} --note 'laptop stolen' --yes")
    csv_file(cli.cwd / "one.csv", [md5(3)])
    pushed = await cli("--profile acme push one.csv")
    assert pushed.code == 3
    assert f"key {acme.key_id} was revoked" in pushed.err
    assert "key-revoked" in pushed.err
    assert "hashfed keys generate" in pushed.err
    assert "Push stopped" in pushed.err


async def test_consumer_only_org_cannot_push(fed: Federation, cli: Cli, gov: str) -> None:
    await admit(fed, cli, "reader", roles=("consumer",))
    csv_file(cli.cwd / "one.csv", [md5(4)])
    pushed = await cli("--profile reader push one.csv")
    assert pushed.code == 3
    assert "lacks the role contributor" in pushed.err
    assert "forbidden-role" in pushed.err
    assert await feed_records(fed) == Counter()


# Pushing


async def test_push_refuses_bad_input_then_skips_it_then_reports_duplicates(
    fed: Federation, cli: Cli, acme: Member
) -> None:
    bad = f"md5,nothex,{LABELS}\nmd5,{md5(1)},incident\nsha1,{md5(2)},bogus\n"
    csv_file(cli.cwd / "good_and_bad.csv", [md5(n) for n in range(1, 6)], extra=bad)
    before = await log_length(fed)
    refused = await cli("--profile acme push good_and_bad.csv")
    assert refused.code == 1
    assert refused.out == ""
    lines = [line for line in refused.err.splitlines() if line.startswith("good_and_bad.csv:")]
    assert [line.split(":")[1] for line in lines] == ["7", "8", "9"]
    assert "md5 value must be 32 hexadecimal characters" in lines[0]
    assert "already appears at good_and_bad.csv:2" in lines[1]
    assert "sha1 value must be 40 hexadecimal characters" in lines[2]
    assert "nothing was sent" in refused.err and "--skip-invalid" in refused.err
    assert await log_length(fed) == before

    skipped = await cli("--profile acme push good_and_bad.csv --skip-invalid --json")
    assert skipped.code == 0, skipped
    summary = skipped.json()
    assert (summary["accepted"], summary["duplicate"], summary["refused"]) == (5, 0, 0)
    assert [(b["file"], b["line"]) for b in summary["invalid"]] == [
        ("good_and_bad.csv", 7),
        ("good_and_bad.csv", 8),
        ("good_and_bad.csv", 9),
    ]
    assert summary["batches"] == 1 and len(summary["statements"]) == 1
    assert not list((cli.home / "journal").rglob("*.jsonl")), "journal kept after success"

    again = await cli("--profile acme push good_and_bad.csv --skip-invalid --json")
    assert again.code == 0
    assert (again.json()["accepted"], again.json()["duplicate"]) == (0, 5)
    records = await feed_records(fed)
    assert len(records) == 5 and set(records.values()) == {1}


async def test_push_checks_labels_against_the_federations_own_taxonomy(
    fed: Federation, cli: Cli, acme: Member
) -> None:
    async with fed.client(fed.governance) as gov_client:
        await gov_client.update_policy(
            taxonomy={"recruitment": "Recruitment", "manifesto": "Attacker manifesto"}
        )
    path = cli.cwd / "custom.csv"
    path.write_text(
        "signal_type,value,labels\n"
        f"md5,{md5(1)},manifesto\n"  # only in this federation's taxonomy: good
        f"md5,{md5(2)},glorification\n"  # in the default taxonomy, not in this one: bad
    )
    before = await log_length(fed)
    refused = await cli("--profile acme push custom.csv")
    assert refused.code == 1, refused
    bad = [line for line in refused.err.splitlines() if line.startswith("custom.csv:")]
    assert len(bad) == 1 and bad[0].startswith("custom.csv:3:"), refused.err
    assert "glorification" in bad[0] and "manifesto" in bad[0]  # names the known labels
    assert await log_length(fed) == before

    pushed = await cli("--profile acme push custom.csv --skip-invalid --json")
    assert pushed.code == 0, pushed
    assert (pushed.json()["accepted"], pushed.json()["refused"]) == (1, 0)


async def test_push_falls_back_to_the_default_taxonomy_when_the_server_is_unreachable(
    fed: Federation, cli: Cli, acme: Member
) -> None:
    csv_file(cli.cwd / "offline.csv", [md5(1)], extra=f"md5,{md5(2)},manifesto\n")
    ProfileStore(cli.home).add(  # nothing listens on port 9 (discard)
        Profile("offline", "http://127.0.0.1:9", "acme", str(acme.key_file), str(cli.home / "o.db"))
    )
    result = await cli("--profile offline push offline.csv --dry-run")
    assert result.code == 1, result
    assert "could not read the federation's policy" in result.err
    assert "offline.csv:3:" in result.err and "manifesto" in result.err


async def test_push_jsonl_from_stdin_with_a_kept_journal(
    fed: Federation, cli: Cli, acme: Member
) -> None:
    body = b"".join(
        orjson.dumps({"signal_type": "md5", "value": md5(n), "labels": ["instruction"]}) + b"\n"
        for n in range(10)
    )
    no_format = await cli("--profile acme push -", stdin=body)
    assert no_format.code == 2 and "--format" in no_format.err
    push = "--profile acme push - --format jsonl --batch-size 3 --json"
    first = await cli(f"{push} --keep-journal", stdin=body)
    assert first.code == 0, first
    assert first.json()["accepted"] == 10 and first.json()["batches"] == 4
    [journal] = (cli.home / "journal" / "acme").glob("*.jsonl")
    assert stat.S_IMODE(journal.stat().st_mode) == 0o600
    # Same input, same batch size: every batch is already confirmed in the journal.
    before = await log_length(fed)
    resumed = (await cli.ok(push, stdin=body)).json()
    assert (resumed["resumed_batches"], resumed["accepted"]) == (4, 10)
    assert resumed["statements"] == first.json()["statements"]
    assert await log_length(fed) == before
    assert not journal.exists()


class LostAnswer:
    """Delivers a statement to the server, then loses the answer (a crash at the worst time)."""

    def __init__(self, client: FederationClient) -> None:
        self.client = client
        self.identity = client.identity

    def sign(self, payload: dict[str, Any]) -> SignedStatement:
        return self.client.sign(payload)

    async def send_statement(self, path: str, statement: SignedStatement) -> dict[str, Any]:
        await self.client.send_statement(path, statement)
        raise TransportError("connection reset before the answer arrived")


async def test_push_resends_a_signed_but_unconfirmed_batch_with_the_same_bytes(
    fed: Federation, cli: Cli, acme: Member
) -> None:
    data = csv_file(cli.cwd / "big.csv", [md5(n) for n in range(25)])
    parsed = read_inputs([data])
    path = journal_path(cli.home, "acme", parsed.digest, 10)
    async with FederationClient(fed.url, acme.identity) as client:
        with PushJournal.open(path) as journal:
            push = BatchPush(
                LostAnswer(client),  # type: ignore[arg-type]
                plan_batches(parsed.items, 10),
                concurrency=1,
                journal=journal,
            )
            with pytest.raises(TransportError):
                await push.run()
            delivered = journal.entries[0].statement.id
    assert len(await feed_records(fed)) == 10  # the server holds the first batch

    result = await cli("--profile acme push big.csv --batch-size 10 --json")
    assert result.code == 0, result
    summary = result.json()
    assert (summary["accepted"], summary["duplicate"]) == (25, 0)
    assert summary["statements"][0] == delivered
    records = await feed_records(fed)
    assert len(records) == 25 and set(records.values()) == {1}
    assert not path.exists()


async def test_interrupted_and_killed_pushes_resume_without_duplicates(
    fed: Federation, cli: Cli, acme: Member
) -> None:
    total = 500
    csv_file(cli.cwd / "many.csv", [md5(n) for n in range(total)])
    push = "--profile acme push many.csv --batch-size 2 --concurrency 1"
    journal_dir = cli.home / "journal" / "acme"

    async def stop_after(more: int, signum: int) -> bytes:
        target = done_batches(journal_dir) + more
        async with reaped(await cli.start(push)) as proc:
            for _ in range(3000):
                if done_batches(journal_dir) >= target:
                    break
                await asyncio.sleep(0.01)
            else:
                pytest.fail("the push never confirmed a batch")
            proc.send_signal(signum)
            _, err = await asyncio.wait_for(proc.communicate(), CLI_TIMEOUT_S)
        assert proc.returncode != 0, "the push finished before it could be interrupted"
        return bytes(err)

    # Ctrl-C: a clean stop that says how to resume.
    err = await stop_after(3, signal.SIGINT)
    assert b"run the same command again to resume" in err
    # A crash: no chance to clean up; the journal may end in a torn line.
    await stop_after(3, signal.SIGKILL)
    assert 0 < len(await feed_records(fed)) < total

    result = await cli(f"{push} --json")
    assert result.code == 0, result
    summary = result.json()
    assert (summary["accepted"], summary["duplicate"], summary["refused"]) == (total, 0, 0)
    assert summary["resumed_batches"] >= 6
    records = await feed_records(fed)
    assert len(records) == total and set(records.values()) == {1}


# The synchronous facade


async def test_sync_client_against_the_server(fed: Federation) -> None:
    member = await fed.admit("acme")
    item = {"signal_type": "md5", "value": md5(9), "labels": ["incident"]}

    def scenario() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        with FederationClientSync(fed.url, member, retries=0) as client:
            seen["me"] = client.me()
            seen["result"] = client.submit([item])
            seen["again"] = client.submit([item])
            seen["page"] = client.feed_page()
            seen["streamed"] = list(client.stream_feed())
            seen["record"] = client.get_record(seen["result"]["results"][0]["record"])
            try:
                client.list_orgs()
            except FederationError as err:
                seen["forbidden"] = err
        seen["closed"] = client
        with FederationClientSync(fed.url, fed.governance) as gov:
            seen["orgs"] = gov.list_orgs()
        return seen

    seen = await asyncio.to_thread(scenario)
    assert seen["me"]["org"] == "acme"
    assert seen["result"]["counts"]["accepted"] == 1
    assert seen["again"]["counts"]["duplicate"] == 1
    assert [i["record"] for i in seen["page"]["items"]] == [seen["record"]["id"]]
    assert seen["streamed"][-1]["kind"] == "end" and len(seen["streamed"]) == 2
    assert isinstance(seen["forbidden"], ForbiddenRole)
    assert "acme" in {o["id"] for o in seen["orgs"]}
    with pytest.raises(RuntimeError, match="closed"):
        seen["closed"].me()
