"""The ``cardline`` command line: one click group over small command modules.

Each module of this package that has ``COMMANDS`` holds the commands of one area and
imports what they need when they run, so ``cardline --help`` loads little; they share
one ``CliContext`` on click's ``ctx.obj`` (``ops.cli.context``). Nothing outside
``ops.cli`` imports this package (tests do).

Every command runs under the umask 077: whatever it or a process it starts creates (the
store, its WAL, logs, faces, letters) is its owner's alone, not only what is written
with an explicit mode.
"""

from __future__ import annotations

import importlib
import os
import pkgutil

import click

from ops.cli.context import CliContext


@click.group()
@click.version_option(package_name="cardline")
@click.pass_context
def main(ctx: click.Context) -> None:
    """Cardline: smart card production, from requests to active cards."""
    ctx.ensure_object(CliContext)
    before = os.umask(0o077)
    # Put back when the command ends: it matters to a caller running commands in its
    # own process (the tests), not to the command line.
    ctx.call_on_close(lambda: os.umask(before))


for _module in pkgutil.iter_modules(__path__):
    if _module.name != "__main__":
        for command in getattr(
            importlib.import_module(f"{__name__}.{_module.name}"), "COMMANDS", ()
        ):
            main.add_command(command)
