"""``hashfed audit verify``: check the whole federation, trusting only out-of-band keys."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from clients.audit import AuditReport, audit, parse_public_key
from clients.cli.context import (
    EXIT_FAILURE,
    Ctx,
    async_command,
    common_options,
    console,
    emit_json,
    pass_ctx,
    table,
)
from clients.profiles import hashfed_home
from clients.store import LocalStore
from clients.verify import record_chain, verify_checkpoint

AUDIT_TIMEOUT_S = 6 * 3600


@click.group("audit")
def audit_group() -> None:
    """Verify the federation without trusting its operator (auditors)."""


def _key_text(value: str) -> str:
    path = Path(value).expanduser()
    return path.read_text().strip() if path.exists() else value


@audit_group.command("verify")
@click.option(
    "--log-key",
    required=True,
    help="The server's log key, obtained out of band: 'name+hash+key' (as printed by "
    "'hashfed server init' / served in Hashfed-Log-Key), base64, or a file holding it",
)
@click.option(
    "--governance-key",
    required=True,
    help="The governance bootstrap public key, obtained out of band (base64 or file)",
)
@click.option("--origin", help="The log's origin name (default: the log key's name)")
@click.option(
    "--from-checkpoint",
    "from_checkpoint",
    type=click.Path(exists=True, path_type=Path),
    help="A signed checkpoint you kept earlier: the log must extend it",
)
@click.option(
    "--cache",
    type=click.Path(path_type=Path),
    help="Where downloaded leaves are kept so an interrupted audit resumes "
    "(default: under $HASHFED_HOME/audit/)",
)
@click.option(
    "--save-checkpoint",
    type=click.Path(path_type=Path),
    help="Write the verified checkpoint here, for the next --from-checkpoint",
)
@common_options
@pass_ctx
@async_command
async def verify(
    ctx: Ctx, log_key: str, governance_key: str, origin: str | None,
    from_checkpoint: Path | None, cache: Path | None, save_checkpoint: Path | None,
) -> None:  # fmt: skip
    """Download the whole log and check every signature, rule, root and served state."""
    key_name, log_public = parse_public_key(_key_text(log_key))
    _, gov_public = parse_public_key(_key_text(governance_key))
    origin = origin or key_name
    if not origin:
        raise click.UsageError("--origin is needed when --log-key is a bare base64 key")
    if cache is None:
        host = urlsplit(ctx.profile.server).netloc.replace(":", "_") or "server"
        cache = hashfed_home() / "audit" / f"{host}.leaves.ndjson"
    old_note = await asyncio.to_thread(from_checkpoint.read_text) if from_checkpoint else None
    show = not ctx.as_json and sys.stderr.isatty()
    with Progress(
        TextColumn("auditing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=console, disable=not show,
    ) as bar:  # fmt: skip
        task = bar.add_task("leaves", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        # Whole-log streams: no short total timeout (the default 120 s cut large audits).
        async with ctx.client(timeout_s=AUDIT_TIMEOUT_S) as client:
            report = await audit(
                client, log_key=log_public, origin=origin, governance_key=gov_public,
                cache=cache,
                from_checkpoint=old_note,
                progress=progress,
            )  # fmt: skip
            if save_checkpoint and report.checkpoint_verified:
                note = (await client.request("GET", "/v1/log/checkpoint",
                                             params={"size": report.size})).body  # fmt: skip
                await asyncio.to_thread(save_checkpoint.write_bytes, note)
    _show(ctx, report)
    if not report.ok:
        sys.exit(EXIT_FAILURE)


def _show(ctx: Ctx, report: AuditReport) -> None:
    if ctx.as_json:
        emit_json(report.to_json())
        return
    rows: list[list[Any]] = [
        ["server", report.server], ["origin", report.origin],
        ["tree size", report.size], ["root (base64)", report.root],
        ["checkpoint signature", "verified" if report.checkpoint_verified else "FAILED"],
        ["leaves checked", report.leaves], ["statements", report.statements],
        ["signatures verified", report.signatures_verified],
        ["versions replayed", report.versions_checked],
        ["records compared", report.records_compared],
        ["  of which changed after the checkpoint", report.records_after_checkpoint],
        ["feed items compared", report.feed_items_compared],
        ["seconds", report.seconds],
    ]  # fmt: skip
    table("audit", ["check", "result"], rows)
    if report.ok:
        console.print("[bold green]no violations[/]: every leaf, signature and rule checks out")
        return
    table(
        f"{len(report.violations)} violations",
        ["leaf", "check", "detail"],
        [
            [v.index if v.index is not None else "-", v.check, v.detail]
            for v in report.violations[:200]
        ],
    )


@click.command("verify")
@click.argument("record")
@common_options
@pass_ctx
@async_command
async def verify_record(ctx: Ctx, record: str) -> None:
    """Show and check the provenance of RECORD (id or TYPE:VALUE) from the local store.

    The version you hold, the statement that caused it, the key that signed
    it (valid at that point of the log), and both inclusions in a checkpoint
    signed by the log key.
    """
    from clients.cli.governance import resolve_record

    rid = resolve_record(record)
    store = LocalStore.open(ctx.profile.store, create=False)
    with store:
        async with ctx.client() as client:
            verified = await verify_checkpoint(client, store, ctx.profile.log_key)
            try:
                chain = await record_chain(client, store, rid, verified)
            except LookupError as err:
                raise click.ClickException(str(err)) from None
    if ctx.as_json:
        steps = [{"check": c, "ok": ok, "detail": d} for c, ok, d in chain.steps]
        emit_json({"record": chain.record, "ok": chain.ok,
                   "checkpoint": verified.checkpoint.size, "steps": steps})  # fmt: skip
    else:
        v = chain.record
        console.print(f"[bold]{v['signal_type']}[/] {v['value']}  record {v['record']}")
        table(None, ["check", "ok", "detail"],
              [[c, "yes" if ok else "NO", d] for c, ok, d in chain.steps])  # fmt: skip
    if not chain.ok:
        sys.exit(EXIT_FAILURE)
