"""Governance commands: ``review``, ``opinion``, ``dispute``, ``inbox``, ``policy``."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

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
from federation.governance.rules import DisputeReason, OpinionKind, RejectReason
from federation.protocol.problems import HashfedError
from federation.protocol.signals import normalize_signal, record_id

REJECT_REASONS = [r.value for r in RejectReason]
DISPUTE_REASONS = [r.value for r in DisputeReason]
OPINION_KINDS = [k.value for k in OpinionKind]


def resolve_record(value: str) -> str:
    """A record id from either its 32-hex id or ``signal_type:value`` (e.g. ``md5:d41d…``)."""
    value = value.strip()
    if len(value) == 32 and all(c in "0123456789abcdef" for c in value):
        return value
    signal_type, sep, raw = value.partition(":")
    if not sep:
        raise click.BadParameter(f"{value!r} is neither a record id (32 hex) nor TYPE:VALUE")
    try:
        return record_id(signal_type, normalize_signal(signal_type, raw))
    except HashfedError as err:
        raise click.BadParameter(err.detail) from None


def _when(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M")


def _print_results(ctx: Ctx, result: dict[str, Any], verb: str) -> None:
    """Per-item outcome of a batch statement; exit 1 when an item was refused."""
    if ctx.as_json:
        emit_json(result)
    else:
        counts = result.get("counts", {})
        console.print(
            f"{verb}: [green]{counts.get('accepted', 0)} accepted[/], "
            f"{counts.get('duplicate', 0)} duplicate, "
            f"[red]{counts.get('refused', 0)} refused[/]"
        )
        for r in result.get("results", []):
            if r["status"] == "refused":
                console.print(f"  item {r['index']}: [red]{r['problem']['detail']}[/]")
    if result.get("counts", {}).get("refused"):
        sys.exit(EXIT_FAILURE)


# ---------------------------------------------------------------- review


@click.group()
def review() -> None:
    """Work the review queue (governance admins)."""


@review.command("list")
@click.option("--state", type=click.Choice(["pending", "rejected", "approved"]), default="pending")
@click.option("--signal-type", help="Only this signal type")
@click.option("--label", help="Only records with this label")
@click.option("--contributor", help="Only records this organisation contributed")
@click.option("--min-age", "min_age_s", type=int, help="Unchanged for at least N seconds")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--after", type=int, help="Continue after this head index (from --json 'next')")
@common_options
@pass_ctx
@async_command
async def review_list(ctx: Ctx, /, **filters: Any) -> None:
    """The queue, oldest first."""
    params = {k: v for k, v in filters.items() if v is not None}
    async with ctx.client() as client:
        page = await client.review_queue(**params)
    if ctx.as_json:
        emit_json(page)
        return
    table(
        f"{filters['state']} records ({len(page['items'])})",
        ["record", "signal", "value", "labels", "contributors", "approvals", "since"],
        [
            [i["record"], i["signal_type"], i["value"][:20] + ("…" if len(i["value"]) > 20 else ""),
             ",".join(i["labels"]), ",".join(i["contributors"]), len(i["approvals"]),
             _when(i["updated_at"])]
            for i in page["items"]
        ],
    )  # fmt: skip
    if page["next"] is not None:
        console.print(f"[dim]more: hashfed review list --after {page['next']}[/]")


@review.command()
@click.argument("records", nargs=-1, required=True)
@click.option("--note", help="A note for the contributors")
@common_options
@pass_ctx
@async_command
async def approve(ctx: Ctx, records: tuple[str, ...], note: str | None) -> None:
    """Approve RECORDS (ids or TYPE:VALUE) in one signed statement."""
    decisions = [
        {"record": resolve_record(r), "decision": "approve", **({"note": note} if note else {})}
        for r in records
    ]
    async with ctx.client() as client:
        _print_results(ctx, await client.review(decisions), "approve")


@review.command()
@click.argument("record")
@click.option("--reason", type=click.Choice(REJECT_REASONS), required=True)
@click.option("--note", help="Why, for the contributor")
@common_options
@pass_ctx
@async_command
async def reject(ctx: Ctx, record: str, reason: str, note: str | None) -> None:
    """Reject RECORD; its contributor is told the reason."""
    decision = {"record": resolve_record(record), "decision": "reject", "reason": reason}
    if note:
        decision["note"] = note
    async with ctx.client() as client:
        _print_results(ctx, await client.review([decision]), "reject")


@review.command("request-changes")
@click.argument("record")
@click.option("--note", required=True, help="What the contributor should change or explain")
@common_options
@pass_ctx
@async_command
async def request_changes(ctx: Ctx, record: str, note: str) -> None:
    """Ask RECORD's contributor for changes; it stays pending."""
    decision = {"record": resolve_record(record), "decision": "request_changes", "note": note}
    async with ctx.client() as client:
        _print_results(ctx, await client.review([decision]), "request-changes")


# ---------------------------------------------------------------- withdraw


def _signal(value: str) -> dict[str, str]:
    signal_type, sep, raw = value.strip().partition(":")
    if not sep:
        raise click.BadParameter(f"{value!r}: give the signal as TYPE:VALUE, e.g. md5:d41d…")
    try:
        return {"signal_type": signal_type, "value": normalize_signal(signal_type, raw)}
    except HashfedError as err:
        raise click.BadParameter(err.detail) from None


@click.command()
@click.argument("signals", nargs=-1, required=True)
@click.option("--reason", help="Why, kept in the log")
@common_options
@pass_ctx
@async_command
async def withdraw(ctx: Ctx, signals: tuple[str, ...], reason: str | None) -> None:
    """Withdraw your organisation's contributions to SIGNALS (TYPE:VALUE ...).

    A record whose last contributor withdraws becomes a tombstone that every
    consumer receives on its next pull.
    """
    items = [_signal(s) for s in signals]
    async with ctx.client() as client:
        _print_results(ctx, await client.withdraw(items, reason), "withdraw")


# ---------------------------------------------------------------- opinion


@click.command()
@click.argument("record")
@click.option("--kind", type=click.Choice(OPINION_KINDS), required=True)
@common_options
@pass_ctx
@async_command
async def opinion(ctx: Ctx, record: str, kind: str) -> None:
    """Record an opinion on an approved RECORD (consumers)."""
    async with ctx.client() as client:
        _print_results(ctx, await client.opine([{"record": resolve_record(record), "kind": kind}]),
                       "opinion")  # fmt: skip


# ---------------------------------------------------------------- dispute


@click.group()
def dispute() -> None:
    """Open, follow and resolve disputes."""


@dispute.command("open")
@click.argument("record")
@click.option("--reason", type=click.Choice(DISPUTE_REASONS), required=True)
@click.option("--note", required=True, help="What is wrong, for the admins")
@common_options
@pass_ctx
@async_command
async def dispute_open(ctx: Ctx, record: str, reason: str, note: str) -> None:
    """Dispute an approved RECORD; consumers see it flagged at once."""
    async with ctx.client() as client:
        result = await client.open_dispute(resolve_record(record), reason, note)
    if ctx.as_json:
        emit_json(result)
    else:
        console.print(f"dispute [bold]{result['results'][0]['dispute']}[/] opened")


@dispute.command("list")
@click.option("--state", type=click.Choice(["open", "upheld", "retracted"]))
@click.option("--record", help="Only disputes on this record (id or TYPE:VALUE)")
@common_options
@pass_ctx
@async_command
async def dispute_list(ctx: Ctx, state: str | None, record: str | None) -> None:
    """Disputes you are a party to (admins and auditors see all)."""
    filters = {"state": state} if state else {}
    if record:
        filters["record"] = resolve_record(record)
    async with ctx.client() as client:
        found = await client.disputes(**filters)
    if ctx.as_json:
        emit_json(found)
        return
    table(
        f"disputes ({len(found)})",
        ["dispute", "record", "opened by", "reason", "state", "votes", "note"],
        [[d["id"], d["record"], d["opened_by"], d["reason"], d["state"],
          ", ".join(f"{o}:{c}" for o, c in d["votes"].items()), d["note"][:40]]
         for d in found],
    )  # fmt: skip


@dispute.command("resolve")
@click.argument("dispute_id")
@click.option("--uphold", "outcome", flag_value="uphold", help="The record stays")
@click.option("--retract", "outcome", flag_value="retract", help="The record becomes a tombstone")
@click.option("--labels", help="With --uphold: relabel the record (comma-separated)")
@click.option("--note", required=True, help="The reasoning, for both parties")
@common_options
@pass_ctx
@async_command
async def dispute_resolve(
    ctx: Ctx, dispute_id: str, outcome: str | None, labels: str | None, note: str
) -> None:
    """Vote on DISPUTE_ID (admins not party to it); the policy's quorum decides."""
    if outcome is None:
        raise click.UsageError("say --uphold or --retract")
    if labels and outcome != "uphold":
        raise click.UsageError("--labels goes with --uphold")
    label_list = [x.strip() for x in labels.split(",") if x.strip()] if labels else None
    async with ctx.client() as client:
        result = await client.resolve_dispute(dispute_id, outcome, note, label_list)
    if ctx.as_json:
        emit_json(result)
    else:
        state = result["results"][0].get("dispute_state")
        console.print(f"vote recorded; dispute {dispute_id} is [bold]{state}[/]")


# ---------------------------------------------------------------- inbox


def _inbox_cursor_file(ctx: Ctx) -> Path:
    return hashfed_home() / "inbox" / f"{ctx.profile.name}.cursor"


@click.command()
@click.option("--all", "show_all", is_flag=True, help="Everything, not only what is new")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@common_options
@pass_ctx
@async_command
async def inbox(ctx: Ctx, show_all: bool, limit: int) -> None:
    """What happened to your submissions and disputes since you last looked."""
    cursor_file = _inbox_cursor_file(ctx)
    after = None if show_all or not cursor_file.exists() else cursor_file.read_text().strip()
    async with ctx.client() as client:
        page = await client.inbox(after, limit)
    items = page["items"]
    if items and not show_all:
        cursor_file.parent.mkdir(parents=True, exist_ok=True)
        cursor_file.write_text(page["next_cursor"])
    if ctx.as_json:
        emit_json(items)
        return
    if not items:
        console.print("nothing new")
        return
    table(
        f"inbox ({len(items)})",
        ["index", "what", "record", "dispute", "by", "detail"],
        [[n["index"], n["kind"], n["record"], n["dispute"], n["detail"].get("by"),
          "; ".join(f"{k}={v}" for k, v in n["detail"].items()
                    if k not in ("by", "statement") and v is not None)]
         for n in items],
    )  # fmt: skip


# ---------------------------------------------------------------- policy


@click.group()
def policy() -> None:
    """Show or change the federation's policy (changes: admins)."""


@policy.command("show")
@common_options
@pass_ctx
@async_command
async def policy_show(ctx: Ctx) -> None:
    """The policy in force."""
    async with ctx.client() as client:
        current = await client.get_policy()
    if ctx.as_json:
        emit_json(current)
        return
    doc = current["policy"]
    rows = [[k, v] for k, v in doc.items() if k != "taxonomy"]
    rows.append(["taxonomy", ", ".join(sorted(doc["taxonomy"]))])
    table(f"policy version {current['version']}", ["field", "value"], rows)


@policy.command("set")
@click.option("--approvals-required", type=click.IntRange(1, 10))
@click.option("--dispute-quorum", type=click.IntRange(1, 10))
@click.option("--auto-approve/--no-auto-approve", default=None)
@click.option("--submitter-admin-may-approve/--no-submitter-admin-may-approve", default=None)
@click.option("--trusted", help="Comma-separated trusted contributors (replaces the list)")
@common_options
@pass_ctx
@async_command
async def policy_set(ctx: Ctx, /, trusted: str | None, **changes: Any) -> None:
    """Sign a new policy version changing the given fields."""
    fields = {k: v for k, v in changes.items() if v is not None}
    if trusted is not None:
        fields["trusted_contributors"] = [o.strip() for o in trusted.split(",") if o.strip()]
    if not fields:
        raise click.UsageError("nothing to change; see 'hashfed policy set --help'")
    async with ctx.client() as client:
        result = await client.update_policy(**fields)
    if ctx.as_json:
        emit_json(result)
    else:
        console.print(f"policy version [bold]{result['version']}[/] in force")


COMMANDS = (review, opinion, dispute, inbox, policy, withdraw)
