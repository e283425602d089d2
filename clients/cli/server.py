"""``hashfed server``: set up and run a federation server (operators)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

SERVER_OPTIONS = (
    click.option("--data-dir", type=click.Path(path_type=Path), help="HASHFED_DATA_DIR (./var)"),
    click.option("--database-url", help="HASHFED_DATABASE_URL (default: SQLite in data dir)"),
    click.option("--origin", help="HASHFED_ORIGIN: the federation's log origin name"),
    click.option("--governance-org", help="HASHFED_GOVERNANCE_ORG (governance)"),
    click.option(
        "--auto-approve/--no-auto-approve",
        default=None,
        help="HASHFED_AUTO_APPROVE: approve submissions at once (default on)",
    ),
    click.option("--max-body-bytes", type=int, help="HASHFED_MAX_BODY_BYTES (64 MiB)"),
    click.option("--log-level", help="HASHFED_LOG_LEVEL (INFO; DEBUG adds an access log)"),
)


def _with_options(options: tuple[Any, ...]) -> Callable[[F], F]:
    def decorate(fn: F) -> F:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorate


def _settings(**flags: Any) -> Any:
    from federation.settings import Settings

    return Settings(**{k: v for k, v in flags.items() if v is not None})


@click.group()
def server() -> None:
    """Run a federation server (for operators)."""


@server.command()
@_with_options(SERVER_OPTIONS)
def init(**flags: Any) -> None:
    """Migrate the database and, on first run, found the federation.

    Creates the governance organisation (roles admin and auditor) with its
    private key in <data-dir>/keys/ (mode 0600) and the server's log key.
    Running it again only migrates.
    """
    from federation.bootstrap import init_federation

    settings = _settings(**flags)
    result = init_federation(settings)
    if result.created:
        click.secho("Federation founded.", fg="green", bold=True)
    else:
        click.echo("Federation already initialised; database migrated to the newest schema.")
    click.echo(f"  governance organisation : {result.org}")
    click.echo(f"  governance key id       : {result.key_id}")
    click.echo(f"  governance private key  : {result.key_path} (keep it secret)")
    if result.public_key:
        click.echo(f"  governance public key   : {result.public_key}")
    click.echo(f"  log signing key         : {result.log_key_path}")
    click.echo(f"  log public key          : {result.log_public_key}")
    click.echo(
        f"  log verifier key        : {_verifier_key(settings.origin, result.log_public_key)}"
    )
    click.echo("    (give members and auditors this line out of band: 'hashfed profile add")
    click.echo("     … --log-key' and 'hashfed audit verify --log-key' trust it)")
    click.echo(f"  database                : {_redact(settings.resolved_database_url)}")


@server.command()
@_with_options(SERVER_OPTIONS)
@click.option("--host", help="HASHFED_HOST (127.0.0.1)")
@click.option("--port", type=int, help="HASHFED_PORT (8080)")
@click.option("--workers", type=int, help="Worker processes sharing the port (PostgreSQL only)")
@click.option(
    "--check-processes",
    type=int,
    help="HASHFED_CHECK_PROCESSES (1): helper processes per worker that check big "
    "statements' items off the event loop; 0 checks them in the worker",
)
def run(**flags: Any) -> None:
    """Serve the federation's HTTP API until interrupted (SIGINT/SIGTERM drain in-flight work)."""
    from federation.serve import run_server

    run_server(_settings(**flags))


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _verifier_key(origin: str, public_key_b64: str) -> str:
    from federation.protocol.keys import decode_public_key
    from federation.protocol.note import format_verifier_key

    return format_verifier_key(origin, decode_public_key(public_key_b64))
