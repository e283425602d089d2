"""``hashfed hash`` and ``hashfed match``: hash local media, match it against the local store.

``hashfed hash`` exit statuses: 0 done; 1 some inputs could not be read
(each named on stderr; the others are hashed); 2 bad flags.

``hashfed match`` answers like grep, for shell pipelines:

- 0: something matched;
- 1: nothing matched, and every input was checked;
- 2: nothing matched but some input could not be read or hashed, or the
  command could not run (bad flags, no local store yet, an unreadable
  ``--hashes`` file).

Both work offline: ``match`` reads the store that ``hashfed pull`` fills and
never contacts the server.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import click
import orjson
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from clients.cli.context import (
    EXIT_FAILURE,
    EXIT_OK,
    Ctx,
    common_options,
    console,
    emit_json,
    out,
    pass_ctx,
)
from clients.matching.hashing import (
    PDQ_MIN_QUALITY,
    FileHashes,
    HashedSignal,
    hash_paths,
    iter_files,
)
from clients.store import StoreError
from federation.protocol.matching import Match, Query, default_threshold, parse_query
from federation.protocol.problems import HashfedError
from federation.protocol.taxonomy import DEFAULT_TAXONOMY

EXIT_MATCHED = 0
EXIT_NO_MATCH = 1
EXIT_TROUBLE = 2
LABEL_SEPARATOR = ";"
PUSH_CSV_HEADER = ("signal_type", "value", "labels")


def _warn(message: str) -> None:
    console.print(f"[yellow]warning:[/] {escape(message)}", soft_wrap=True, highlight=False)


def _fail(message: str, code: int) -> NoReturn:
    console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True, highlight=False)
    sys.exit(code)


def _literal_table(title: str | None, columns: Sequence[str], rows: list[list[Any]]) -> None:
    """A table on stdout; cells shown literally (file names may hold [markup]).

    Hash values and record ids are never cut (people copy them); on a terminal
    the other columns fold, into a file or a pipe the table is as wide as needed.
    """
    grid = Table(title=title)
    cells = [[Text("" if cell is None else str(cell)) for cell in row] for row in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    for column, width in zip(columns, widths, strict=True):
        whole = column in ("value", "record", "matched value")
        grid.add_column(column, no_wrap=whole, overflow="fold", min_width=min(width, 12))
    for row in cells:
        grid.add_row(*row)
    needed = sum(widths) + 3 * len(widths) + 1
    if out.is_terminal:
        out.print(grid)
    else:
        Console(file=out.file, width=max(needed, out.width), no_color=out.no_color).print(grid)


@contextmanager
def _file_progress(total: int, label: str) -> Iterator[Any]:
    """A progress callback drawing a bar on stderr (when it is a terminal)."""
    if not console.is_terminal or total < 2:
        yield None
        return
    bar = Progress(
        TextColumn(f"[bold]{label}[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("files"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    task = bar.add_task(label, total=total)

    def advance(_result: FileHashes) -> None:
        bar.advance(task)

    with bar:
        yield advance


def _hash_inputs(
    paths: Sequence[str], workers: int | None, label: str
) -> tuple[list[FileHashes], int]:
    """Hash every file under ``paths``; returns the results and how many inputs failed."""
    failures = 0

    def missing(message: str) -> None:
        nonlocal failures
        failures += 1
        _warn(f"skipped {message}")

    files = list(iter_files(paths, missing))
    results: list[FileHashes] = []
    with _file_progress(len(files), label) as progress:
        for result in hash_paths(files, workers=workers, progress=progress):
            if result.error is not None:
                failures += 1
                _warn(f"skipped {result.path}: {result.error}")
            for message in result.warnings:
                _warn(message)
            results.append(result)
    return results, failures


def _parse_labels(raw: str | None) -> tuple[str, ...]:
    if raw is None:
        return ()
    names = [n.strip() for n in raw.split(LABEL_SEPARATOR) if n.strip()]
    try:
        return DEFAULT_TAXONOMY.validate(names)
    except HashfedError as err:
        raise click.BadParameter(err.detail, param_hint="--labels") from None


workers_option = click.option(
    "--workers",
    type=click.IntRange(1, 256),
    help="Processes hashing in parallel (default: one per core)",
)


@click.command("hash")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option(
    "--csv", "as_csv", is_flag=True, help="CSV for 'hashfed push': signal_type,value,labels"
)
@click.option(
    "--labels",
    metavar="A;B",
    help="Labels to put on every line of --csv / --json output (';'-separated)",
)
@click.option(
    "--include-unreliable",
    is_flag=True,
    help=f"Also output PDQ hashes of quality below {PDQ_MIN_QUALITY} in --csv / --json",
)
@workers_option
@common_options
@pass_ctx
def hash_files(
    ctx: Ctx,
    paths: tuple[str, ...],
    as_csv: bool,
    labels: str | None,
    include_unreliable: bool,
    workers: int | None,
) -> None:
    """Compute the signals of files: PDQ and digests of images, MD5 of videos, URLs of lists.

    Images give pdq (with its quality; below 50 it is unreliable) and
    md5/sha1/sha256 of their bytes; videos give video_md5 of their bytes
    (vPDQ is not computed); a text file whose first line is an http(s) URL
    gives one normalised url per line; other files give md5/sha1/sha256.
    Directories are walked recursively; unreadable files are skipped with a
    warning. --csv and --json (JSON Lines) print one line per distinct signal,
    ready for 'hashfed push' (give --labels: push needs at least one).
    """
    label_set = _parse_labels(labels)
    if as_csv and ctx.as_json:
        raise click.UsageError("choose one of --csv and --json")
    results, failures = _hash_inputs(paths, workers, "hash")
    signals = [s for r in results for s in r.signals]
    if any(r.kind == "video" for r in results):
        console.print(
            "[yellow]note:[/] videos get video_md5 only; vPDQ is not computed here (the vpdq "
            "package needs FFmpeg's development libraries and is not installed)"
        )
    if as_csv or ctx.as_json:
        _emit_pushable(signals, label_set, include_unreliable, as_csv)
    else:
        rows = [
            [s.source, _kind_of(results, s), s.signal_type, s.value, _quality(s)] for s in signals
        ]
        _literal_table(None, ["file", "kind", "signal type", "value", "quality"], rows)
        if labels is None and signals:
            console.print("[dim]--csv or --json with --labels writes a file for 'hashfed push'[/]")
    sys.exit(EXIT_FAILURE if failures else EXIT_OK)


def _kind_of(results: list[FileHashes], signal: HashedSignal) -> str:
    for result in results:
        if signal.source == result.path or signal.source.startswith(result.path + ":"):
            return result.kind
    return ""


def _quality(signal: HashedSignal) -> str:
    if signal.quality is None:
        return ""
    return str(signal.quality) if signal.reliable else f"{signal.quality} (unreliable)"


def _emit_pushable(
    signals: list[HashedSignal], labels: tuple[str, ...], include_unreliable: bool, as_csv: bool
) -> None:
    seen: set[tuple[str, str]] = set()
    unreliable = 0
    lines: list[tuple[str, str]] = []
    for signal in signals:
        if not signal.reliable and not include_unreliable:
            unreliable += 1
            continue
        key = (signal.signal_type, signal.value)
        if key not in seen:  # push refuses a signal given twice
            seen.add(key)
            lines.append(key)
    if unreliable:
        _warn(
            f"left out {unreliable} PDQ hash(es) of quality below {PDQ_MIN_QUALITY} "
            "(--include-unreliable keeps them)"
        )
    if as_csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(PUSH_CSV_HEADER)
        joined = LABEL_SEPARATOR.join(labels)
        for signal_type, value in lines:
            writer.writerow((signal_type, value, joined))
    else:
        listed = list(labels)
        for signal_type, value in lines:
            item = {"signal_type": signal_type, "value": value, "labels": listed}
            sys.stdout.buffer.write(orjson.dumps(item) + b"\n")
    sys.stdout.flush()


# Matching


def _read_hashes(path: str) -> tuple[list[Query], int]:
    """Signals listed in a CSV (a signal_type and a value column) or JSON Lines file, or stdin."""
    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
        text = data.decode("utf-8-sig")
    except OSError as exc:
        _fail(f"{path}: {exc.strerror or exc}", EXIT_TROUBLE)
    except UnicodeDecodeError:
        _fail(f"{path}: not UTF-8 text", EXIT_TROUBLE)
    name = "<stdin>" if path == "-" else path
    queries: list[Query] = []
    bad = 0
    if text.lstrip().startswith("{"):
        rows: Iterator[tuple[int, Any]] = (
            (n, line) for n, line in enumerate(text.split("\n"), start=1) if line.strip()
        )
        for number, line in rows:
            try:
                item = orjson.loads(line)
                if not isinstance(item, dict):
                    raise ValueError("not a JSON object")
                queries.append(
                    parse_query(item.get("signal_type"), item.get("value"), f"{name}:{number}")
                )
            except (ValueError, HashfedError) as err:  # orjson's error is a ValueError
                bad += 1
                _warn(f"{name}:{number}: {getattr(err, 'detail', err)}")
        return queries, bad
    reader = csv.reader(text.splitlines())
    header = [h.strip().lower() for h in next(reader, [])]
    if "signal_type" not in header or "value" not in header:
        _fail(
            f"{name}: expected CSV with 'signal_type' and 'value' columns "
            "(as 'hashfed hash --csv' or 'hashfed export' write) or JSON Lines",
            EXIT_TROUBLE,
        )
    type_at, value_at = header.index("signal_type"), header.index("value")
    for number, row in enumerate(reader, start=2):
        if not any(cell.strip() for cell in row):
            continue
        try:
            cells = (row[type_at].strip(), row[value_at])
            queries.append(parse_query(*cells, f"{name}:{number}"))
        except IndexError:
            bad += 1
            _warn(f"{name}:{number}: expected {len(header)} fields, got {len(row)}")
        except HashfedError as err:
            bad += 1
            _warn(f"{name}:{number}: {err.detail}")
    return queries, bad


def _store_path(ctx: Ctx, store: Path | None) -> Path:
    if store is not None:
        return store
    try:
        return Path(ctx.profile.store).expanduser()
    except click.ClickException as err:
        _fail(f"{err.format_message()} (or name a store with --store)", EXIT_TROUBLE)


@click.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=str))
@click.option(
    "--hashes",
    "hashes_file",
    metavar="FILE",
    help="Match the signals listed in FILE (CSV with signal_type,value columns, or JSON "
    "Lines; '-' for stdin) instead of hashing files",
)
@click.option(
    "--threshold",
    type=click.IntRange(0, 256),
    default=default_threshold("pdq"),
    show_default=True,
    help="Largest PDQ Hamming distance that matches",
)
@click.option("--only-undisputed", is_flag=True, help="Leave out records flagged disputed")
@click.option(
    "--min-quality",
    type=click.IntRange(0, 100),
    default=PDQ_MIN_QUALITY,
    show_default=True,
    help="PDQ hashes of lower quality are not matched (unreliable)",
)
@click.option(
    "--store",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Local store to match against (default: the profile's)",
)
@click.option("--rebuild-index", is_flag=True, help="Build the PDQ index again from the store")
@workers_option
@common_options
@pass_ctx
def match(
    ctx: Ctx,
    paths: tuple[str, ...],
    hashes_file: str | None,
    threshold: int,
    only_undisputed: bool,
    min_quality: int,
    store: Path | None,
    rebuild_index: bool,
    workers: int | None,
) -> None:
    """Match files (or, with --hashes, listed signals) against the local store, offline.

    Files are hashed as 'hashfed hash' does. MD5/SHA-1/SHA-256, video MD5
    and URLs match exactly; PDQ matches within --threshold (Hamming
    distance, default 31). Each match shows its distance, the record's id,
    state (approved or disputed), labels and contributors; withdrawn and
    retracted records never match.

    Exit status, like grep: 0 something matched; 1 nothing matched; 2
    nothing matched and some input could not be checked, or the command
    could not run.
    """
    if bool(paths) == bool(hashes_file):
        raise click.UsageError("give files to match, or --hashes FILE (not both)")
    path = _store_path(ctx, store)
    failures = 0
    skipped_quality = 0
    if hashes_file is not None:
        queries, failures = _read_hashes(hashes_file)
    else:
        results, failures = _hash_inputs(paths, workers, "hash")
        queries = []
        for result in results:
            for signal in result.signals:
                if signal.quality is not None and signal.quality < min_quality:
                    skipped_quality += 1
                    _warn(
                        f"{signal.source}: PDQ quality {signal.quality} is below {min_quality}; "
                        "not matched (--min-quality 0 matches it anyway)"
                    )
                    continue
                queries.append(Query(signal.signal_type, signal.value, signal.source))

    from clients.matching.local import LocalMatcher  # numpy: only when matching

    def building(reason: str) -> None:
        console.print(f"[dim]building the PDQ index of {path} ({reason})…[/]")

    try:
        with LocalMatcher.open(path, rebuild=rebuild_index, on_build=building) as matcher:
            found = matcher.match(queries, threshold=threshold, only_undisputed=only_undisputed)
    except StoreError as err:
        _fail(str(err), EXIT_TROUBLE)
    matches = [m for per_query in found for m in per_query]
    if ctx.as_json:
        emit_json(
            {
                "matched": bool(matches),
                "checked": len(queries),
                "unreadable": failures,
                "unreliable": skipped_quality,
                "threshold": threshold,
                "matches": [m.to_json() for m in matches],
            }
        )
    else:
        _print_matches(matches, len(queries))
    if matches:
        sys.exit(EXIT_MATCHED)
    sys.exit(EXIT_TROUBLE if failures else EXIT_NO_MATCH)


def _print_matches(matches: list[Match], checked: int) -> None:
    if matches:
        rows = [
            [
                m.query.source,
                m.query.signal_type,
                m.distance,
                m.record.record,
                m.state,
                LABEL_SEPARATOR.join(m.record.labels),
                LABEL_SEPARATOR.join(m.record.contributors),
            ]
            for m in matches
        ]
        columns = ["input", "signal", "distance", "record", "state", "labels", "contributors"]
        _literal_table(None, columns, rows)
    console.print(f"{len(matches)} match(es) among {checked} signal(s) checked.")
