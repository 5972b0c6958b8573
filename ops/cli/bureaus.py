"""Service bureaus: ``cardline bureau export|import|report|certificate|schema``."""

from __future__ import annotations

import json
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
    print_json,
    requires,
)

if TYPE_CHECKING:
    from producers.principals import Caller
    from schemas.bureau import BureauConfig


@click.group()
def bureau() -> None:
    """Service bureaus (seed 000): signed order files out, delivery files in."""


def _config(app: CliContext, name: str) -> BureauConfig:
    from schemas.errors import ConfigurationError

    bureaus = app.settings.bureaus
    if name not in bureaus:
        known = ", ".join(sorted(bureaus)) or "none"
        raise ConfigurationError(f"no [bureaus.{name}] in the configuration (configured: {known})")
    return bureaus[name]


def bureau_dir(app: CliContext) -> Path:
    return app.settings.data_dir / "bureaus"


@bureau.command("export")
@click.option("--bureau", "name", required=True, help="The bureau ([bureaus.NAME]).")
@data_dir_option
@json_option
@pass_app
@handle_errors
@requires("bureau.export")
def bureau_export(app: CliContext, name: str, as_json: bool, who: Caller) -> None:
    """One order file of every ready card routed to the bureau (signed, encrypted to
    the bureau); each card goes to at_bureau. Nothing to order: no file."""
    from producers.bureaus import export_order, identity

    config = _config(app, name)
    me = identity(bureau_dir(app), app.settings.secret_box())
    done = export_order(
        app.store(),
        name,
        config,
        me,
        bureau_dir(app) / name / "orders",
        by=who.actor,
        policy=app.settings.policy,
    )
    if as_json:
        print_json(
            {"bureau": name, "sequence": None, "cards": 0}
            if done is None
            else {
                "bureau": name,
                "sequence": done.sequence,
                "file_id": done.file_id,
                "path": str(done.path),
                "cards": done.cards,
            }
        )
        return
    if done is None:
        click.echo(f"nothing to order from {name}")
        return
    click.echo(f"order file {done.sequence} for {name}: {done.cards} cards -> {done.path}")


@bureau.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--bureau", "name", required=True, help="The bureau that sent it.")
@data_dir_option
@json_option
@pass_app
@handle_errors
@requires("bureau.import")
def bureau_import(app: CliContext, file: Path, name: str, as_json: bool, who: Caller) -> None:
    """Import a delivery file: checked whole (signature, sequence, every record) and
    refused whole, naming the record, or applied in one transaction."""
    from producers.bureaus import import_delivery

    done = import_delivery(
        app.store(),
        name,
        _config(app, name),
        file.read_bytes(),
        by=who.actor,
        policy=app.settings.policy,
        keep_dir=bureau_dir(app) / name / "deliveries",
    )
    if as_json:
        print_json(done.__dict__)
        return
    click.echo(
        f"delivery {done.sequence} from {name}: {done.produced} produced (issued, to "
        f"activate at a desk), {done.reordered} to order again, {done.failed} failed"
    )


@bureau.command("report")
@click.option("--bureau", "name", default=None, help="One bureau [default: all].")
@data_dir_option
@json_option
@pass_app
@handle_errors
@requires("bureau.read")
def bureau_report(app: CliContext, name: str | None, as_json: bool, who: Caller) -> None:
    """Per order file: ordered = produced + rejected + outstanding; cards outstanding
    too long; blanks the bureau spoiled. Exit 1 when a file does not balance."""
    from rich.table import Table

    from producers.bureaus import report

    found = report(app.store(readonly=True), app.settings.bureaus, only=name)
    if as_json:
        print_json(found.as_dict())
    else:
        table = Table(title="order files")
        for column in ("bureau", "file", "created", "ordered", "produced", "rejected"):
            table.add_column(column)
        table.add_column("outstanding")
        table.add_column("difference")
        for f in found.files:
            table.add_row(
                f.bureau,
                str(f.sequence),
                f.created_at.isoformat(timespec="seconds"),
                *(str(n) for n in (f.ordered, f.produced, f.rejected, f.outstanding)),
                str(f.difference),
            )
        app.out.print(table)
        for line in found.overdue:
            app.out.print(f"outstanding too long: {line['order_line_id']} (card {line['card_id']})")
        for bureau_name, spoiled in found.spoiled_blanks.items():
            app.out.print(f"{bureau_name}: {spoiled} blanks reported spoiled")
        app.out.print("balanced" if found.balanced else "NOT balanced")
    if not found.balanced:
        sys.exit(1)


@bureau.command("certificate")
@data_dir_option
@pass_app
@handle_errors
def bureau_certificate(app: CliContext) -> None:
    """Print Cardline's order-signing certificate (PEM), made on first use: the bureau
    pins it to check our order files."""
    from cryptography.hazmat.primitives import serialization

    from producers.bureaus import identity

    me = identity(bureau_dir(app), app.settings.secret_box())
    click.echo(me.certificate.public_bytes(serialization.Encoding.PEM).decode(), nl=False)


@bureau.command("schema")
@click.argument("which", type=click.Choice(["order", "delivery"]))
def bureau_schema(which: str) -> None:
    """Print the published JSON Schema of the order or the delivery file."""
    from schemas.bureau import json_schemas

    click.echo(json.dumps(json_schemas()[f"bureau-{which}-v1.schema.json"], indent=2))


COMMANDS = (bureau,)
