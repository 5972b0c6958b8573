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
@click.option(
    "--request",
    "request_id",
    type=int,
    default=None,
    help="Collect your approved export request (under [approvals] escrow_export).",
)
@data_dir_option
@pass_app
@handle_errors
@requires("escrow.export")
def escrow_export(
    app: CliContext, card: str, out: Path, request_id: int | None, who: Caller
) -> None:
    """Write CARD's escrowed key and certificate to OUT (PFX); print its one-time password.
    Under dual control ([approvals] escrow_export) this first requests the export; once
    an approver approved it, collect it (once) with --request."""
    from ops.pki import export_escrow_pfx
    from producers.escrow import EXPORT
    from producers.pending import perform

    settings = app.settings
    if request_id is None and settings.approvals.required(EXPORT):
        held = perform(
            app.store(),
            EXPORT,
            card,
            {},
            by=who.actor,
            policy=settings.policy,
            steps=settings.approvals,
        )
        click.echo(f"request {held.request_id} waits for an approver: {held.summary}")
        click.echo(
            f"once approved, collect it: cardline escrow export {card} --out {out} "
            f"--request {held.request_id}"
        )
        return
    path, password = export_escrow_pfx(settings, card, out, by=who.actor, request_id=request_id)
    click.echo(f"PFX written to {path}")
    click.echo(f"one-time password (shown once, stored nowhere): {password.reveal()}")


@escrow.command("recover")
@click.argument("card")
@click.option(
    "--key",
    "serials",
    multiple=True,
    metavar="SERIAL",
    help="Only this escrowed key (its certificate's serial, as `escrow keys` lists it);"
    " repeatable. Default: all of the holder's.",
)
@data_dir_option
@pass_app
@handle_errors
@requires("card.recover")
def escrow_recover(app: CliContext, card: str, serials: tuple[str, ...], who: Caller) -> None:
    """Have CARD carry its holder's earlier escrowed keys: all of them on a card not yet
    produced; the chosen ones on a card in use, written when it is next at a desk."""
    from producers.escrow import request_key_recovery

    count = request_key_recovery(app.store(), card, by=who.actor, serials=serials)
    click.echo(f"card {card} will carry {count} earlier escrowed keys")


@escrow.command("keys")
@click.argument("card")
@data_dir_option
@pass_app
@handle_errors
@requires("card.recover")
def escrow_keys(app: CliContext, card: str, who: Caller) -> None:
    """The escrowed keys of CARD's holder from their other cards, to choose from."""
    from rich.table import Table

    from producers.escrow import holder_keys

    table = Table("certificate serial", "card", "valid until", title="escrowed keys")
    for key in holder_keys(app.store(), card):
        table.add_row(
            key.serial, key.card_number or str(key.credential_id), f"{key.not_after:%Y-%m-%d}"
        )
    app.out.print(table)


COMMANDS = (escrow,)
