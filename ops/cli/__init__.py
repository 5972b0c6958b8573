"""The ``cardline`` command line: one click group over small command modules.

Each module holds the commands of one area and imports what they need when they run,
so ``cardline --help`` loads little; they share one ``CliContext`` on click's
``ctx.obj`` (``ops.cli.context``). Nothing outside ``ops.cli`` imports this package
(tests do).
"""

from __future__ import annotations

import click

from ops.cli import (
    api,
    attention,
    batches,
    cards,
    certs,
    escrow,
    expiry,
    incidents,
    line,
    pki,
    roles,
    softtokens,
    store,
    tempcards,
    tokens,
    users,
)
from ops.cli.context import CliContext


@click.group()
@click.version_option(package_name="cardline")
@click.pass_context
def main(ctx: click.Context) -> None:
    """Cardline: smart card production, from requests to active cards."""
    ctx.ensure_object(CliContext)


for module in (
    api,
    attention,
    batches,
    cards,
    certs,
    escrow,
    expiry,
    incidents,
    line,
    pki,
    roles,
    softtokens,
    store,
    tempcards,
    tokens,
    users,
):
    for command in module.COMMANDS:
        main.add_command(command)
