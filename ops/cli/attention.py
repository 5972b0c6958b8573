"""Work waiting for a person: ``cardline attention list|resolve`` and ``cardline waits``."""

from __future__ import annotations

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


@click.group()
def attention() -> None:
    """Work that failed for a reason a retry cannot cure and waits for a person."""


@attention.command("list")
@data_dir_option
@json_option
@pass_app
@handle_errors
@requires("attention.read")
def attention_list(app: CliContext, as_json: bool, who: Caller) -> None:
    """Open items: what, which wait, the reason, since when."""
    from db.summary import attention_list as open_attention

    with app.store(readonly=True).read() as s:
        items = open_attention(s)
    if as_json:
        print_json({"needs_attention": items})
        return
    if not items:
        click.echo("nothing needs attention")
    for a in items:
        click.echo(f"{a['id']}\t{a['entity']} {a['entity_id']}\t{a['wait']}\t{a['reason']}")


@attention.command("resolve")
@click.argument("attention_id", type=int)
@data_dir_option
@pass_app
@handle_errors
@requires("attention.resolve")
def attention_resolve(app: CliContext, attention_id: int, who: Caller) -> None:
    """Mark an item resolved once its cause is fixed; the reconciler then re-drives it."""
    from db import attention as attention_mod

    with app.store().tx() as s:
        row = attention_mod.resolve(s, attention_id, by=who.actor)
    click.echo(f"resolved {row.entity} {row.entity_id} ({row.wait}); it will be re-driven")


@click.command()
def waits() -> None:
    """The table of waits: what waits for which message, and how it is re-driven."""
    from workers.waits import markdown_table

    click.echo(markdown_table(), nl=False)


COMMANDS = (attention, waits)
