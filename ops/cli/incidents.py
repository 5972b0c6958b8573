"""Device incidents: ``cardline incident declare|approve|cancel|list``."""

from __future__ import annotations

import click

from ops.cli.context import CliContext, data_dir_option, handle_errors, pass_app


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
@click.option("--by", required=True)
@data_dir_option
@pass_app
@handle_errors
def incident_declare(
    app: CliContext, card_ref: str, kind: str, temporary: bool | None, note: str | None, by: str
) -> None:
    """Declare an incident on CARD: it goes out of use, a replacement is requested."""
    from producers.incidents import declare

    found = declare(
        app.store(),
        card_ref,
        kind,
        by=by,
        policy=app.settings.policy,
        temporary=temporary,
        note=note,
    )
    replacement = "temporary card" if found.temporary else f"card {found.replacement_id}"
    click.echo(f"incident {found.id} {found.state}; replacement: {replacement}")


@incident.command("approve")
@click.argument("incident_id", type=int)
@click.option("--by", required=True)
@data_dir_option
@pass_app
@handle_errors
def incident_approve(app: CliContext, incident_id: int, by: str) -> None:
    """Approve the replacement of INCIDENT_ID (never your own declaration)."""
    from producers.incidents import approve

    found = approve(app.store(), incident_id, by=by, policy=app.settings.policy)
    click.echo(f"incident {found.id} {found.state}; replacement card {found.replacement_id}")


@incident.command("cancel")
@click.argument("incident_id", type=int)
@click.option("--by", required=True)
@click.option("--reason", default=None)
@data_dir_option
@pass_app
@handle_errors
def incident_cancel(app: CliContext, incident_id: int, by: str, reason: str | None) -> None:
    """The card was found: withdraw the replacement request."""
    from producers.incidents import cancel

    found = cancel(app.store(), incident_id, by=by, reason=reason)
    click.echo(f"incident {found.id} {found.state}")


@incident.command("list")
@click.option("--state", default=None)
@data_dir_option
@pass_app
@handle_errors
def incident_list(app: CliContext, state: str | None) -> None:
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
