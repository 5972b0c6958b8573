"""Card holders: ``cardline user ...`` — one at a time or by search, and the lifecycle
that carries their cards and certificates with them."""

from __future__ import annotations

from typing import Any

import click

from ops.cli.context import CliContext, data_dir_option, handle_errors, pass_app
from ops.cli.lifecycle import LOCK_REASONS_CHOICE, add_lifecycle_commands


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
@click.option("--by", required=True)
@data_dir_option
@pass_app
@handle_errors
def user_create(app: CliContext, values: tuple[str, ...], by: str) -> None:
    """Create one user from NAME=VALUE attributes (the batch CSV's columns)."""
    from producers.users import create_user

    user_id = create_user(app.store(), _pairs(values), by=by, policy=app.settings.policy)
    click.echo(f"user {user_id} created")


@user.command("edit")
@click.argument("who", metavar="USER")
@click.option("--set", "values", multiple=True, required=True, help="NAME=VALUE (repeat).")
@click.option("--by", required=True)
@data_dir_option
@pass_app
@handle_errors
def user_edit(app: CliContext, who: str, values: tuple[str, ...], by: str) -> None:
    """Change attributes of USER (e-mail or id)."""
    from producers.users import update_user

    unique = app.settings.policy.email_unique
    changed = update_user(app.store(), who, _pairs(values), by=by, unique_email=unique)
    click.echo(f"changed: {', '.join(changed) or 'nothing'}")


@user.command("list")
@click.option("--state", default=None)
@click.option("--text", default=None, help="In name, e-mail, organisation or external id.")
@click.option("--page", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--per-page", type=click.IntRange(1, 500), default=50, show_default=True)
@data_dir_option
@pass_app
@handle_errors
def user_list(
    app: CliContext, state: str | None, text: str | None, page: int, per_page: int
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
@click.argument("who", metavar="USER")
@click.option("--by", required=True)
@data_dir_option
@pass_app
@handle_errors
def user_delete(app: CliContext, who: str, by: str) -> None:
    """Delete a locked USER."""
    from producers.users import delete_user

    click.echo(delete_user(app.store(), who, by=by))


@user.command("bulk")
@click.argument("action", type=click.Choice(["deactivate", "lock", "delete"]))
@click.option("--state", default=None, help="Only users in this state.")
@click.option("--text", default=None, help="Only users matching this text.")
@click.option("--reason", default=None)
@click.option("--lock-reason", type=LOCK_REASONS_CHOICE, default="privilege_withdrawn")
@click.option("--by", required=True)
@data_dir_option
@pass_app
@handle_errors
def user_bulk(
    app: CliContext,
    action: str,
    state: str | None,
    text: str | None,
    reason: str | None,
    lock_reason: str,
    by: str,
) -> None:
    """The multi-user forms: ACTION every user the search finds, one at a time."""
    from rich.progress import Progress

    from producers import lifecycle, users

    store = app.store()
    reasons = app.settings.policy.deactivation_reasons
    actions = {
        "deactivate": lambda u: lifecycle.deactivate_user(
            store, u, by=by, reason=reason, reasons=reasons
        ),
        "lock": lambda u: lifecycle.lock_user(store, u, by=by, reason=lock_reason),
        "delete": lambda u: users.delete_user(store, u, by=by, reason=reason),
    }
    with Progress(console=app.err, transient=True) as progress:
        bar = progress.add_task(f"{action} users", total=None)
        report = users.for_each_user(
            store,
            state=state,
            text=text,
            action=actions[action],
            on_progress=lambda done, total: progress.update(bar, completed=done, total=total),
        )
    click.echo(f"{action}: {len(report.done)} done, {len(report.refused)} refused")
    for user_id, why in sorted(report.refused.items()):
        click.echo(f"  user {user_id}: {why}")


COMMANDS = (user,)
