"""``cardline expiry check``: the expiry check once (``ops.expiry`` has the loop the
relay runs)."""

from __future__ import annotations

import click

from ops.cli.context import (
    CliContext,
    data_dir_option,
    handle_errors,
    pass_app,
    print_json,
)


@click.group()
def expiry() -> None:
    """Expiry checks: remind holders of expiring cards and certificates."""


@expiry.command("check")
@click.option("--now", "now_text", default=None, help="Check as of this ISO date or time (UTC).")
@click.option("--json", "as_json", is_flag=True, help="End with one JSON object on stdout.")
@data_dir_option
@pass_app
@handle_errors
def expiry_check(app: CliContext, now_text: str | None, as_json: bool) -> None:
    """Run the expiry check once: queue reminders, move expired items to expired."""
    from ops.expiry import parse_now, report_lines
    from producers.expiry import check_expiry

    now = parse_now(now_text) if now_text else None
    report = check_expiry(app.store(), app.settings.expiry, now=now)
    for line in report_lines(report):
        click.echo(line)
    if as_json:
        print_json(report.as_dict())


COMMANDS = (expiry,)
