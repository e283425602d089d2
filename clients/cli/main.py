"""The ``hashfed`` command line."""

from __future__ import annotations

import click

from clients.cli.server import server


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="hashfed")
def cli() -> None:
    """Hashfed: share hashes of terrorist and violent-extremist content, verifiably."""


cli.add_command(server)


def main() -> None:
    cli()
