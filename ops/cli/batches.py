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
@click.option(
    "--ignore-column",
    "ignore_columns",
    multiple=True,
    metavar="NAME",
    help="A column of another system's to read and drop (repeatable); any other "
    "unknown column refuses the file.",
)
@click.option(
    "--max-rows",
    type=click.IntRange(min=1),
    default=200_000,
    show_default=True,
    help="Refuse a file of more rows than this.",
)
@click.option(
    "--max-rejects",
    type=click.IntRange(min=1),
    default=10_000,
    show_default=True,
    help="Refuse a file with more rejected rows than this.",
)
@data_dir_option
@json_option
@pass_app
@handle_errors
@requires("batch.import")
def batch_import(
    app: CliContext,
    file: Path,
    line: str | None,
    ignore_columns: tuple[str, ...],
    max_rows: int,
    max_rejects: int,
    as_json: bool,
    who: Caller,
) -> None:
    """Import FILE (CSV, UTF-8) as one batch order of card requests (you request them,
    so you may not approve them). The file is refused whole, nothing imported, beyond
    --max-rows rows or --max-rejects rejected rows."""
    from ops.intake import import_file

    code = import_file(
        app.settings,
        file,
        requested_by=who.actor,
        line=line,
        as_json=as_json,
        console=app.out,
        ignore_columns=ignore_columns,
        max_rows=max_rows,
        max_rejects=max_rejects,
    )
    sys.exit(code)


@batch.command("list")
@click.option("--state", default=None, help="Only batches in this state.")
@click.option("--page", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of a table.")
@data_dir_option
@pass_app
@handle_errors
@requires("batch.read")
def batch_list(app: CliContext, state: str | None, page: int, as_json: bool, who: Caller) -> None:
    """Batches, newest first, with their cards counted by state."""
    from rich.table import Table

    from producers.batches import list_batches

    found = list_batches(app.store(), state=state, page=page)
    if as_json:
        click.echo(found.model_dump_json())
        return
    table = Table("id", "name", "state", "requested by", "approved by", "cards", "rejects")
    table.title = f"batches {len(found.items)} of {found.total} (page {found.page})"
    for b in found.items:
        cards = ", ".join(f"{state} {n}" for state, n in b.cards.items()) or "-"
        table.add_row(
            str(b.id),
            b.name,
            b.state,
            b.requested_by,
            b.approved_by or "",
            cards,
            str(b.rejected_rows),
        )
    app.out.print(table)


@batch.command("show")
@click.argument("batch_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of text.")
@data_dir_option
@pass_app
@handle_errors
@requires("batch.read")
def batch_show(app: CliContext, batch_id: int, as_json: bool, who: Caller) -> None:
    """One batch: state, requester and approver, rejected rows, cards by state."""
    from producers.batches import get_batch

    b = get_batch(app.store(), batch_id)
    if as_json:
        click.echo(b.model_dump_json())
        return
    click.echo(f"batch {b.id} {b.name!r}: {b.state}" + (f" ({b.reason})" if b.reason else ""))
    click.echo(
        f"requested by {b.requested_by} at {b.created_at}; approved by {b.approved_by or '-'}"
    )
    click.echo(f"{b.card_count} cards, {b.rejected_rows} rows rejected")
    for state, n in b.cards.items():
        click.echo(f"  {state}: {n}")


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
