"""``cardline alerts``: what is wrong with the line now, and what to do about it."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from ops.cli.context import (
    CliContext,
    data_dir_option,
    handle_errors,
    json_option,
    pass_app,
    print_json,
    requires,
)

if TYPE_CHECKING:
    from producers.principals import Caller


@click.command()
@data_dir_option
@json_option
@pass_app
@handle_errors
@requires("alerts.read")
def alerts(app: CliContext, as_json: bool, who: Caller) -> None:
    """The open alerts, most severe and oldest first, each with what to do (limits:
    ``[alerts]``); exit code 0 when there are none, 1 when any is open."""
    from db.alerts import open_alerts
    from ops.render import alerts_table

    with app.store(readonly=True).read() as s:
        found = open_alerts(s, app.settings.alerts)
    if as_json:
        print_json({"alerts": [a.as_dict() for a in found], "count": len(found)})
    elif found:
        app.out.print(alerts_table(found))
    else:
        click.echo("no open alerts")
    sys.exit(1 if found else 0)


COMMANDS = (alerts,)
