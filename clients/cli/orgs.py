"""``hashfed orgs``: admit, list, show, suspend and reinstate member organisations (governance)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from rich.markup import escape

from clients.cli.context import (
    Ctx,
    async_command,
    common_options,
    emit_json,
    explained,
    literal_table,
    open_client,
    pass_ctx,
    say,
)
from clients.cli.keys import read_public_key
from federation.protocol.keys import key_id
from federation.protocol.statements import ORG_ID_PATTERN, Role

_ORG_ID = re.compile(ORG_ID_PATTERN)
_ROLES = tuple(r.value for r in Role)


def _org_arg(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    if _ORG_ID.fullmatch(value) is None:
        raise click.BadParameter(
            "an organisation id is 2-63 characters: lower-case letters, digits, '_' or '-', "
            "starting with a letter or digit"
        )
    return value


def _roles_arg(_ctx: click.Context, _param: click.Parameter, value: str) -> list[str]:
    roles = sorted({r.strip().lower() for r in value.split(",") if r.strip()})
    unknown = [r for r in roles if r not in _ROLES]
    if not roles or unknown:
        raise click.BadParameter(
            f"give a comma-separated list of roles among {', '.join(_ROLES)}"
            + (f" (unknown: {', '.join(unknown)})" if unknown else "")
        )
    return roles


def _active_keys(org: dict[str, Any]) -> list[str]:
    return [k["key_id"] for k in org.get("keys", []) if k.get("status") == "active"]


def _when(timestamp: int | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


@click.group()
def orgs() -> None:
    """Member organisations (governance): admit, list, show, suspend, reinstate."""


@orgs.command("add")
@click.argument("org", callback=_org_arg)
@click.option("--name", required=True, help="The organisation's display name")
@click.option(
    "--roles",
    required=True,
    callback=_roles_arg,
    help=f"Comma-separated roles among: {', '.join(_ROLES)} (e.g. contributor,consumer)",
)
@click.option(
    "--public-key",
    "public_key_file",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The member's first public key (FILE.pub from 'hashfed keys generate')",
)
@common_options
@pass_ctx
@async_command
async def add(ctx: Ctx, org: str, name: str, roles: list[str], public_key_file: Path) -> None:
    """Admit organisation ORG with its first public key."""
    public_key = read_public_key(public_key_file)
    async with explained(), open_client(ctx) as client:
        result = await client.admit_org(org, name, roles, public_key)
    if ctx.as_json:
        emit_json(result)
        return
    click.echo(
        f"Admitted {org} ({name}) with roles {', '.join(roles)} and key {key_id(public_key)} "
        f"(log index {result.get('leaf_index')})"
    )
    say(
        f"The member can now run: hashfed profile add NAME --server URL --org {escape(org)} "
        "--key THEIR_PRIVATE_KEY_FILE"
    )


@orgs.command("list")
@common_options
@pass_ctx
@async_command
async def list_(ctx: Ctx) -> None:
    """List organisations: id, name, status, roles and active keys."""
    async with explained(), open_client(ctx) as client:
        found = await client.list_orgs()
    if ctx.as_json:
        emit_json(found)
        return
    literal_table(
        None,
        ["id", "name", "status", "roles", "active keys"],
        [
            [o["id"], o["name"], o["status"], ", ".join(o["roles"]), "\n".join(_active_keys(o))]
            for o in found
        ],
        whole=("id", "active keys"),
    )


@orgs.command()
@click.argument("org", callback=_org_arg)
@common_options
@pass_ctx
@async_command
async def show(ctx: Ctx, org: str) -> None:
    """Show organisation ORG and all its keys (your own, or any for governance)."""
    async with explained(), open_client(ctx) as client:
        found: dict[str, Any] = await client.get_json(f"/v1/orgs/{org}")
    if ctx.as_json:
        emit_json(found)
        return
    click.echo(f"id       : {found['id']}")
    click.echo(f"name     : {found['name']}")
    click.echo(f"status   : {found['status']}")
    click.echo(f"roles    : {', '.join(found['roles'])}")
    click.echo(f"admitted : log index {found.get('admitted_index')}")
    literal_table(
        "keys",
        ["key id", "status", "added", "retired", "revoked", "revoked at"],
        [
            [
                k["key_id"],
                k["status"],
                k.get("added_index"),
                k.get("retired_index"),
                k.get("revoked_index"),
                _when(k.get("revoked_at")),
            ]
            for k in found.get("keys", [])
        ],
        whole=("key id",),
    )


async def _set_status(ctx: Ctx, org: str, *, suspend: bool, note: str) -> None:
    async with explained(), open_client(ctx) as client:
        result = await client.set_org_status(org, suspend=suspend, note=note)
    if ctx.as_json:
        emit_json(result)
        return
    done = "Suspended" if suspend else "Reinstated"
    click.echo(f"{done} {org} (log index {result.get('leaf_index')})")


@orgs.command()
@click.argument("org", callback=_org_arg)
@click.option("--note", default="", help="Why (kept in the log)")
@common_options
@pass_ctx
@async_command
async def suspend(ctx: Ctx, org: str, note: str) -> None:
    """Suspend ORG: its keys are refused until it is reinstated."""
    await _set_status(ctx, org, suspend=True, note=note)


@orgs.command()
@click.argument("org", callback=_org_arg)
@click.option("--note", default="", help="Why (kept in the log)")
@common_options
@pass_ctx
@async_command
async def reinstate(ctx: Ctx, org: str, note: str) -> None:
    """Reinstate a suspended ORG."""
    await _set_status(ctx, org, suspend=False, note=note)
