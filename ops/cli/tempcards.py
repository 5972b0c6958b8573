"""Temporary cards: ``cardline tempcard stock|assign|extend|withdraw``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from ops.cli.context import CliContext, data_dir_option, handle_errors, pass_app, requires

if TYPE_CHECKING:
    from producers.principals import Caller

DAYS = click.IntRange(1, 366)


@click.group()
def tempcard() -> None:
    """Temporary cards: stock runs, assign, extend, withdraw, lock."""


@tempcard.command("stock")
@click.argument("count", type=click.IntRange(1, 1000))
@click.option("--line", default=None)
@data_dir_option
@pass_app
@handle_errors
@requires("tempcard.stock")
def tempcard_stock(app: CliContext, count: int, line: str | None, who: Caller) -> None:
    """A stock run of COUNT temporary cards (a batch order: approve it with batch approve)."""
    from producers.tempcards import request_stock

    policy = app.settings.policy
    batch_id, ids = request_stock(app.store(), count, by=who.actor, policy=policy, line=line)
    click.echo(f"batch {batch_id}: temporary cards {ids[0]}..{ids[-1]}")


@tempcard.command("assign")
@click.argument("card_ref", metavar="CARD")
@click.argument("holder", metavar="USER")
@click.option("--days", type=DAYS, default=None)
@data_dir_option
@pass_app
@handle_errors
@requires("tempcard.assign")
def tempcard_assign(
    app: CliContext, card_ref: str, holder: str, days: int | None, who: Caller
) -> None:
    """Assign the temporary CARD to USER (certificates in their name, PIN letter)."""
    params = {"user": holder, "days": days}
    app.perform(who, "tempcard.assign", card_ref, params, lambda state: state)


@tempcard.command("extend")
@click.argument("card_ref", metavar="CARD")
@click.option("--days", type=DAYS, default=None)
@data_dir_option
@pass_app
@handle_errors
@requires("tempcard.extend")
def tempcard_extend(app: CliContext, card_ref: str, days: int | None, who: Caller) -> None:
    """Lengthen the assignment of CARD."""
    app.perform(who, "tempcard.extend", card_ref, {"days": days}, lambda state: state)


@tempcard.command("withdraw")
@click.argument("card_ref", metavar="CARD")
@click.option("--reason", default=None)
@data_dir_option
@pass_app
@handle_errors
@requires("tempcard.withdraw")
def tempcard_withdraw(app: CliContext, card_ref: str, reason: str | None, who: Caller) -> None:
    """Take CARD back into stock; its holder's certificates are revoked."""
    app.perform(
        who,
        "tempcard.withdraw",
        card_ref,
        {"reason": reason},
        lambda revoked: f"temporary card {card_ref} unassigned; {revoked} certificates revoked",
    )


COMMANDS = (tempcard,)
