"""Steering the line: ``cardline pause|resume line NAME|station ID``, ``card retry CARD``,
``batch cancel ID``, ``batch priority ID LEVEL`` (the console's actions, the same use
cases: ``line.pause``, ``card.retry``, ``batch.cancel``, ``batch.priority``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from ops.cli.batches import batch
from ops.cli.cards import card
from ops.cli.context import CliContext, data_dir_option, handle_errors, pass_app, requires

if TYPE_CHECKING:
    from producers.principals import Caller

_reason = click.option("--reason", default=None, help="Why (kept in the audit log).")


@click.group()
def pause() -> None:
    """Pause a line or a station: it finishes the card in hand and takes no new one."""


@click.group()
def resume() -> None:
    """Resume a paused line or station."""


def _steer(scope: str, verb: str) -> click.Command:
    @click.argument("name")
    @_reason
    @data_dir_option
    @pass_app
    @handle_errors
    @requires("line.pause")
    def command(app: CliContext, name: str, reason: str | None, who: Caller) -> None:
        from producers import line_control

        act = line_control.pause if verb == "pause" else line_control.resume
        state = act(app.store(), scope, name, by=who.actor, reason=reason)
        click.echo(f"{scope} {name} {state} by {who.name}")

    what = "its stations finish" if scope == "line" else "it finishes"
    command.__doc__ = f"{verb.capitalize()} the {scope} NAME" + (
        f" ({what} the card in hand and take no new one)." if verb == "pause" else "."
    )
    return click.command(scope)(command)


for _scope in ("line", "station"):
    pause.add_command(_steer(_scope, "pause"))
    resume.add_command(_steer(_scope, "resume"))


@card.command("retry")
@click.argument("card_ref", metavar="CARD")
@_reason
@data_dir_option
@pass_app
@handle_errors
@requires("card.retry")
def card_retry(app: CliContext, card_ref: str, reason: str | None, who: Caller) -> None:
    """Give the failed CARD (number or id) a new attempt budget: it is prepared again
    and queued on a new blank; only the attempts from now on count."""
    from producers.line_control import retry_card

    state = retry_card(app.store(), card_ref, by=who.actor, reason=reason)
    click.echo(f"card {card_ref} {state}: queued again with a new attempt budget")


@batch.command("cancel")
@click.argument("batch_id", type=int)
@_reason
@data_dir_option
@pass_app
@handle_errors
@requires("batch.cancel")
def batch_cancel(app: CliContext, batch_id: int, reason: str | None, who: Caller) -> None:
    """Cancel batch BATCH_ID: its cards not yet at a station are cancelled, those at a
    station finish."""
    from producers.line_control import cancel_batch

    done = cancel_batch(app.store(), batch_id, by=who.actor, reason=reason)
    click.echo(
        f"batch {batch_id} cancelled: {done.cancelled} cards cancelled,"
        f" {done.at_station} at a station finish"
    )


@batch.command("priority")
@click.argument("batch_id", type=int)
@click.argument("level", type=click.IntRange(0, 9))
@data_dir_option
@pass_app
@handle_errors
@requires("batch.priority")
def batch_priority(app: CliContext, batch_id: int, level: int, who: Caller) -> None:
    """Set batch BATCH_ID's priority to LEVEL (0 normal .. 9): stations take its ready
    cards before those of lower batches (never your own batch)."""
    from producers.line_control import set_priority

    moved = set_priority(app.store(), batch_id, level, by=who.actor)
    click.echo(f"batch {batch_id} priority {level}: {moved} cards not yet at a station")


COMMANDS = (pause, resume)
