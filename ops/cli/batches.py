"""Batch orders: ``cardline batch import|approve|reject``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ops.cli.context import CliContext, data_dir_option, handle_errors, json_option, pass_app


@click.group()
def batch() -> None:
    """Batch orders: import a CSV of card requests, approve or reject it."""


@batch.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--by",
    "requested_by",
    default="operator",
    show_default=True,
    help="Who requests the cards (may not approve them).",
)
@click.option("--line", default=None, help="Station line to produce on.")
@data_dir_option
@json_option
@pass_app
@handle_errors
def batch_import(
    app: CliContext, file: Path, requested_by: str, line: str | None, as_json: bool
) -> None:
    """Import FILE (CSV, UTF-8) as one batch order of card requests."""
    from ops.intake import import_file

    code = import_file(
        app.settings, file, requested_by=requested_by, line=line, as_json=as_json, console=app.out
    )
    sys.exit(code)


@batch.command("approve")
@click.argument("batch_id", type=int)
@click.option("--by", "approver", required=True, help="The approver (not the requester).")
@data_dir_option
@pass_app
@handle_errors
def batch_approve(app: CliContext, batch_id: int, approver: str) -> None:
    """Approve batch BATCH_ID: every requested card in it goes to production."""
    from producers.approvals import approve_batch

    report = approve_batch(app.store(), batch_id, by=approver)
    click.echo(f"batch {report.batch_id} approved by {approver}: {report.approved} cards")


@batch.command("reject")
@click.argument("batch_id", type=int)
@click.option("--by", "approver", required=True)
@click.option("--reason", required=True)
@data_dir_option
@pass_app
@handle_errors
def batch_reject(app: CliContext, batch_id: int, approver: str, reason: str) -> None:
    """Reject batch BATCH_ID and every requested card in it."""
    from producers.approvals import reject_batch

    report = reject_batch(app.store(), batch_id, by=approver, reason=reason)
    click.echo(f"batch {report.batch_id} rejected by {approver}")


COMMANDS = (batch,)
