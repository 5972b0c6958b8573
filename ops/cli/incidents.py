"""Device incidents: ``cardline incident declare|approve|cancel|list``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from ops.cli.context import CliContext, data_dir_option, handle_errors, pass_app, requires

if TYPE_CHECKING:
    from producers.principals import Caller


@click.group()
def incident() -> None:
    """Device incidents: a card forgotten, lost, stolen or damaged, and its replacement."""


@incident.command("declare")
@click.argument("card_ref", metavar="CARD")
@click.option(
    "--kind", required=True, type=click.Choice(["forgotten", "lost", "stolen", "damaged"])
)
@click.option("--temporary/--permanent", default=None, help="The replacement's kind.")
@click.option("--note", default=None)
@data_dir_option
@pass_app
@handle_errors
@requires("card.incident")
def incident_declare(
    app: CliContext, card_ref: str, kind: str, temporary: bool | None, note: str | None, who: Caller
) -> None:
    """Declare an incident on CARD: it goes out of use, a replacement is requested.
    Stolen and damaged lock the card: they need a role that may lock it, and wait for
    an approver where card locks do ([approvals] card_lock)."""
    from producers.incidents import check_may_declare, declare

    check_may_declare(app.store(), who, kind)
    found = declare(
        app.store(),
        card_ref,
        kind,
        by=who.actor,
        policy=app.settings.policy,
        steps=app.settings.approvals,
        temporary=temporary,
        note=note,
    )
    replacement = "temporary card" if found.temporary else f"card {found.replacement_id}"
    click.echo(f"incident {found.id} {found.state}; replacement: {replacement}")
    if found.lock_request_id is not None:
        click.echo(
            f"the card is deactivated; its lock waits for an approver as request "
            f"{found.lock_request_id} (`cardline approvals`)"
        )


@incident.command("approve")
@click.argument("incident_id", type=int)
@data_dir_option
@pass_app
@handle_errors
@requires("incident.decide")
def incident_approve(app: CliContext, incident_id: int, who: Caller) -> None:
    """Approve the replacement of INCIDENT_ID (never your own declaration)."""
    from producers.incidents import approve

    found = approve(app.store(), incident_id, by=who.actor, policy=app.settings.policy)
    click.echo(f"incident {found.id} {found.state}; replacement card {found.replacement_id}")


@incident.command("cancel")
@click.argument("incident_id", type=int)
@click.option("--reason", default=None)
@data_dir_option
@pass_app
@handle_errors
@requires("card.incident")
def incident_cancel(app: CliContext, incident_id: int, reason: str | None, who: Caller) -> None:
    """The card was found: withdraw the replacement request."""
    from producers.incidents import cancel

    found = cancel(app.store(), incident_id, by=who.actor, reason=reason)
    click.echo(f"incident {found.id} {found.state}")


@incident.command("list")
@click.option("--state", default=None)
@data_dir_option
@pass_app
@handle_errors
@requires("incident.read")
def incident_list(app: CliContext, state: str | None, who: Caller) -> None:
    """Incidents with their card, kind and replacement."""
    from rich.table import Table

    from producers.incidents import list_incidents

    table = Table("id", "card", "kind", "replacement", "state", "declared by")
    for i in list_incidents(app.store(), state=state):
        kind = "temporary" if i.temporary else "permanent"
        table.add_row(
            str(i.id),
            str(i.card_id),
            i.kind,
            f"{kind} {i.replacement_id or ''}".strip(),
            i.state,
            i.declared_by,
        )
    app.out.print(table)


COMMANDS = (incident,)
