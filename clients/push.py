"""Pushing submissions from files: parse, validate locally, batch, sign, journal, send.

The steps, each usable on its own from the SDK::

    parsed = read_inputs(["hashes.csv"])          # CSV or JSON Lines, validated
    if parsed.bad: ...                            # every bad line, with file:line
    batches = plan_batches(parsed.items, 5000)
    with PushJournal.open(journal_path(home, "acme", parsed.digest, 5000)) as journal:
        summary = await BatchPush(client, batches, journal=journal).run()

Items are checked with the server's own validators (the signal registry in
``federation.protocol.signals`` and a taxonomy), so what passes here is what
the server accepts. Pass the federation's taxonomy (``GET /v1/policy``, as
``hashfed push`` does); the default set is used otherwise.

Resuming without duplicating: each batch's statement is signed and written to
the journal *before* it is sent, and a done-marker with the server's answer is
written once that answer arrives. Re-running over the same inputs skips
batches already done and re-sends a signed-but-unconfirmed batch with the
same signed bytes; the server answers a repeated statement with its first
result, so nothing is counted or stored twice.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import orjson

from clients.client import FederationClient
from clients.errors import StatementStale
from federation.protocol.items import MAX_ITEMS_PER_STATEMENT, parse_submission
from federation.protocol.problems import PROBLEM_BASE, HashfedError
from federation.protocol.statements import (
    STATEMENT_MAX_AGE_S,
    Envelope,
    SignedStatement,
    StatementType,
    open_envelope,
)
from federation.protocol.taxonomy import DEFAULT_TAXONOMY, Taxonomy

try:  # POSIX: stop two pushes of the same input from sharing one journal
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_CONCURRENCY",
    "FORMATS",
    "MAX_BATCH_SIZE",
    "BadLine",
    "BatchPush",
    "InputItem",
    "JournalBusy",
    "ParsedInput",
    "PushInputError",
    "PushJournal",
    "PushSummary",
    "Refusal",
    "detect_format",
    "journal_path",
    "parse_csv",
    "parse_jsonl",
    "plan_batches",
    "push_items",
    "read_inputs",
    "validate_item",
]

FORMATS = ("csv", "jsonl")
EXTENSIONS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
STDIN = "-"
STDIN_NAME = "<stdin>"
DEFAULT_BATCH_SIZE = 50_000
MAX_BATCH_SIZE = MAX_ITEMS_PER_STATEMENT
DEFAULT_CONCURRENCY = 2
CSV_REQUIRED_COLUMNS = ("signal_type", "value", "labels")
CSV_OPTIONAL_COLUMNS = ("note", "ref")
LABEL_SEPARATOR = ";"
ITEM_MEMBERS = frozenset({*CSV_REQUIRED_COLUMNS, *CSV_OPTIONAL_COLUMNS})
SUBMISSIONS_PATH = "/v1/submissions"
JOURNAL_DIR = "journal"
JOURNAL_VERSION = 1
# A journaled statement older than this is signed afresh rather than re-sent:
# the server refuses statements older than STATEMENT_MAX_AGE_S.
RESIGN_AFTER_S = STATEMENT_MAX_AGE_S - 3600
_PRIVATE_DIR_MODE = 0o700
_PRIVATE_FILE_MODE = 0o600


class PushInputError(ValueError):
    """An input cannot be read at all (missing file, unknown format, stdin twice)."""


class JournalBusy(RuntimeError):
    """Another process holds the journal (the same push is running elsewhere)."""


@dataclass(frozen=True, slots=True)
class InputItem:
    """One valid input line: where it came from and the submission item it becomes."""

    source: str
    line: int
    record_id: str
    signal_type: str
    value: str  # normalised
    labels: tuple[str, ...]
    note: str | None = None
    ref: str | None = None

    @property
    def location(self) -> str:
        """``FILE:LINE`` of the input line."""
        return f"{self.source}:{self.line}"

    def wire(self) -> dict[str, Any]:
        """The item as it goes into a signed submissions statement."""
        item: dict[str, Any] = {
            "signal_type": self.signal_type,
            "value": self.value,
            "labels": list(self.labels),
        }
        if self.note is not None:
            item["note"] = self.note
        if self.ref is not None:
            item["ref"] = self.ref
        return item


@dataclass(frozen=True, slots=True)
class BadLine:
    """An input line that cannot be pushed, and why."""

    source: str
    line: int
    reason: str

    @property
    def location(self) -> str:
        """``FILE:LINE`` of the bad line."""
        return f"{self.source}:{self.line}"

    def __str__(self) -> str:
        return f"{self.location}: {self.reason}"

    def to_json(self) -> dict[str, Any]:
        """``{"file", "line", "reason"}``."""
        return {"file": self.source, "line": self.line, "reason": self.reason}


@dataclass
class ParsedInput:
    """Every input read and validated: good items in input order, bad lines, a content digest."""

    items: list[InputItem]
    bad: list[BadLine]
    digest: str  # hex SHA-256 over the formats and contents of the inputs, in order
    sources: list[str]


# Reading and validating


def detect_format(path: str, fmt: str | None = None) -> str:
    """The input format of ``path``: ``fmt`` if given, else from the file's extension."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise PushInputError(f"unknown format {fmt!r}; use one of: {', '.join(FORMATS)}")
        return fmt
    if path == STDIN:
        raise PushInputError("reading stdin ('-') needs --format csv or --format jsonl")
    found = EXTENSIONS.get(Path(path).suffix.lower())
    if found is None:
        raise PushInputError(
            f"{path}: cannot tell the format from the extension (.csv, .jsonl or .ndjson); "
            "pass --format csv or --format jsonl"
        )
    return found


def validate_item(raw: Mapping[str, Any], taxonomy: Taxonomy = DEFAULT_TAXONOMY) -> InputItem:
    """Check one submission item with the server's own rules; raises ``HashfedError``.

    The item has ``signal_type``, ``value``, ``labels`` (a list of label
    names) and, optionally, ``note`` (at most 2000 characters) and ``ref``
    (at most 256). The returned item carries the normalised value, the
    sorted labels and the record id; its ``source`` and ``line`` are empty.
    """
    checked = parse_submission(raw, taxonomy)
    return InputItem(
        source="",
        line=0,
        record_id=checked.record_id,
        signal_type=checked.signal_type,
        value=checked.value,
        labels=checked.labels,
        note=checked.note,
        ref=checked.ref,
    )


RawLine = tuple[int, dict[str, Any]]


def parse_csv(text: str, source: str) -> Iterator[RawLine | BadLine]:
    """Rows of a CSV text as raw items ``(line, item)``, or a :class:`BadLine` per bad row.

    The first non-blank row is the header: ``signal_type,value,labels`` and,
    optionally, ``note`` and ``ref``, in any order. Labels are separated by
    ``;``. Empty ``note``/``ref`` cells are left out. Blank rows are skipped.
    A CSV syntax error ends the file (its remaining lines are not read).
    """
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] | None = None
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield BadLine(
                source, start, f"CSV syntax error ({exc}); the rest of the file was not read"
            )
            return
        if not any(cell.strip() for cell in row):
            continue
        if header is None:
            header = [cell.strip().lower() for cell in row]
            problem = _header_problem(header)
            if problem:
                yield BadLine(source, start, problem)
                return
            continue
        if len(row) != len(header):
            yield BadLine(
                source,
                start,
                f"expected {len(header)} fields ({','.join(header)}), got {len(row)}; "
                "quote a value that holds a comma",
            )
            continue
        cells = dict(zip(header, row, strict=True))
        raw: dict[str, Any] = {
            "signal_type": cells["signal_type"].strip(),
            "value": cells["value"],
            "labels": [
                label.strip() for label in cells["labels"].split(LABEL_SEPARATOR) if label.strip()
            ],
        }
        for column in CSV_OPTIONAL_COLUMNS:
            cell = cells.get(column, "").strip()
            if cell:
                raw[column] = cell
        yield start, raw


def _header_problem(header: list[str]) -> str | None:
    expected = (
        f"the header must name the columns {','.join(CSV_REQUIRED_COLUMNS)} "
        f"(optionally also {', '.join(CSV_OPTIONAL_COLUMNS)})"
    )
    missing = [c for c in CSV_REQUIRED_COLUMNS if c not in header]
    unknown = [c for c in header if c not in ITEM_MEMBERS]
    repeated = sorted({c for c in header if header.count(c) > 1})
    if missing:
        return f"{expected}; missing: {', '.join(missing)}"
    if unknown:
        return f"{expected}; unknown column(s): {', '.join(repr(c) for c in unknown)}"
    if repeated:
        return f"{expected}; repeated column(s): {', '.join(repeated)}"
    return None


def parse_jsonl(text: str, source: str) -> Iterator[RawLine | BadLine]:
    """Lines of a JSON Lines text as raw items ``(line, item)``, or a :class:`BadLine`.

    Each non-blank line is one JSON object with the members of an item
    (``labels`` a JSON list of label names).
    """
    # Split on "\n" only: str.splitlines would also split on U+2028 and
    # friends, which JSON strings may hold, and so miscount lines.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            raw = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            yield BadLine(source, number, f"not valid JSON: {exc}")
            continue
        if not isinstance(raw, dict):
            yield BadLine(
                source, number, f"each line must be a JSON object, got {type(raw).__name__}"
            )
            continue
        yield number, raw


_PARSERS: dict[str, Callable[[str, str], Iterator[RawLine | BadLine]]] = {
    "csv": parse_csv,
    "jsonl": parse_jsonl,
}


def _decode(data: bytes, source: str) -> str | BadLine:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        return BadLine(source, line, "not UTF-8 text; save the file as UTF-8 and try again")


def read_inputs(
    paths: Sequence[str | Path],
    fmt: str | None = None,
    *,
    stdin: BinaryIO | None = None,
    taxonomy: Taxonomy = DEFAULT_TAXONOMY,
) -> ParsedInput:
    """Read and validate every input; nothing is sent.

    ``paths`` are files, or ``-`` for ``stdin`` (default: the process's
    standard input), which needs ``fmt``. A line whose signal already appears
    earlier in the inputs (same record id) is a bad line: it would be refused
    as a duplicate by the server, and its labels might contradict the first.
    Raises :class:`PushInputError` for an input that cannot be read at all.
    """
    digest = hashlib.sha256()
    items: list[InputItem] = []
    bad: list[BadLine] = []
    sources: list[str] = []
    seen: dict[str, int] = {}  # record id -> index in items (not a string per item: memory)
    formats = [detect_format(str(path), fmt) for path in paths]
    if sum(1 for path in paths if str(path) == STDIN) > 1:
        raise PushInputError("stdin ('-') can be read only once")
    for path, path_format in zip(paths, formats, strict=True):
        source, data = _read_source(str(path), stdin)
        sources.append(source)
        # Length-prefixed so that the digest tells apart splitting one content two ways.
        digest.update(f"{path_format}\0{len(data)}\0".encode())
        digest.update(data)
        text = _decode(data, source)
        if isinstance(text, BadLine):
            bad.append(text)
            continue
        for parsed in _PARSERS[path_format](text, source):
            if isinstance(parsed, BadLine):
                bad.append(parsed)
                continue
            line, raw = parsed
            try:
                item = validate_item(raw, taxonomy)
            except HashfedError as err:
                bad.append(BadLine(source, line, err.detail))
                continue
            item = replace(item, source=source, line=line)
            first = seen.get(item.record_id)
            if first is not None:
                bad.append(
                    BadLine(
                        source,
                        line,
                        f"{item.signal_type} {item.value} already appears at "
                        f"{items[first].location}; keep one line per signal",
                    )
                )
                continue
            seen[item.record_id] = len(items)
            items.append(item)
    return ParsedInput(items=items, bad=bad, digest=digest.hexdigest(), sources=sources)


def _read_source(path: str, stdin: BinaryIO | None) -> tuple[str, bytes]:
    if path == STDIN:
        return STDIN_NAME, (stdin if stdin is not None else sys.stdin.buffer).read()
    try:
        return path, Path(path).read_bytes()
    except FileNotFoundError:
        raise PushInputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise PushInputError(f"{path}: is a directory; name the files to push") from None
    except PermissionError:
        raise PushInputError(f"{path}: permission denied") from None


def plan_batches(items: Sequence[InputItem], batch_size: int) -> list[list[InputItem]]:
    """Split ``items`` into consecutive batches of at most ``batch_size``; deterministic."""
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise ValueError(f"batch size must be between 1 and {MAX_BATCH_SIZE}, got {batch_size}")
    return [list(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]


def _fingerprint(batch: Sequence[InputItem]) -> str:
    """Which items a batch holds, so a journal never resumes a different plan."""
    return hashlib.sha256("\n".join(i.record_id for i in batch).encode()).hexdigest()


# Journal


def journal_path(home: Path, profile: str, digest: str, batch_size: int) -> Path:
    """A push's journal: ``HOME/journal/PROFILE/<sha256 of digest + batch size>.jsonl``."""
    name = hashlib.sha256(f"{digest}\0batch_size={batch_size}".encode()).hexdigest()
    return home / JOURNAL_DIR / profile / f"{name}.jsonl"


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """A batch's signed statement as journaled, and its result once confirmed."""

    fingerprint: str
    statement: SignedStatement
    result: dict[str, Any] | None = None


class PushJournal:
    """An append-only JSON Lines file (mode 0600) of signed batches and their results.

    Lines are ``{"kind": "signed", "batch", "fingerprint", "statement_id",
    "envelope"}``, written and flushed to disk before the batch is sent, and
    ``{"kind": "done", "batch", "statement_id", "result"}`` once the server
    answered. A torn last line (a crash mid-write) is ignored. Use it as a
    context manager; it holds an exclusive lock while open.
    """

    def __init__(self, path: Path, fd: int, entries: dict[int, JournalEntry]) -> None:
        self.path = path
        self._fd: int | None = fd
        self.entries = entries

    @classmethod
    def open(cls, path: Path) -> PushJournal:
        """Open (creating if needed) and lock the journal at ``path``; load what it holds.

        Raises :class:`JournalBusy` if another process holds it.
        """
        path.parent.mkdir(parents=True, exist_ok=True, mode=_PRIVATE_DIR_MODE)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, _PRIVATE_FILE_MODE)
        try:
            os.fchmod(fd, _PRIVATE_FILE_MODE)
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise JournalBusy(
                        f"another 'hashfed push' of the same input is running (journal {path}); "
                        "wait for it to finish"
                    ) from None
            with open(fd, "rb", closefd=False) as handle:
                entries = _load_entries(handle.read())
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, entries)

    def __enter__(self) -> PushJournal:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _append(self, record: dict[str, Any]) -> None:
        if self._fd is None:
            raise RuntimeError("the journal is closed")
        os.write(self._fd, orjson.dumps(record) + b"\n")
        os.fsync(self._fd)

    def record_signed(self, batch: int, fingerprint: str, statement: SignedStatement) -> None:
        """Journal a batch's signed statement; call before sending it."""
        self._append(
            {
                "kind": "signed",
                "batch": batch,
                "fingerprint": fingerprint,
                "statement_id": statement.id,
                "envelope": statement.envelope().model_dump(),
            }
        )
        self.entries[batch] = JournalEntry(fingerprint, statement)

    def record_done(self, batch: int, statement_id: str, result: dict[str, Any]) -> None:
        """Journal the server's answer to a batch's statement."""
        self._append(
            {"kind": "done", "batch": batch, "statement_id": statement_id, "result": result}
        )
        entry = self.entries[batch]
        self.entries[batch] = JournalEntry(entry.fingerprint, entry.statement, result)

    def reset(self) -> None:
        """Forget everything journaled (the inputs no longer match it)."""
        if self._fd is None:
            raise RuntimeError("the journal is closed")
        os.ftruncate(self._fd, 0)
        self.entries.clear()

    def close(self) -> None:
        """Release the lock and close the file (kept on disk)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def delete(self) -> None:
        """Close and remove the journal file (after a fully confirmed push)."""
        self.close()
        self.path.unlink(missing_ok=True)


def _load_entries(data: bytes) -> dict[int, JournalEntry]:
    entries: dict[int, JournalEntry] = {}
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
            batch = int(record["batch"])
            if record["kind"] == "signed":
                statement = open_envelope(Envelope.model_validate(record["envelope"]))
                entries[batch] = JournalEntry(str(record["fingerprint"]), statement)
            elif record["kind"] == "done":
                entry = entries.get(batch)
                if entry is not None and entry.statement.id == record["statement_id"]:
                    entries[batch] = JournalEntry(
                        entry.fingerprint, entry.statement, dict(record["result"])
                    )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, HashfedError):
            continue  # a torn or foreign line: that batch is simply signed again
    return entries


# Sending


@dataclass(frozen=True, slots=True)
class Refusal:
    """An item the server refused, located in the input."""

    source: str
    line: int
    signal_type: str
    value: str
    problem: str  # the problem type's slug, e.g. "unknown-label"
    detail: str

    @property
    def location(self) -> str:
        """``FILE:LINE`` of the refused item's input line."""
        return f"{self.source}:{self.line}"

    def to_json(self) -> dict[str, Any]:
        """``{"file", "line", "signal_type", "value", "problem", "detail"}``."""
        return {
            "file": self.source,
            "line": self.line,
            "signal_type": self.signal_type,
            "value": self.value,
            "problem": self.problem,
            "detail": self.detail,
        }


@dataclass
class PushSummary:
    """What a push achieved, counted over every batch (journaled ones included)."""

    accepted: int = 0
    duplicate: int = 0
    refused: int = 0
    refusals: list[Refusal] = field(default_factory=list)
    invalid: list[BadLine] = field(default_factory=list)
    batches: int = 0
    resumed_batches: int = 0  # batches whose result came from the journal
    statements: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The summary as ``hashfed push --json`` prints it."""
        return {
            "accepted": self.accepted,
            "duplicate": self.duplicate,
            "refused": self.refused,
            "refusals": [r.to_json() for r in self.refusals],
            "invalid": [b.to_json() for b in self.invalid],
            "batches": self.batches,
            "resumed_batches": self.resumed_batches,
            "statements": self.statements,
        }


def _slug(problem_type: str) -> str:
    return problem_type.removeprefix(PROBLEM_BASE)


class BatchPush:
    """Sends planned batches, at most ``concurrency`` at a time, journaling each one.

    After :meth:`run` (even one that raised), :attr:`confirmed` holds the
    number of batches with a result, so a caller can report how far it got.
    """

    def __init__(
        self,
        client: FederationClient,
        batches: Sequence[Sequence[InputItem]],
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        journal: PushJournal | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.client = client
        self.batches = batches
        self.concurrency = concurrency
        self.journal = journal
        self.results: dict[int, tuple[str, dict[str, Any]]] = {}
        self.resumed = 0
        self.resigned = 0  # journaled statements signed again (stale, or another key)

    @property
    def confirmed(self) -> int:
        """How many batches have the server's result (from this run or the journal)."""
        return len(self.results)

    async def run(self, on_progress: Callable[[int], None] | None = None) -> PushSummary:
        """Send every batch not yet confirmed; return the summary over all batches.

        ``on_progress(n)`` is called with the item count of each batch once its
        result is known (journaled batches first). The first error (a typed
        :class:`~clients.errors.FederationError`) stops the push: batches in
        flight are cancelled and stay journaled, to be re-sent by the next run.
        """
        progress = on_progress or (lambda _n: None)
        fingerprints = [_fingerprint(batch) for batch in self.batches]
        if self.journal is not None and any(
            index >= len(self.batches) or entry.fingerprint != fingerprints[index]
            for index, entry in self.journal.entries.items()
        ):
            # Same content, different plan (e.g. validators changed): start afresh;
            # the server reports items it already holds as duplicates.
            self.journal.reset()
        todo: deque[int] = deque()
        for index, batch in enumerate(self.batches):
            entry = self.journal.entries.get(index) if self.journal else None
            if entry is not None and entry.result is not None:
                self.results[index] = (entry.statement.id, entry.result)
                self.resumed += 1
                progress(len(batch))
            else:
                todo.append(index)

        async def worker() -> None:
            while todo:
                index = todo.popleft()
                statement_id, result = await self._send(index, fingerprints[index])
                self.results[index] = (statement_id, result)
                progress(len(self.batches[index]))

        tasks = [asyncio.create_task(worker()) for _ in range(min(self.concurrency, len(todo)))]
        try:
            if tasks:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
                for task in tasks:
                    if task.done() and not task.cancelled() and task.exception() is not None:
                        task.result()  # re-raise the first failure
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return self._summary()

    def _statement(self, index: int, fingerprint: str) -> SignedStatement:
        entry = self.journal.entries.get(index) if self.journal else None
        if entry is not None and self._reusable(entry.statement):
            return entry.statement
        if entry is not None:
            self.resigned += 1
        return self._sign(index, fingerprint)

    def _sign(self, index: int, fingerprint: str) -> SignedStatement:
        payload = {
            "type": StatementType.SUBMISSIONS.value,
            "items": [item.wire() for item in self.batches[index]],
        }
        statement = self.client.sign(payload)
        if self.journal is not None:
            self.journal.record_signed(index, fingerprint, statement)
        return statement

    def _reusable(self, statement: SignedStatement) -> bool:
        identity = self.client.identity
        return (
            statement.org == identity.org
            and statement.key_id == identity.key_id
            and statement.created > time.time() - RESIGN_AFTER_S
        )

    async def _send(self, index: int, fingerprint: str) -> tuple[str, dict[str, Any]]:
        statement = self._statement(index, fingerprint)
        try:
            result = await self.client.send_statement(SUBMISSIONS_PATH, statement)
        except StatementStale:
            # The signer's clock or an old journal: sign again; items the first
            # statement already delivered come back as duplicates.
            self.resigned += 1
            statement = self._sign(index, fingerprint)
            result = await self.client.send_statement(SUBMISSIONS_PATH, statement)
        if self.journal is not None:
            self.journal.record_done(index, statement.id, result)
        return statement.id, result

    def _summary(self) -> PushSummary:
        summary = PushSummary(batches=len(self.batches), resumed_batches=self.resumed)
        for index in sorted(self.results):
            statement_id, result = self.results[index]
            batch = self.batches[index]
            summary.statements.append(statement_id)
            counts = result.get("counts", {})
            summary.accepted += int(counts.get("accepted", 0))
            summary.duplicate += int(counts.get("duplicate", 0))
            summary.refused += int(counts.get("refused", 0))
            for item_result in result.get("results", []):
                if item_result.get("status") != "refused":
                    continue
                position = int(item_result.get("index", -1))
                item = batch[position] if 0 <= position < len(batch) else None
                problem = item_result.get("problem") or {}
                summary.refusals.append(
                    Refusal(
                        source=item.source if item else "?",
                        line=item.line if item else 0,
                        signal_type=item.signal_type if item else "?",
                        value=item.value if item else "?",
                        problem=_slug(str(problem.get("type", ""))),
                        detail=str(problem.get("detail", "")),
                    )
                )
        return summary


async def push_items(
    client: FederationClient,
    items: Sequence[InputItem],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    concurrency: int = DEFAULT_CONCURRENCY,
    journal: PushJournal | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> PushSummary:
    """Push validated items in signed batches and summarise the server's answers.

    ``client`` must be open (``async with``). With a ``journal``, an
    interrupted push resumes without duplicating when called again with the
    same items and batch size.
    """
    push = BatchPush(
        client, plan_batches(items, batch_size), concurrency=concurrency, journal=journal
    )
    return await push.run(on_progress)
