"""``hashfed push``: validate hash files locally, then send them in signed, journaled batches."""

from __future__ import annotations

import asyncio
import sys

import click
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from clients.cli.context import (
    EXIT_FAILURE,
    EXIT_OK,
    Ctx,
    common_options,
    console,
    emit_json,
    explained,
    literal_table,
    open_client,
    pass_ctx,
    run,
    say,
)
from clients.client import FederationClient
from clients.errors import FederationError
from clients.push import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CONCURRENCY,
    FORMATS,
    MAX_BATCH_SIZE,
    BatchPush,
    InputItem,
    JournalBusy,
    PushInputError,
    PushJournal,
    PushSummary,
    journal_path,
    plan_batches,
    read_inputs,
)
from federation.protocol.taxonomy import DEFAULT_TAXONOMY, Taxonomy

MAX_CONCURRENCY = 16
# Longer lists go to --json; a terminal drowns in them.
MAX_REFUSALS_SHOWN = 50
_SIGNAL_SHOWN_CHARS = 48


class _ItemRate(ProgressColumn):
    """Items per second (rich's own speed column counts bytes)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.0f} items/s", style="progress.data.speed")


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _ItemRate(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled,
    )


def _plural(count: int, word: str) -> str:
    suffix = "" if count == 1 else "es" if word.endswith(("s", "ch")) else "s"
    return f"{count:,} {word}{suffix}"


@click.command()
@click.argument(
    "files",
    nargs=-1,
    required=True,
    type=click.Path(exists=True, dir_okay=False, allow_dash=True),
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    help="Input format (default: from the extension: .csv, .jsonl, .ndjson); needed for '-'",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, MAX_BATCH_SIZE),
    default=DEFAULT_BATCH_SIZE,
    show_default=True,
    help="Items per signed statement",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1, MAX_CONCURRENCY),
    default=DEFAULT_CONCURRENCY,
    show_default=True,
    help="Batches in flight at once",
)
@click.option(
    "--skip-invalid", is_flag=True, help="Push the valid lines and report the invalid ones"
)
@click.option("--keep-journal", is_flag=True, help="Keep the resume journal after success")
@click.option("--dry-run", is_flag=True, help="Validate only; send nothing")
@common_options
@pass_ctx
def push(
    ctx: Ctx,
    files: tuple[str, ...],
    fmt: str | None,
    batch_size: int,
    concurrency: int,
    skip_invalid: bool,
    keep_journal: bool,
    dry_run: bool,
) -> None:
    """Push hashes from FILE... (CSV, JSON Lines, or '-' for stdin).

    \b
    CSV:  header signal_type,value,labels[,note][,ref]; labels separated by ';'
          md5,d41d8cd98f00b204e9800998ecf8427e,recruitment;glorification
    JSONL: {"signal_type": "md5", "value": "…", "labels": ["recruitment"]}

    Every line is validated first with the server's rules; if any is bad,
    each is listed as FILE:LINE: reason and nothing is sent (exit 1) unless
    --skip-invalid. A signal that appears twice in the input is a bad line.
    Batches are signed and journaled before they are sent, so running the
    same command again after an interruption resumes without duplicating.

    Exit status: 0 all sent and none refused; 1 invalid input or some items
    refused by the server; 3 the server refused the push or was unreachable.
    """
    taxonomy = run(_federation_taxonomy(ctx))
    try:
        parsed = read_inputs(files, fmt, taxonomy=taxonomy)
    except PushInputError as exc:
        raise click.UsageError(str(exc)) from None
    for bad in parsed.bad:
        click.echo(str(bad), err=True)
    if parsed.bad and not skip_invalid:
        valid = _plural(len(parsed.items), "valid item")
        say(
            f"[bold red]{_plural(len(parsed.bad), 'bad line')}[/]; nothing was sent. "
            f"Fix them, or pass --skip-invalid to push the {valid} and report the rest."
        )
        if ctx.as_json:
            emit_json(PushSummary(invalid=parsed.bad).to_json())
        sys.exit(EXIT_FAILURE)
    if parsed.bad:
        say(f"[yellow]Skipping {_plural(len(parsed.bad), 'invalid line')}[/] (above).")
    batches = plan_batches(parsed.items, batch_size)
    if not parsed.items or dry_run:
        summary = PushSummary(invalid=parsed.bad, batches=len(batches) if dry_run else 0)
        if dry_run:
            say(
                f"{_plural(len(parsed.items), 'valid item')} in {_plural(len(batches), 'batch')} "
                f"of at most {batch_size:,}; nothing sent (--dry-run)."
            )
        else:
            say("Nothing to push: the input holds no valid item.")
        if ctx.as_json:
            emit_json(summary.to_json())
        sys.exit(EXIT_OK)

    profile = ctx.profile
    client = open_client(ctx)  # a bad key file fails here, before any journal exists
    path = journal_path(ctx.profiles.home, profile.name, parsed.digest, batch_size)
    try:
        journal = PushJournal.open(path)
    except JournalBusy as exc:
        raise click.ClickException(str(exc)) from None
    with journal:
        show_progress = console.is_terminal and not ctx.as_json
        summary, resigned = run(
            _send(client, batches, journal, concurrency, show_progress, len(parsed.items))
        )
        summary.invalid = parsed.bad
        if keep_journal:
            say(f"[dim]journal kept: {escape(str(journal.path))}[/]")
        else:
            journal.delete()
    if summary.resumed_batches:
        say(
            f"Resumed: {_plural(summary.resumed_batches, 'batch')} already confirmed by an "
            "earlier run were not sent again (their results are counted below)."
        )
    if resigned:
        say(
            f"[yellow]{_plural(resigned, 'journaled batch')} had to be signed again[/] (too old, "
            "or the profile's key changed); items already delivered show as duplicates."
        )
    _print_summary(ctx, summary)
    sys.exit(EXIT_FAILURE if summary.refused else EXIT_OK)


POLICY_TIMEOUT_S = 15.0


async def _federation_taxonomy(ctx: Ctx) -> Taxonomy:
    """The labels the federation's policy in force allows; the default set if unreachable.

    Items are checked before anything is signed, so that a bad line is
    reported with its file and line. The federation may configure its own
    taxonomy; checking against the default one would then refuse good lines
    or let bad ones through to be refused by the server one by one.
    """
    try:
        # One quick try: the push itself retries, and reports an unreachable server.
        async with open_client(ctx, retries=0, timeout_s=POLICY_TIMEOUT_S) as client:
            document = await client.get_policy()
        return Taxonomy(document["policy"]["taxonomy"])
    except (FederationError, OSError, KeyError, TypeError, ValueError) as exc:
        reason = exc.detail if isinstance(exc, FederationError) else str(exc) or type(exc).__name__
        say(
            f"[yellow]warning:[/] could not read the federation's policy ({escape(reason)}); "
            "checking labels against the default taxonomy"
        )
        return DEFAULT_TAXONOMY


async def _send(
    client: FederationClient,
    batches: list[list[InputItem]],
    journal: PushJournal,
    concurrency: int,
    show_progress: bool,
    total: int,
) -> tuple[PushSummary, int]:
    pusher = BatchPush(client, batches, concurrency=concurrency, journal=journal)
    try:
        async with explained(), client:
            with _progress(show_progress) as progress:
                task = progress.add_task("pushing", total=total)
                summary = await pusher.run(lambda n: progress.advance(task, n))
    except FederationError:
        _stopped(pusher, journal, "stopped")
        raise
    except asyncio.CancelledError:
        _stopped(pusher, journal, "interrupted")
        raise
    return summary, pusher.resigned


def _stopped(pusher: BatchPush, journal: PushJournal, how: str) -> None:
    action = "fix the problem below, then run" if how == "stopped" else "run"
    say(
        f"[yellow]Push {how}[/] with {pusher.confirmed:,} of "
        f"{_plural(len(pusher.batches), 'batch')} confirmed. The journal "
        f"({escape(str(journal.path))}) keeps what was signed: {action} the same command "
        "again to resume; nothing is sent twice."
    )


def _signal(signal_type: str, value: str) -> str:
    text = f"{signal_type}:{value}"
    return text if len(text) <= _SIGNAL_SHOWN_CHARS else text[: _SIGNAL_SHOWN_CHARS - 1] + "…"


def _print_summary(ctx: Ctx, summary: PushSummary) -> None:
    if ctx.as_json:
        emit_json(summary.to_json())
        return
    rows = [
        ["accepted", f"{summary.accepted:,}"],
        ["duplicate", f"{summary.duplicate:,}"],
        ["refused", f"{summary.refused:,}"],
    ]
    if summary.invalid:
        rows.append(["invalid (not sent)", f"{len(summary.invalid):,}"])
    literal_table(f"Pushed in {_plural(summary.batches, 'batch')}", ["items", "count"], rows)
    if not summary.refusals:
        return
    shown = summary.refusals[:MAX_REFUSALS_SHOWN]
    literal_table(
        "Refused by the server",
        ["where", "signal", "problem", "detail"],
        [[r.location, _signal(r.signal_type, r.value), r.problem, r.detail] for r in shown],
    )
    if len(summary.refusals) > len(shown):
        say(f"… and {len(summary.refusals) - len(shown):,} more; use --json to list them all.")
