"""The ``hashfed`` command line."""

from __future__ import annotations

import click

from clients.cli.audit import audit_group, verify_record
from clients.cli.context import Ctx
from clients.cli.governance import COMMANDS as GOVERNANCE_COMMANDS
from clients.cli.keys import keys
from clients.cli.match import hash_files, match
from clients.cli.orgs import orgs
from clients.cli.profile import profile
from clients.cli.pull import export, pull, status
from clients.cli.push import push
from clients.cli.server import server


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="hashfed")
@click.option("--profile", "profile_name", envvar="HASHFED_PROFILE", help="Profile to use")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout")
@click.pass_context
def cli(ctx: click.Context, profile_name: str | None, as_json: bool) -> None:
    """Hashfed: share hashes of terrorist and violent-extremist content, verifiably."""
    ctx.obj = Ctx(profile_name, as_json)


cli.add_command(server)
cli.add_command(audit_group)
cli.add_command(verify_record)
for command in GOVERNANCE_COMMANDS:
    cli.add_command(command)
cli.add_command(keys)
cli.add_command(orgs)
cli.add_command(profile)
cli.add_command(push)
cli.add_command(pull)
cli.add_command(status)
cli.add_command(export)
cli.add_command(hash_files)
cli.add_command(match)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
