"""``hashfed profile``: which server, organisation, key and local store a command uses.

Also the helpers every member command shares to open the profile's client
and to say what to do next when the server refuses.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from yarl import URL

from clients.cli.context import (
    Ctx,
    common_options,
    emit_json,
    explained,
    literal_table,
    load_identity,
    pass_ctx,
    run,
    say,
)
from clients.client import FederationClient, Identity
from clients.profiles import Profile
from federation.protocol.keys import key_id, load_private_key
from federation.protocol.note import NoteError, parse_verifier_key
from federation.protocol.statements import ORG_ID_PATTERN

# Profile names become directory and file names (stores, journals).
PROFILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_ORG_ID = re.compile(ORG_ID_PATTERN)


def _key_id_of(path: Path) -> str | None:
    try:
        return key_id(load_private_key(path.expanduser()).public_key())
    except (OSError, ValueError, TypeError):
        return None


def _check_name(name: str) -> str:
    if PROFILE_NAME.fullmatch(name) is None:
        raise click.BadParameter(
            "use letters, digits, '.', '_' or '-' (at most 64, starting with a letter or digit)",
            param_hint="NAME",
        )
    return name


def _check_server(url: str) -> str:
    parsed = URL(url)
    if parsed.scheme not in {"http", "https"} or not parsed.host:
        raise click.BadParameter(
            "give the server's base URL, e.g. https://hashfed.example", param_hint="--server"
        )
    return url.rstrip("/")


def _profile_json(profile: Profile, default: str | None) -> dict[str, Any]:
    return {
        "name": profile.name,
        "server": profile.server,
        "org": profile.org,
        "key": profile.key,
        "key_id": _key_id_of(Path(profile.key)),
        "store": profile.store,
        "log_key": profile.log_key,
        "default": profile.name == default,
    }


@click.group()
def profile() -> None:
    """Profiles: which server, organisation, key and local store to use."""


@profile.command("add")
@click.argument("name")
@click.option("--server", required=True, help="The federation's base URL, e.g. https://…")
@click.option("--org", required=True, help="Your organisation's id in the federation")
@click.option(
    "--key",
    "key_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Your private key file (from 'hashfed keys generate')",
)
@click.option(
    "--store",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Local store for pulled records (default: HASHFED_HOME/stores/NAME.db)",
)
@click.option("--default", "make_default", is_flag=True, help="Make it the default profile")
@click.option("--check", is_flag=True, help="Ask the server (GET /v1/me) that it knows the key")
@click.option(
    "--log-key",
    help="The federation's log key ('origin+hash+key', from its operator, out of band); every "
    "pull verifies checkpoints with it (without it, the first pull trusts the server's)",
)
@common_options
@pass_ctx
def add(
    ctx: Ctx,
    name: str,
    server: str,
    org: str,
    key_path: Path,
    store: Path | None,
    make_default: bool,
    check: bool,
    log_key: str | None,
) -> None:
    """Add (or replace) profile NAME.

    Profiles are kept in HASHFED_HOME (default: the platform's config
    directory); the private key stays where it is and is never copied.
    """
    _check_name(name)
    server = _check_server(server)
    if _ORG_ID.fullmatch(org) is None:
        raise click.BadParameter(
            "an organisation id is 2-63 lower-case letters, digits, '_' or '-'",
            param_hint="--org",
        )
    key_file = key_path.expanduser().resolve()
    identity = load_identity(org, key_file)
    mode = stat.S_IMODE(key_file.stat().st_mode)
    if os.name == "posix" and mode & 0o077:
        say(
            f"[yellow]warning:[/] {escape(str(key_file))} is readable by other users "
            f"(mode {mode:04o}); run: chmod 600 {escape(str(key_file))}"
        )
    store_path = (store or ctx.profiles.default_store_path(name)).expanduser().resolve()
    if log_key is not None:
        try:
            parse_verifier_key(log_key.strip())
        except NoteError as err:
            raise click.BadParameter(f"not a log key ({err})", param_hint="--log-key") from None
    new = Profile(
        name=name, server=server, org=org, key=str(key_file), store=str(store_path),
        log_key=log_key.strip() if log_key else None,
    )  # fmt: skip
    who: dict[str, Any] | None = None
    if check:
        who = run(_whoami(new, identity))
    existed = name in ctx.profiles.all()
    ctx.profiles.add(new, make_default=make_default)
    default = ctx.profiles.default_name()
    if ctx.as_json:
        emit_json({**_profile_json(new, default), "server_check": who})
        return
    verb = "Updated" if existed else "Added"
    click.echo(f"{verb} profile {name}{' (default)' if default == name else ''}")
    click.echo(f"  server : {server}")
    click.echo(f"  org    : {org}")
    click.echo(f"  key    : {key_file}")
    click.echo(f"  key id : {identity.key_id}")
    click.echo(f"  store  : {store_path}")
    if who is not None:
        click.echo(
            f"  checked: the server knows the key; roles {', '.join(who['roles']) or 'none'}"
        )
    if default != name:
        shown = escape(name)
        say(f"Use it with --profile {shown}, or make it the default: hashfed profile use {shown}")


async def _whoami(new: Profile, identity: Identity) -> dict[str, Any]:
    async with explained(), FederationClient(new.server, identity, retries=1) as client:
        who = await client.me()
    if who.get("org") != new.org:
        raise click.ClickException(
            f"the server knows this key as organisation {who.get('org')!r}, not {new.org!r}; "
            f"fix --org (nothing was saved)"
        )
    return who


@profile.command("list")
@common_options
@pass_ctx
def list_(ctx: Ctx) -> None:
    """List the profiles; the default one is marked with *."""
    profiles = ctx.profiles.all()
    default = ctx.profiles.default_name()
    if ctx.as_json:
        emit_json(
            {
                "default": default,
                "profiles": [_profile_json(p, default) for _, p in sorted(profiles.items())],
            }
        )
        return
    if not profiles:
        say(
            "No profiles yet; add one with: "
            "hashfed profile add NAME --server URL --org ORG --key FILE"
        )
        return
    literal_table(
        None,
        ["", "name", "server", "org", "key", "store"],
        [
            ["*" if n == default else "", n, p.server, p.org, p.key, p.store]
            for n, p in sorted(profiles.items())
        ],
    )


@profile.command("use")
@click.argument("name")
@common_options
@pass_ctx
def use(ctx: Ctx, name: str) -> None:
    """Make NAME the default profile."""
    profiles = ctx.profiles.all()
    if name not in profiles:
        known = ", ".join(sorted(profiles)) or "none"
        raise click.ClickException(f"no profile {name!r} (known: {known})")
    ctx.profiles.add(profiles[name], make_default=True)
    if ctx.as_json:
        emit_json({"default": name})
    else:
        click.echo(f"Default profile: {name}")


@profile.command("show")
@click.argument("name", required=False)
@common_options
@pass_ctx
def show(ctx: Ctx, name: str | None) -> None:
    """Show profile NAME (default: --profile, HASHFED_PROFILE, then the default)."""
    current = ctx.profiles.get(name or ctx.profile_name)
    data = _profile_json(current, ctx.profiles.default_name())
    if ctx.as_json:
        emit_json(data)
        return
    click.echo(f"profile : {current.name}{' (default)' if data['default'] else ''}")
    click.echo(f"server  : {current.server}")
    click.echo(f"org     : {current.org}")
    click.echo(f"key     : {current.key}")
    click.echo(f"key id  : {data['key_id'] or 'unreadable (check the key file)'}")
    click.echo(f"store   : {current.store}")
