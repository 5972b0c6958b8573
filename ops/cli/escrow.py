"""Escrowed encryption keys: ``cardline escrow export|recover``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from ops.cli.context import CliContext, data_dir_option, handle_errors, pass_app, requires

if TYPE_CHECKING:
    from producers.principals import Caller


@click.group()
def escrow() -> None:
    """Escrowed encryption keys: export as PFX, recover onto a new card."""


@escrow.command("export")
@click.argument("card")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@data_dir_option
@pass_app
@handle_errors
@requires("escrow.export")
def escrow_export(app: CliContext, card: str, out: Path, who: Caller) -> None:
    """Write CARD's escrowed key and certificate to OUT (PFX); print its one-time password."""
    from ops.pki import export_escrow_pfx

    path, password = export_escrow_pfx(app.settings, card, out, by=who.actor)
    click.echo(f"PFX written to {path}")
    click.echo(f"one-time password (shown once, stored nowhere): {password.reveal()}")


@escrow.command("recover")
@click.argument("card")
@data_dir_option
@pass_app
@handle_errors
@requires("card.recover")
def escrow_recover(app: CliContext, card: str, who: Caller) -> None:
    """Have CARD (not yet produced) also carry its holder's earlier escrowed keys."""
    from producers.escrow import request_key_recovery

    count = request_key_recovery(app.store(), card, by=who.actor)
    click.echo(f"card {card} will carry {count} earlier escrowed keys")


COMMANDS = (escrow,)
