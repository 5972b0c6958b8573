"""Card holders: ``cardline user ...`` — one at a time or by search, and the lifecycle
that carries their cards and certificates with them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from ops.cli.context import CliContext, data_dir_option, handle_errors, pass_app, requires
from ops.cli.lifecycle import LOCK_REASONS_CHOICE, add_lifecycle_commands

if TYPE_CHECKING:
    from producers.principals import Caller


@click.group()
def user() -> None:
    """A card holder: deactivate, reactivate, lock (with their cards and certificates)."""


add_lifecycle_commands(
    user,
    "user",
    {
        "deactivate": "USER (e-mail or id) inactive: their cards inactive, certificates on hold.",
        "reactivate": "USER active again, with what their deactivation put out of use.",
        "lock": "Lock USER: cards locked or cancelled, certificates and soft tokens revoked.",
    },
)


def _pairs(values: tuple[str, ...]) -> dict[str, str | None]:
    """``name=value`` options as a dict (an empty value clears an optional attribute)."""
    from producers.users import EDITABLE  # the attributes an operator may set

    out: dict[str, str | None] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or name not in EDITABLE:
            raise click.BadParameter(f"{item!r}: use NAME=VALUE with NAME one of {EDITABLE}")
        out[name] = value or None
    return out


@user.command("create")
@click.option("--set", "values", multiple=True, required=True, help="NAME=VALUE (repeat).")
@data_dir_option
@pass_app
@handle_errors
@requires("user.create")
def user_create(app: CliContext, values: tuple[str, ...], who: Caller) -> None:
    """Create one user from NAME=VALUE attributes (the batch CSV's columns)."""
    attributes = _pairs(values)
    app.perform(
        who,
        "user.create",
        str(attributes.get("email") or ""),
        {"values": attributes},
        lambda user_id: f"user {user_id} created",
    )


@user.command("edit")
@click.argument("holder", metavar="USER")
@click.option("--set", "values", multiple=True, required=True, help="NAME=VALUE (repeat).")
@data_dir_option
@pass_app
@handle_errors
@requires("user.edit")
def user_edit(app: CliContext, holder: str, values: tuple[str, ...], who: Caller) -> None:
    """Change attributes of USER (e-mail or id)."""
    app.perform(
        who,
        "user.edit",
        holder,
        {"changes": _pairs(values)},
        lambda changed: f"changed: {', '.join(changed) or 'nothing'}",
    )


@user.command("list")
@click.option("--state", default=None)
@click.option("--text", default=None, help="In name, e-mail, organisation or external id.")
@click.option("--page", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--per-page", type=click.IntRange(1, 500), default=50, show_default=True)
@data_dir_option
@pass_app
@handle_errors
@requires("user.read")
def user_list(
    app: CliContext, state: str | None, text: str | None, page: int, per_page: int, who: Caller
) -> None:
    """Users by id, one page at a time."""
    from producers.users import search_users

    found = search_users(app.store(), state=state, text=text, page=page, per_page=per_page)
    _user_table(app, found.items, found.total, found.page)


def _user_table(app: CliContext, items: list[Any], total: int, page: int) -> None:
    from rich.table import Table

    table = Table("id", "state", "email", "name", "organization", "cards")
    table.title = f"users {len(items)} of {total} (page {page})"
    for u in items:
        table.add_row(
            str(u.id),
            u.state,
            u.email,
            f"{u.first_name} {u.last_name}",
            f"{u.organization} / {u.org_unit}",
            str(u.cards),
        )
    app.out.print(table)


@user.command("delete")
@click.argument("holder", metavar="USER")
@click.option("--reason", default=None)
@data_dir_option
@pass_app
@handle_errors
@requires("user.delete")
def user_delete(app: CliContext, holder: str, reason: str | None, who: Caller) -> None:
    """Delete a locked USER."""
    app.perform(who, "user.delete", holder, {"reason": reason}, lambda state: state)


@user.command("bulk")
@click.argument("action", type=click.Choice(["deactivate", "lock", "delete"]))
@click.option("--state", default=None, help="Only users in this state.")
@click.option("--text", default=None, help="Only users matching this text.")
@click.option("--reason", default=None)
@click.option("--lock-reason", type=LOCK_REASONS_CHOICE, default="privilege_withdrawn")
@data_dir_option
@pass_app
@handle_errors
@requires("user.bulk")
def user_bulk(
    app: CliContext,
    action: str,
    state: str | None,
    text: str | None,
    reason: str | None,
    lock_reason: str,
    who: Caller,
) -> None:
    """The multi-user forms: ACTION every user the search finds, one at a time."""
    from rich.progress import Progress

    from producers import pending, users

    store, settings = app.store(), app.settings
    params = {"reason": lock_reason if action == "lock" else reason}

    def act(holder: str) -> object:  # held for an approver when user.ACTION's step is on
        return pending.perform(
            store,
            f"user.{action}",
            holder,
            params,
            by=who.actor,
            policy=settings.policy,
            steps=settings.approvals,
        )

    with Progress(console=app.err, transient=True) as progress:
        bar = progress.add_task(f"{action} users", total=None)
        report = users.for_each_user(
            store,
            state=state,
            text=text,
            action=act,
            on_progress=lambda done, total: progress.update(bar, completed=done, total=total),
        )
    click.echo(f"{action}: {len(report.done)} done, {len(report.refused)} refused")
    for user_id, why in sorted(report.refused.items()):
        click.echo(f"  user {user_id}: {why}")


COMMANDS = (user,)
