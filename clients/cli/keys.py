"""``hashfed keys``: make key pairs, show key ids, and (governance) add, retire, revoke keys."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import click
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from rich.markup import escape

from clients.cli.context import (
    Ctx,
    async_command,
    common_options,
    emit_json,
    explained,
    open_client,
    pass_ctx,
    say,
)
from federation.protocol.keys import (
    PRIVATE_FILE_MODE,
    encode_public_key,
    generate_private_key,
    key_id,
    load_private_key,
    load_public_key,
    write_private_key,
    write_public_key,
)
from federation.protocol.problems import HashfedError
from federation.protocol.statements import KEY_ID_PATTERN

PUBLIC_SUFFIX = ".pub"
_KEY_ID = re.compile(KEY_ID_PATTERN)
_PRIVATE_PEM = b"-----BEGIN PRIVATE KEY-----"


def read_public_key(path: Path) -> Ed25519PublicKey:
    """The public key in ``path`` (PEM or base64); refuses a private key with advice."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise click.ClickException(f"public key file {path} not found") from None
    if _PRIVATE_PEM in data:
        raise click.ClickException(
            f"{path} holds a PRIVATE key, which must never leave its owner; "
            f"pass the public key instead ({path}{PUBLIC_SUFFIX} from 'hashfed keys generate')"
        )
    try:
        return load_public_key(path)
    except (ValueError, TypeError, HashfedError, UnicodeDecodeError):
        raise click.ClickException(
            f"{path} is not an Ed25519 public key (PEM, or the base64 raw key); "
            f"pass the FILE{PUBLIC_SUFFIX} written by 'hashfed keys generate --out FILE'"
        ) from None


def _key_id_arg(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    value = value.strip().lower()
    if _KEY_ID.fullmatch(value) is None:
        raise click.BadParameter(
            "a key id is 32 hexadecimal characters (see 'hashfed orgs show ORG')"
        )
    return value


def _confirmed(question: str, yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise click.UsageError("not asking for confirmation on a non-interactive input; add --yes")
    click.confirm(question, abort=True, err=True)


@click.group()
def keys() -> None:
    """Ed25519 keys: generate and show your own; add, retire, revoke members' (governance)."""


@keys.command()
@click.option(
    "--out",
    "out_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Private key file to write (mode 0600); the public key goes to FILE.pub",
)
@click.option("--force", is_flag=True, help="Overwrite FILE and FILE.pub if they exist")
@common_options
@pass_ctx
def generate(ctx: Ctx, out_path: Path, force: bool) -> None:
    """Generate a key pair: private key to FILE (mode 0600), public key to FILE.pub."""
    public_path = out_path.with_name(out_path.name + PUBLIC_SUFFIX)
    existing = [str(p) for p in (out_path, public_path) if p.exists()]
    if existing and not force:
        raise click.ClickException(
            f"{' and '.join(existing)} already exist{'s' if len(existing) == 1 else ''}; "
            "not overwriting a key. "
            "Choose another --out, or pass --force (the old key is lost unless saved elsewhere)"
        )
    private_key = generate_private_key()
    try:
        write_private_key(out_path, private_key, overwrite=force)
    except FileExistsError:  # created by someone else since the check above
        raise click.ClickException(f"{out_path} already exists; not overwriting it") from None
    write_public_key(public_path, private_key.public_key())
    kid = key_id(private_key.public_key())
    info = {
        "key_id": kid,
        "private_key_file": str(out_path),
        "public_key_file": str(public_path),
        "public_key": encode_public_key(private_key.public_key()),
    }
    if ctx.as_json:
        emit_json(info)
        return
    click.echo(f"key id      : {kid}")
    click.echo(
        f"private key : {out_path} (mode {PRIVATE_FILE_MODE:04o}; keep it secret, never send it)"
    )
    click.echo(f"public key  : {public_path}")
    say(
        f"Next: give {escape(str(public_path))} to your federation's governance to be admitted "
        "or to have the key added; then: hashfed profile add NAME --server URL --org ORG "
        f"--key {escape(str(out_path))}"
    )


@keys.command()
@click.argument("key_file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@common_options
@pass_ctx
def show(ctx: Ctx, key_file: Path | None) -> None:
    """Print the key id and public key of KEY_FILE (default: the profile's key).

    KEY_FILE may hold a private or a public key; the private key is never printed.
    """
    path = key_file or Path(ctx.profile.key).expanduser()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise click.ClickException(f"key file {path} not found") from None
    if _PRIVATE_PEM in data:
        try:
            public_key = load_private_key(path).public_key()
        except (ValueError, TypeError):
            raise click.ClickException(f"{path} is not an Ed25519 private key") from None
        kind = "private"
    else:
        public_key = read_public_key(path)
        kind = "public"
    info = {
        "file": str(path),
        "kind": kind,
        "key_id": key_id(public_key),
        "public_key": encode_public_key(public_key),
    }
    if ctx.as_json:
        emit_json(info)
        return
    click.echo(f"file       : {path} ({kind} key)")
    click.echo(f"key id     : {info['key_id']}")
    click.echo(f"public key : {info['public_key']}")


def _report(ctx: Ctx, result: dict[str, Any], message: str) -> None:
    if ctx.as_json:
        emit_json(result)
    else:
        click.echo(f"{message} (log index {result.get('leaf_index')})")


@keys.command("add")
@click.argument("org")
@click.option(
    "--public-key",
    "public_key_file",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The member's public key file (FILE.pub)",
)
@common_options
@pass_ctx
@async_command
async def add(ctx: Ctx, org: str, public_key_file: Path) -> None:
    """Register another key for ORG, e.g. before rotating (governance)."""
    public_key = read_public_key(public_key_file)
    async with explained(), open_client(ctx) as client:
        result = await client.add_key(org, public_key)
    _report(ctx, result, f"Added key {result.get('key_id', key_id(public_key))} to {org}")


@keys.command()
@click.argument("org")
@click.argument("key_id_", metavar="KEY_ID", callback=_key_id_arg)
@click.option("--note", default="", help="Why (kept in the log)")
@common_options
@pass_ctx
@async_command
async def retire(ctx: Ctx, org: str, key_id_: str, note: str) -> None:
    """Retire KEY_ID of ORG after rotation (governance). It can no longer sign."""
    async with explained(), open_client(ctx) as client:
        result = await client.set_key_status(org, key_id_, revoke=False, note=note)
    _report(ctx, result, f"Retired key {key_id_} of {org}")


@keys.command()
@click.argument("org")
@click.argument("key_id_", metavar="KEY_ID", callback=_key_id_arg)
@click.option("--note", required=True, help="Why (kept in the log), e.g. 'laptop stolen'")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation")
@common_options
@pass_ctx
def revoke(ctx: Ctx, org: str, key_id_: str, note: str, yes: bool) -> None:
    """Revoke KEY_ID of ORG at once, e.g. when compromised (governance).

    Every later request or statement signed with it is refused.
    """
    _confirmed(f"Revoke key {key_id_} of {org}? This cannot be undone", yes)
    _revoke(ctx, org, key_id_, note)


@async_command
async def _revoke(ctx: Ctx, org: str, kid: str, note: str) -> None:
    async with explained(), open_client(ctx) as client:
        result = await client.set_key_status(org, kid, revoke=True, note=note)
    _report(ctx, result, f"Revoked key {kid} of {org}")
