"""``hashfed pull``, ``hashfed status`` and ``hashfed export``: the member's local copy.

Exit statuses: 0 done; 1 the local store cannot be used (locked by another
pull, bound to another server, missing); 3 the server refused, could not be
reached, broke off mid-pull, sent a malformed item or no longer honours the
store's cursor (each says what to do next).
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, NoReturn

import click
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from clients import sync_feed
from clients.cli.context import (
    EXIT_FAILURE,
    EXIT_SERVER,
    Ctx,
    async_command,
    common_options,
    console,
    emit_json,
    out,
    pass_ctx,
    table,
)
from clients.errors import FederationError
from clients.store import (
    EXPORT_FORMATS,
    LocalStore,
    StoreError,
    StoreSummary,
    normalize_server,
    write_csv,
    write_jsonl,
)
from clients.sync_feed import DEFAULT_PAGE_SIZE, CursorRejected, PullResult, SyncError
from clients.verify import HistoryChanged, UntrustedCheckpoint
from federation.log.feed import MAX_PAGE, decode_cursor
from federation.protocol.problems import HashfedError
from federation.protocol.signals import SIGNAL_TYPES

PULL_TIMEOUT_S = 600.0  # one NDJSON request carries up to 100,000 versions
STATUS_TIMEOUT_S = 5.0  # status must stay quick when the server is away


def _fail(message: str, code: int) -> NoReturn:
    console.print(f"[bold red]error:[/] {message}")
    sys.exit(code)


def _store_path(ctx: Ctx) -> Path:
    return Path(ctx.profile.store).expanduser()


@contextlib.contextmanager
def _progress_bar(enabled: bool) -> Iterator[Any]:
    """A progress callback for :func:`clients.sync_feed.pull` drawing a bar on stderr."""
    if not enabled:
        yield None
        return
    bar = Progress(
        TextColumn("[bold]pull[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("log entries · {task.fields[versions]:,} versions"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )
    task = bar.add_task("pull", total=None, versions=0)

    def update(result: PullResult) -> None:
        # The bar walks log positions (the log also holds statements and
        # versions not shown to consumers), so it ends exactly at the log size.
        total = max(result.log_size - result.start_position, 0)
        done = min(max(result.position - result.start_position, 0), total)
        bar.update(task, total=total, completed=done, versions=result.versions)

    with bar:
        yield update


def _summary_line(result: PullResult, path: Path) -> str:
    held = (
        f"The store holds {result.held:,} records (+{result.held_tombstones:,} tombstones) "
        f"in {path}."
    )
    if not result.versions:
        return f"Up to date at log position {result.position:,}. {held}"
    rate = f" ({result.versions / result.seconds:,.0f}/s)" if result.seconds > 0 else ""
    mode = "streamed" if result.streamed else "paged"
    return (
        f"Pulled {result.versions:,} versions in {result.seconds:.1f} s{rate}, {mode}: "
        f"{result.new:,} new records, {result.updated:,} updated, "
        f"{result.tombstones:,} tombstones"
        + (f", {result.skipped:,} already held" if result.skipped else "")
        + f".\n{held}"
    )


@click.command()
@click.option(
    "--page-size",
    type=click.IntRange(1, MAX_PAGE),
    default=DEFAULT_PAGE_SIZE,
    show_default=True,
    help="Versions per JSON page; the pull streams instead when further behind than this",
)
@click.option("--no-stream", is_flag=True, help="Read JSON pages only (no NDJSON stream)")
@click.option(
    "--resync",
    is_flag=True,
    help="Discard the local copy and pull everything again (when the server no longer "
    "honours the store's cursor)",
)
@common_options
@pass_ctx
@async_command
async def pull(ctx: Ctx, page_size: int, no_stream: bool, resync: bool) -> None:
    """Sync the federation's feed into the local store, incrementally.

    Follows the feed cursor from where the last pull stopped; an interrupted
    pull resumes exactly there. Tombstones (withdrawn or retracted records)
    are kept in the store with their state.
    """
    path = _store_path(ctx)
    try:
        store = LocalStore.open(path)
    except StoreError as err:
        _fail(str(err), EXIT_FAILURE)
    with store, _progress_bar(console.is_terminal) as progress:
        async with ctx.client(timeout_s=PULL_TIMEOUT_S) as client:
            try:
                result = await sync_feed.pull(
                    client,
                    store,
                    progress=progress,
                    page_size=page_size,
                    stream=not no_stream,
                    resync=resync,
                    log_key=ctx.profile.log_key,
                )
            except StoreError as err:
                _fail(str(err), EXIT_FAILURE)
            except (HistoryChanged, UntrustedCheckpoint) as err:
                _fail(
                    f"{err}. The local store was not changed; tell the federation's auditors "
                    "and do not act on this server's data until it is explained",
                    EXIT_SERVER,
                )
            except SyncError as err:
                if ctx.as_json:
                    emit_json({**err.result.as_dict(), "error": err.detail})
                if err.result.versions:
                    console.print(
                        f"[yellow]{err.result.versions:,} versions before the problem "
                        "are committed.[/]"
                    )
                if isinstance(err, CursorRejected):
                    console.print("[yellow]the server no longer honours this store's cursor[/]")
                _fail(err.detail, EXIT_SERVER)
    if result.log_key_first_use:
        console.print(
            "[yellow]trusting the log key the server offered (first use); pin it with "
            "'hashfed profile add … --log-key KEY' using a key obtained out of band[/]"
        )
    if resync:
        console.print("[yellow]Full resync: the local copy was replaced from the start of the log.")
    if ctx.as_json:
        emit_json({**result.as_dict(), "store": str(path)})
    else:
        console.print(_summary_line(result, path))


def _ago(then: int) -> str:
    seconds = max(int(time.time()) - then, 0)
    for unit, size in (("d", 86_400), ("h", 3_600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


def _position(cursor: str | None) -> int | None:
    try:
        return decode_cursor(cursor)
    except HashfedError:
        return None


async def _reach(ctx: Ctx) -> dict[str, Any]:
    """The server's answer to /v1/me, or why it could not be had (never raises)."""
    try:
        async with ctx.client(timeout_s=STATUS_TIMEOUT_S, retries=0) as client:
            me = await client.me()
        return {"reachable": True, "log_size": me.get("log_size")}
    except FederationError as err:
        return {"reachable": False, "error": err.detail}
    except (click.ClickException, OSError, ValueError) as err:
        message = err.format_message() if isinstance(err, click.ClickException) else str(err)
        return {"reachable": False, "error": message}


@click.command()
@click.option("--offline", is_flag=True, help="Do not contact the server")
@common_options
@pass_ctx
@async_command
async def status(ctx: Ctx, offline: bool) -> None:
    """Show the local store: server, cursor, counts by signal type and state, last sync.

    Works offline from the store; shows whether the server is reachable and
    how far behind the store is when it can ask.
    """
    path = _store_path(ctx)
    summary: StoreSummary | None = None
    if path.exists():
        try:
            with LocalStore.open(path, create=False) as store:
                summary = store.summary()
        except StoreError as err:
            _fail(str(err), EXIT_FAILURE)
    server = await _reach(ctx) if not offline else {"reachable": None}
    position = _position(summary.cursor) if summary else None
    log_size = server.get("log_size")
    behind = log_size - (position or 0) if isinstance(log_size, int) else None
    data: dict[str, Any] = {
        "profile": ctx.profile.name,
        "server": ctx.profile.server,
        "org": ctx.profile.org,
        "store": str(path),
        "store_exists": summary is not None,
        "server_status": server,
        "behind": behind,
    }
    if summary is not None:
        data.update(
            {
                "schema_version": summary.schema_version,
                "bound_server": summary.server,
                "bound_org": summary.org,
                "cursor": summary.cursor,
                "position": position,
                "last_sync": summary.last_sync,
                "last_log_size": summary.last_log_size,
                "records": summary.held,
                "tombstones": summary.tombstones,
                "counts": [
                    {"signal_type": t, "state": s, "records": n} for t, s, n in summary.counts
                ],
            }
        )
    if ctx.as_json:
        emit_json(data)
        return
    if server["reachable"] is None:
        reach = "not contacted (--offline)"
    elif server["reachable"]:
        reach = f"reachable, log size {log_size:,}"
    else:
        reach = f"[red]unreachable[/]: {server['error']}"
    out.print(f"[bold]server[/]     {ctx.profile.server}  ({reach})")
    out.print(f"[bold]org[/]        {ctx.profile.org}  (profile {ctx.profile.name})")
    if summary is None:
        out.print(f"[bold]store[/]      {path}  [yellow](none yet: run 'hashfed pull')[/]")
        return
    out.print(f"[bold]store[/]      {path}  (schema {summary.schema_version})")
    if summary.server is not None and summary.server != normalize_server(ctx.profile.server):
        out.print(f"[red]the store is bound to {summary.server} as {summary.org}[/]")
    cursor = summary.cursor or "(start)"
    where = f"log position {position:,}" if position is not None else "opaque"
    out.print(f"[bold]cursor[/]     {cursor}  ({where})")
    if summary.last_sync is not None:
        when = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(summary.last_sync))
        out.print(f"[bold]last sync[/]  {when}  ({_ago(summary.last_sync)})")
    else:
        out.print("[bold]last sync[/]  never")
    if behind is not None:
        out.print(f"[bold]behind[/]     {behind:,} log entries")
    table(
        f"{summary.held:,} records, {summary.tombstones:,} tombstones",
        ["signal type", "state", "records"],
        [[t, s, f"{n:,}"] for t, s, n in summary.counts],
    )


@contextlib.contextmanager
def _output(target: Path | None, binary: bool) -> Iterator[IO[Any]]:
    """Stdout, or a file that appears complete or not at all (written aside, then renamed)."""
    if target is None:
        if binary:
            yield sys.stdout.buffer
            sys.stdout.buffer.flush()
        else:
            yield sys.stdout
            sys.stdout.flush()
        return
    target = target.expanduser()
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent or ".")
    try:
        fh: IO[Any] = open(fd, "wb") if binary else open(fd, "w", newline="")  # noqa: SIM115
        with fh:
            yield fh
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@click.command()
@click.option(
    "--format",
    "fmt",
    type=click.Choice(EXPORT_FORMATS),
    default="csv",
    show_default=True,
    help="csv: signal_type,value,labels,state,record,version,contributors,disputed (';' inside "
    "lists; the first three columns are what 'hashfed push' reads); jsonl: one object a line",
)
@click.option(
    "--signal-type",
    type=click.Choice(sorted(SIGNAL_TYPES)),
    help="Only this signal type",
)
@click.option(
    "--include-retracted",
    is_flag=True,
    help="Include tombstones (withdrawn or retracted records)",
)
@click.option(
    "--only-undisputed",
    is_flag=True,
    help="Leave out records flagged disputed (open dispute, or false positive vs positive)",
)
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write to this file (atomically) instead of stdout",
)
@common_options
@pass_ctx
def export(
    ctx: Ctx,
    fmt: str,
    signal_type: str | None,
    include_retracted: bool,
    only_undisputed: bool,
    out_path: Path | None,
) -> None:
    """Write the local copy for other tools (e.g. a matcher), offline."""
    try:
        with LocalStore.open(_store_path(ctx), create=False) as store:
            records = store.records(signal_type=signal_type, include_tombstones=include_retracted)
            if only_undisputed:
                records = (r for r in records if not r.disputed)
            with _output(out_path, binary=fmt == "jsonl") as fh:
                count = write_csv(records, fh) if fmt == "csv" else write_jsonl(records, fh)
    except StoreError as err:
        _fail(str(err), EXIT_FAILURE)
    if out_path is not None:
        console.print(f"Exported {count:,} records to {out_path}.")
