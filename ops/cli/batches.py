"""Batch orders: ``cardline batch import|approve|reject``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ops.cli.context import (
    CliContext,
    data_dir_option,
    handle_errors,
    json_option,
    pass_app,
    requires,
)

if TYPE_CHECKING:
    from producers.principals import Caller


@click.group()
def batch() -> None:
    """Batch orders: import a CSV of card requests, approve or reject it."""


@batch.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--line", default=None, help="Station line to produce on.")
@data_dir_option
@json_option
@pass_app
@handle_errors
@requires("batch.import")
def batch_import(app: CliContext, file: Path, line: str | None, as_json: bool, who: Caller) -> None:
    """Import FILE (CSV, UTF-8) as one batch order of card requests (you request them,
    so you may not approve them)."""
    from ops.intake import import_file

    code = import_file(
        app.settings, file, requested_by=who.actor, line=line, as_json=as_json, console=app.out
    )
    sys.exit(code)


@batch.command("approve")
@click.argument("batch_id", type=int)
@data_dir_option
@pass_app
@handle_errors
@requires("batch.decide")
def batch_approve(app: CliContext, batch_id: int, who: Caller) -> None:
    """Approve batch BATCH_ID (never your own): every requested card in it goes to
    production."""
    from producers.approvals import approve_batch

    report = approve_batch(app.store(), batch_id, by=who.actor)
    click.echo(f"batch {report.batch_id} approved by {who.name}: {report.approved} cards")


@batch.command("reject")
@click.argument("batch_id", type=int)
@click.option("--reason", required=True)
@data_dir_option
@pass_app
@handle_errors
@requires("batch.decide")
def batch_reject(app: CliContext, batch_id: int, reason: str, who: Caller) -> None:
    """Reject batch BATCH_ID (never your own) and every requested card in it."""
    from producers.approvals import reject_batch

    report = reject_batch(app.store(), batch_id, by=who.actor, reason=reason)
    click.echo(f"batch {report.batch_id} rejected by {who.name}")


COMMANDS = (batch,)
