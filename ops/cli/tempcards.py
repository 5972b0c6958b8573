"""Temporary cards: ``cardline tempcard stock|assign|extend|withdraw``."""

from __future__ import annotations

import click

from ops.cli.context import CliContext, data_dir_option, handle_errors, pass_app

DAYS = click.IntRange(1, 366)


@click.group()
def tempcard() -> None:
    """Temporary cards: stock runs, assign, extend, withdraw, lock."""


@tempcard.command("stock")
@click.argument("count", type=click.IntRange(1, 1000))
@click.option("--by", required=True)
@click.option("--line", default=None)
@data_dir_option
@pass_app
@handle_errors
def tempcard_stock(app: CliContext, count: int, by: str, line: str | None) -> None:
    """A stock run of COUNT temporary cards (a batch order: approve it with batch approve)."""
    from producers.tempcards import request_stock

    policy = app.settings.policy
    batch_id, ids = request_stock(app.store(), count, by=by, policy=policy, line=line)
    click.echo(f"batch {batch_id}: temporary cards {ids[0]}..{ids[-1]}")


@tempcard.command("assign")
@click.argument("card_ref", metavar="CARD")
@click.argument("who", metavar="USER")
@click.option("--by", required=True)
@click.option("--days", type=DAYS, default=None)
@data_dir_option
@pass_app
@handle_errors
def tempcard_assign(app: CliContext, card_ref: str, who: str, by: str, days: int | None) -> None:
    """Assign the temporary CARD to USER (certificates in their name, PIN letter)."""
    from producers.tempcards import assign

    policy = app.settings.policy
    click.echo(assign(app.store(), card_ref, who, by=by, policy=policy, days=days))


@tempcard.command("extend")
@click.argument("card_ref", metavar="CARD")
@click.option("--by", required=True)
@click.option("--days", type=DAYS, default=None)
@data_dir_option
@pass_app
@handle_errors
def tempcard_extend(app: CliContext, card_ref: str, by: str, days: int | None) -> None:
    """Lengthen the assignment of CARD."""
    from producers.tempcards import extend

    click.echo(extend(app.store(), card_ref, by=by, policy=app.settings.policy, days=days))


@tempcard.command("withdraw")
@click.argument("card_ref", metavar="CARD")
@click.option("--by", required=True)
@click.option("--reason", default=None)
@data_dir_option
@pass_app
@handle_errors
def tempcard_withdraw(app: CliContext, card_ref: str, by: str, reason: str | None) -> None:
    """Take CARD back into stock; its holder's certificates are revoked."""
    from producers.tempcards import withdraw

    revoked = withdraw(app.store(), card_ref, by=by, reason=reason)
    click.echo(f"temporary card {card_ref} unassigned; {revoked} certificates revoked")


COMMANDS = (tempcard,)
