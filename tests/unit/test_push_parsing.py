"""``clients.push``: reading CSV and JSON Lines, local validation, batching, the journal."""

from __future__ import annotations

import io
import stat
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from clients.client import Identity
from clients.errors import ForbiddenRole, StatementStale
from clients.push import (
    MAX_BATCH_SIZE,
    BatchPush,
    InputItem,
    JournalBusy,
    PushInputError,
    PushJournal,
    detect_format,
    journal_path,
    parse_csv,
    plan_batches,
    read_inputs,
    validate_item,
)
from federation.protocol.items import MAX_NOTE_CHARS, MAX_REF_CHARS
from federation.protocol.keys import generate_private_key
from federation.protocol.problems import HashfedError, Problem
from federation.protocol.statements import SignedStatement, sign_statement
from federation.protocol.taxonomy import DEFAULT_TAXONOMY
from federation.records.ingest import prepare

MD5 = "d41d8cd98f00b204e9800998ecf8427e"
MD5_B = "0cc175b9c0f1b6a831c399e269772661"
SHA1 = "da39a3ee5e6b4b0d3255bfef95601890afd80709"
HEADER = "signal_type,value,labels\n"


def write(tmp_path: Path, name: str, text: str | bytes) -> str:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return str(path)


def reasons(tmp_path: Path, name: str, text: str) -> list[str]:
    parsed = read_inputs([write(tmp_path, name, text)])
    return [str(b).removeprefix(str(tmp_path) + "/") for b in parsed.bad]


# Formats


def test_format_from_extension_or_flag() -> None:
    assert detect_format("a.csv") == "csv"
    assert detect_format("a.CSV") == "csv"
    assert detect_format("a.jsonl") == "jsonl"
    assert detect_format("a.ndjson") == "jsonl"
    assert detect_format("a.txt", "csv") == "csv"
    assert detect_format("-", "jsonl") == "jsonl"
    with pytest.raises(PushInputError, match="--format"):
        detect_format("-")
    with pytest.raises(PushInputError, match=r"a\.txt: cannot tell the format.*--format"):
        detect_format("a.txt")
    with pytest.raises(PushInputError, match="unknown format"):
        detect_format("a.csv", "xml")


def test_missing_file_and_stdin_twice(tmp_path: Path) -> None:
    with pytest.raises(PushInputError, match="no such file"):
        read_inputs([str(tmp_path / "nope.csv")])
    with pytest.raises(PushInputError, match="only once"):
        read_inputs(["-", "-"], "csv", stdin=io.BytesIO(b""))


# CSV


def test_csv_items_are_normalised_with_labels_and_optional_columns(tmp_path: Path) -> None:
    text = (
        "labels, value ,signal_type,note,ref\n"
        f"recruitment; glorification ;recruitment,{MD5.upper()},md5,seen on 3 sites,case-7\n"
        "\n"
        f'instruction,"  {SHA1}  ",sha1,,\n'
        'incident,"https://Example.com:443/a/../b#frag",url,"a note, with a comma",\n'
    )
    parsed = read_inputs([write(tmp_path, "in.csv", text)])
    assert parsed.bad == []
    first, second, third = parsed.items
    assert (first.line, first.value, first.labels) == (2, MD5, ("glorification", "recruitment"))
    assert first.wire() == {
        "signal_type": "md5",
        "value": MD5,
        "labels": ["glorification", "recruitment"],
        "note": "seen on 3 sites",
        "ref": "case-7",
    }
    assert second.line == 4
    assert second.wire() == {"signal_type": "sha1", "value": SHA1, "labels": ["instruction"]}
    assert third.value == "https://example.com/b"
    assert third.note == "a note, with a comma"
    assert third.location.endswith("in.csv:5")


def test_csv_bad_lines_have_file_line_and_reason(tmp_path: Path) -> None:
    text = (
        HEADER
        + f"md5,{MD5},recruitment\n"
        + "md5,xyz,recruitment\n"
        + "foo,abc,recruitment\n"
        + f"md5,{MD5_B},\n"
        + f"md5,{MD5_B},bogus;recruitment\n"
        + f"md5,{MD5_B}\n"
        + f"sha1,{SHA1},instruction,extra\n"
    )
    assert reasons(tmp_path, "in.csv", text) == [
        "in.csv:3: md5 value must be 32 hexadecimal characters, got 3",
        "in.csv:4: unknown signal type 'foo'; known types: md5, pdq, photodna, sha1, sha256, "
        "tmk_pdqf, url, video_md5",
        "in.csv:5: at least one label is required; known labels: "
        + ", ".join(DEFAULT_TAXONOMY.labels),
        "in.csv:6: unknown label 'bogus'; known labels: " + ", ".join(DEFAULT_TAXONOMY.labels),
        "in.csv:7: expected 3 fields (signal_type,value,labels), got 2; "
        "quote a value that holds a comma",
        "in.csv:8: expected 3 fields (signal_type,value,labels), got 4; "
        "quote a value that holds a comma",
    ]


def test_csv_header_is_checked(tmp_path: Path) -> None:
    [missing] = reasons(tmp_path, "a.csv", f"signal_type,value\nmd5,{MD5}\n")
    assert missing.startswith("a.csv:1: the header must name the columns signal_type,value,labels")
    assert missing.endswith("missing: labels")
    [unknown] = reasons(tmp_path, "b.csv", f"signal_type,value,labels,color\nmd5,{MD5},x,y\n")
    assert unknown.endswith("unknown column(s): 'color'")
    [repeated] = reasons(tmp_path, "c.csv", "signal_type,value,labels,value\n")
    assert repeated.endswith("repeated column(s): value")


def test_csv_blank_lines_bom_crlf_and_multiline_quotes_keep_line_numbers(tmp_path: Path) -> None:
    text = (
        "\ufeff\r\n"
        + HEADER.replace("\n", "\r\n")
        + ",,\r\n"
        + f"md5,{MD5},recruitment\r\n"
        + 'md5,"two\r\nlines",recruitment\r\n'
        + "md5,zz,recruitment\r\n"
    )
    parsed = read_inputs([write(tmp_path, "in.csv", text.encode())])
    assert [i.line for i in parsed.items] == [4]
    assert [(b.line, b.reason.split(" ")[0]) for b in parsed.bad] == [(5, "md5"), (7, "md5")]
    assert "control character" in parsed.bad[0].reason


def test_csv_syntax_error_stops_the_file_and_says_so(tmp_path: Path) -> None:
    text = HEADER + f"md5,{MD5},recruitment\n" + 'md5,"unterminated,recruitment\n'
    [bad] = read_inputs([write(tmp_path, "in.csv", text)]).bad
    assert bad.line == 3
    assert "CSV syntax error" in bad.reason
    assert "rest of the file was not read" in bad.reason


def test_not_utf8_is_reported_with_its_line(tmp_path: Path) -> None:
    data = (HEADER + f"md5,{MD5},recruitment\n").encode() + b"md5,\xff\xfe,recruitment\n"
    [bad] = read_inputs([write(tmp_path, "in.csv", data)]).bad
    assert (bad.line, bad.reason) == (3, "not UTF-8 text; save the file as UTF-8 and try again")


def test_note_and_ref_bounds(tmp_path: Path) -> None:
    ok_note, long_note = "n" * MAX_NOTE_CHARS, "n" * (MAX_NOTE_CHARS + 1)
    ok_ref, long_ref = "r" * MAX_REF_CHARS, "r" * (MAX_REF_CHARS + 1)
    text = (
        "signal_type,value,labels,note,ref\n"
        f"md5,{MD5},recruitment,{ok_note},{ok_ref}\n"
        f"md5,{MD5_B},recruitment,{long_note},\n"
        f"sha1,{SHA1},recruitment,,{long_ref}\n"
    )
    assert reasons(tmp_path, "in.csv", text) == [
        f"in.csv:3: 'note' is {MAX_NOTE_CHARS + 1} characters long; "
        f"at most {MAX_NOTE_CHARS} are allowed",
        f"in.csv:4: 'ref' is {MAX_REF_CHARS + 1} characters long; "
        f"at most {MAX_REF_CHARS} are allowed",
    ]


# JSON Lines


def test_jsonl_items_and_bad_lines(tmp_path: Path) -> None:
    lines = [
        orjson.dumps({"signal_type": "md5", "value": MD5, "labels": ["recruitment"], "ref": "x"}),
        b"",
        b"{not json",
        b"[1, 2]",
        orjson.dumps({"signal_type": "md5", "value": MD5_B, "labels": "recruitment"}),
        orjson.dumps({"signal_type": "md5", "value": MD5_B, "labels": [1]}),
        orjson.dumps({"signal_type": "md5", "value": MD5_B, "labels": ["incident"], "x": 1}),
        orjson.dumps({"signal_type": "md5", "labels": ["incident"]}),
        orjson.dumps({"signal_type": "md5", "value": MD5_B, "labels": ["incident"], "note": 5}),
        # U+2028 inside a JSON string must not shift the line numbers that follow.
        orjson.dumps({"signal_type": "md5", "value": MD5_B, "labels": ["x\u2028"]}),
        orjson.dumps({"signal_type": "sha1", "value": SHA1, "labels": ["incident"]}),
    ]
    parsed = read_inputs([write(tmp_path, "in.jsonl", b"\n".join(lines) + b"\n")])
    assert [(i.line, i.signal_type) for i in parsed.items] == [(1, "md5"), (11, "sha1")]
    assert parsed.items[0].ref == "x"
    bad = {b.line: b.reason for b in parsed.bad}
    assert sorted(bad) == [3, 4, 5, 6, 7, 8, 9, 10]
    assert bad[3].startswith("not valid JSON")
    assert bad[4] == "each line must be a JSON object, got list"
    assert bad[5].startswith("labels must be a list of label names, got the string")
    assert bad[6] == "'labels' must be a list of strings"
    assert bad[7].startswith("unknown member(s) in item: x;")
    assert bad[8] == "an item needs string members 'signal_type' and 'value'"
    assert bad[9] == "'note' must be a string"
    assert bad[10].startswith("unknown label")


def test_stdin_is_read_once_and_named(tmp_path: Path) -> None:
    data = (HEADER + f"md5,{MD5},recruitment\nmd5,bad,recruitment\n").encode()
    parsed = read_inputs(["-"], "csv", stdin=io.BytesIO(data))
    assert [i.location for i in parsed.items] == ["<stdin>:2"]
    assert [str(b) for b in parsed.bad] == [
        "<stdin>:3: md5 value must be 32 hexadecimal characters, got 3"
    ]
    assert parsed.sources == ["<stdin>"]


# Duplicates and digests


def test_duplicates_across_lines_and_files_are_bad_lines(tmp_path: Path) -> None:
    a = write(tmp_path, "a.csv", HEADER + f"md5,{MD5},recruitment\nmd5,{MD5.upper()},incident\n")
    b = write(
        tmp_path,
        "b.jsonl",
        orjson.dumps({"signal_type": "md5", "value": MD5, "labels": ["incident"]}).decode(),
    )
    parsed = read_inputs([a, b])
    assert len(parsed.items) == 1
    assert [str(x) for x in parsed.bad] == [
        f"{a}:3: md5 {MD5} already appears at {a}:2; keep one line per signal",
        f"{b}:1: md5 {MD5} already appears at {a}:2; keep one line per signal",
    ]


def test_digest_depends_on_contents_and_order_not_on_names(tmp_path: Path) -> None:
    one = HEADER + f"md5,{MD5},recruitment\n"
    two = HEADER + f"md5,{MD5_B},recruitment\n"
    a, b = write(tmp_path, "a.csv", one), write(tmp_path, "b.csv", two)
    renamed = write(tmp_path, "renamed.csv", one)
    assert read_inputs([a, b]).digest == read_inputs([renamed, b]).digest
    assert read_inputs([a, b]).digest != read_inputs([b, a]).digest
    assert read_inputs([a]).digest != read_inputs([b]).digest
    home = tmp_path / "home"
    digest = read_inputs([a]).digest
    assert journal_path(home, "p", digest, 10) != journal_path(home, "p", digest, 11)
    assert journal_path(home, "p", digest, 10).parent == home / "journal" / "p"


def test_validate_item_agrees_with_the_server(tmp_path: Path) -> None:
    """The client's verdict on each item is the server's (ingest.prepare)."""
    items: list[dict[str, Any]] = [
        {"signal_type": "md5", "value": MD5, "labels": ["recruitment"]},
        {"signal_type": "md5", "value": "nope", "labels": ["recruitment"]},
        {"signal_type": "pdq", "value": "f" * 64, "labels": ["incident", "incident"]},
        {"signal_type": "url", "value": "example.com", "labels": ["incident"]},
        {"signal_type": "sha1", "value": SHA1, "labels": []},
        {"signal_type": "sha256", "value": "a" * 64, "labels": ["nope"]},
        {"signal_type": "md5", "value": MD5_B, "labels": ["incident"], "note": "x" * 2001},
        {"signal_type": "md5", "value": MD5_B, "labels": ["incident"], "ref": "r" * 257},
        {"signal_type": "md5", "value": MD5_B, "labels": ["incident"], "other": 1},
        {"signal_type": 5, "value": MD5_B, "labels": ["incident"]},
    ]
    statement = SignedStatement(
        id="",
        type="submissions",
        signed_bytes=b"",
        signature=b"",
        payload={"type": "submissions", "items": items},
    )
    server = prepare(statement, DEFAULT_TAXONOMY)
    accepted_by_server = {item.position: item for item in server.items}
    for position, raw in enumerate(items):
        try:
            mine = validate_item(raw)
        except HashfedError as err:
            refusal = server.results[position]
            assert refusal is not None, raw
            assert refusal["problem"]["type"] == err.problem.uri, raw
            continue
        theirs = accepted_by_server[position]
        assert (mine.record_id, mine.value, mine.labels) == (
            theirs.record_id,
            theirs.value,
            theirs.labels,
        )


def test_validate_item_errors_carry_problem_types() -> None:
    with pytest.raises(HashfedError) as caught:
        validate_item({"signal_type": "md5", "value": MD5, "labels": ["nope"]})
    assert caught.value.problem is Problem.UNKNOWN_LABEL
    with pytest.raises(HashfedError) as caught:
        validate_item({"signal_type": "zip", "value": MD5, "labels": ["incident"]})
    assert caught.value.problem is Problem.UNKNOWN_SIGNAL_TYPE


# Batching


def make_items(count: int) -> list[InputItem]:
    return [
        validate_item({"signal_type": "md5", "value": f"{n:032x}", "labels": ["recruitment"]})
        for n in range(count)
    ]


def test_batches_are_consecutive_and_bounded() -> None:
    items = make_items(12)
    batches = plan_batches(items, 5)
    assert [len(b) for b in batches] == [5, 5, 2]
    assert [i for b in batches for i in b] == items
    assert plan_batches(items, 12) == [items]
    assert plan_batches([], 5) == []
    with pytest.raises(ValueError, match="between 1 and"):
        plan_batches(items, 0)
    with pytest.raises(ValueError, match="between 1 and"):
        plan_batches(items, MAX_BATCH_SIZE + 1)


# Journal and resumption (with a stand-in for the server)


class FakeServer:
    """Answers submissions like the server: first result again for a repeated statement."""

    def __init__(self, identity: Identity, fail_on_call: int | None = None) -> None:
        self.identity = identity
        self.calls: list[str] = []
        self.results: dict[str, dict[str, Any]] = {}
        self.held: set[str] = set()
        self.fail_on_call = fail_on_call
        self.stale_once = False

    def sign(self, payload: dict[str, Any]) -> SignedStatement:
        return sign_statement(
            payload, self.identity.private_key, key_id=self.identity.key_id, org=self.identity.org
        )

    async def send_statement(self, path: str, statement: SignedStatement) -> dict[str, Any]:
        assert path == "/v1/submissions"
        self.calls.append(statement.id)
        if self.fail_on_call is not None and len(self.calls) == self.fail_on_call:
            raise ForbiddenRole(Problem.FORBIDDEN_ROLE, "organisation lacks the role")
        if self.stale_once:
            self.stale_once = False
            raise StatementStale(Problem.STATEMENT_STALE, "too old")
        if statement.id in self.results:
            return self.results[statement.id]
        results = []
        for index, item in enumerate(statement.payload["items"]):
            key = item["value"]
            if item["labels"] == ["incident"]:
                results.append(
                    {
                        "index": index,
                        "status": "refused",
                        "problem": {"type": "urn:hashfed:problem:unknown-label", "detail": "no"},
                    }
                )
            else:
                results.append(
                    {"index": index, "status": "duplicate" if key in self.held else "accepted"}
                )
                self.held.add(key)
        counts = {
            s: sum(r["status"] == s for r in results) for s in ("accepted", "duplicate", "refused")
        }
        result = {"statement_id": statement.id, "counts": counts, "results": results}
        self.results[statement.id] = result
        return result


@pytest.fixture
def identity() -> Identity:
    return Identity("acme", generate_private_key())


async def test_push_counts_and_locates_refusals(tmp_path: Path, identity: Identity) -> None:
    refused = validate_item({"signal_type": "sha1", "value": SHA1, "labels": ["incident"]})
    items = [*make_items(5), replace(refused, source="in.csv", line=9)]
    server = FakeServer(identity)
    seen: list[int] = []
    summary = await BatchPush(server, plan_batches(items, 2), concurrency=3).run(seen.append)  # type: ignore[arg-type]
    assert (summary.accepted, summary.duplicate, summary.refused) == (5, 0, 1)
    assert sum(seen) == 6
    [refusal] = summary.refusals
    assert (refusal.location, refusal.problem, refusal.value) == ("in.csv:9", "unknown-label", SHA1)
    assert summary.batches == 3 and len(summary.statements) == 3
    assert summary.to_json()["refusals"][0]["problem"] == "unknown-label"


async def test_journal_resumes_with_the_same_signed_bytes(
    tmp_path: Path, identity: Identity
) -> None:
    batches = plan_batches(make_items(10), 2)
    path = tmp_path / "journal" / "p" / "x.jsonl"
    server = FakeServer(identity, fail_on_call=3)
    with PushJournal.open(path) as journal:
        push = BatchPush(server, batches, concurrency=1, journal=journal)  # type: ignore[arg-type]
        with pytest.raises(ForbiddenRole):
            await push.run()
        assert push.confirmed == 2
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    # Batch 2 was signed and journaled, then its send failed: it must be re-sent as is.
    unconfirmed = server.calls[2]
    server.fail_on_call = None
    with PushJournal.open(path) as journal:
        assert sorted(journal.entries) == [0, 1, 2]
        assert journal.entries[2].statement.id == unconfirmed
        assert journal.entries[2].result is None
        push = BatchPush(server, batches, concurrency=2, journal=journal)  # type: ignore[arg-type]
        summary = await push.run()
    assert server.calls.count(unconfirmed) == 2
    assert len(server.calls) == 3 + 3  # batches 2, 3, 4; 0 and 1 came from the journal
    assert (summary.accepted, summary.duplicate, summary.resumed_batches) == (10, 0, 2)
    assert summary.statements[2] == unconfirmed


async def test_journal_ignores_a_torn_line_and_a_changed_plan(
    tmp_path: Path, identity: Identity
) -> None:
    batches = plan_batches(make_items(4), 2)
    path = tmp_path / "j.jsonl"
    server = FakeServer(identity)
    with PushJournal.open(path) as journal:
        await BatchPush(server, batches, journal=journal).run()  # type: ignore[arg-type]
    with path.open("ab") as handle:
        handle.write(b'{"kind": "signed", "batch": 7, "envel')
    with PushJournal.open(path) as journal:
        assert sorted(journal.entries) == [0, 1]
        summary = await BatchPush(server, batches, journal=journal).run()  # type: ignore[arg-type]
    assert summary.resumed_batches == 2
    # The same journal with another batch size: the plan differs, so it starts afresh
    # and the server reports what it already holds as duplicates.
    with PushJournal.open(path) as journal:
        summary = await BatchPush(server, plan_batches(make_items(4), 3), journal=journal).run()  # type: ignore[arg-type]
    assert (summary.accepted, summary.duplicate, summary.resumed_batches) == (0, 4, 0)


async def test_stale_or_foreign_journaled_statements_are_signed_again(
    tmp_path: Path, identity: Identity
) -> None:
    batches = plan_batches(make_items(2), 2)
    path = tmp_path / "j.jsonl"
    old = FakeServer(Identity("acme", generate_private_key()), fail_on_call=1)
    with PushJournal.open(path) as journal, pytest.raises(ForbiddenRole):
        await BatchPush(old, batches, journal=journal).run()  # type: ignore[arg-type]
    server = FakeServer(identity)  # the profile's key changed since
    with PushJournal.open(path) as journal:
        push = BatchPush(server, batches, journal=journal)  # type: ignore[arg-type]
        summary = await push.run()
        assert journal.entries[0].statement.key_id == identity.key_id
    assert push.resigned == 1 and summary.accepted == 2
    server.stale_once = True
    with PushJournal.open(tmp_path / "k.jsonl") as journal:
        push = BatchPush(server, batches, journal=journal)  # type: ignore[arg-type]
        summary = await push.run()
    assert push.resigned == 1 and summary.duplicate == 2
    assert time.time() - journal.entries[0].statement.created < 60


def test_journal_is_locked_while_open(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    with PushJournal.open(path), pytest.raises(JournalBusy, match="running"):
        PushJournal.open(path)
    PushJournal.open(path).delete()
    assert not path.exists()


def test_csv_parser_is_usable_on_its_own() -> None:
    rows = list(parse_csv(HEADER + f"md5,{MD5},a;b\n", "x"))
    assert rows == [(2, {"signal_type": "md5", "value": MD5, "labels": ["a", "b"]})]
