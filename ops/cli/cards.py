"""Cards: ``cardline card ...`` — requests and decisions, renewal, the lifecycle of a
produced card (deactivate, reactivate, lock) and paging through cards."""

from __future__ import annotations

from typing import Any

import click

from ops.cli.context import CliContext, data_dir_option, handle_errors, pass_app
from ops.cli.lifecycle import add_lifecycle_commands


@click.group()
def card() -> None:
    """A produced card: deactivate, reactivate, lock (with its certificates)."""


add_lifecycle_commands(
    card,
    "card",
    {
        "deactivate": "Take CARD (number or id) out of use; its certificates go on hold.",
        "reactivate": "Put CARD back in use; its held certificates are released.",
        "lock": "Lock CARD for good; its certificates are revoked with REASON.",
    },
)


@card.command("request")
@click.argument("users", nargs=-1, required=True)
@click.option("--by", required=True)
@click.option("--line", default=None)
@data_dir_option
@pass_app
@handle_errors
def card_request(app: CliContext, users: tuple[str, ...], by: str, line: str | None) -> None:
    """Request a card for each USER (e-mail or id); several make one batch order."""
    from producers.cards import request_cards

    policy = app.settings.policy
    ids = request_cards(app.store(), users, by=by, policy=policy, line=line)
    click.echo(f"cards requested: {', '.join(map(str, ids))}")


@card.command("issue")
@click.argument("users", nargs=-1, required=True)
@click.option("--by", required=True)
@click.option("--line", default=None)
@data_dir_option
@pass_app
@handle_errors
def card_issue(app: CliContext, users: tuple[str, ...], by: str, line: str | None) -> None:
    """Issue a card for each USER at once (the operator's issuance: no approval step)."""
    from producers.cards import issue_cards

    ids = issue_cards(app.store(), users, by=by, policy=app.settings.policy, line=line)
    click.echo(f"cards issued: {', '.join(map(str, ids))}")


@card.command("decide")
@click.argument("decision", type=click.Choice(["approve", "reject", "postpone"]))
@click.argument("card_ref", metavar="CARD")
@click.option("--by", required=True)
@click.option("--reason", default=None, help="Required to reject or postpone.")
@click.option("--comment", default=None)
@data_dir_option
@pass_app
@handle_errors
def card_decide(
    app: CliContext,
    decision: str,
    card_ref: str,
    by: str,
    reason: str | None,
    comment: str | None,
) -> None:
    """Approve, reject or postpone the request CARD (never your own)."""
    from producers import cards

    store = app.store()
    if decision == "approve":
        state = cards.approve_card(store, card_ref, by=by, comment=comment)
    elif decision == "reject":
        state = cards.reject_card(store, card_ref, by=by, reason=reason or "", comment=comment)
    else:
        state = cards.postpone_card(store, card_ref, by=by, reason=reason or "")
    click.echo(state)


@card.command("step")
@click.argument("step", type=click.Choice(["cancel", "activate", "renew"]))
@click.argument("card_ref", metavar="CARD")
@click.option("--by", required=True)
@data_dir_option
@pass_app
@handle_errors
def card_step(app: CliContext, step: str, card_ref: str, by: str) -> None:
    """Cancel a request, activate an issued card, or renew an active card's certificates."""
    from producers import cards

    steps = {
        "cancel": cards.cancel_card,
        "activate": cards.activate_card,
        "renew": cards.renew_card,
    }
    click.echo(steps[step](app.store(), card_ref, by=by))


@card.command("edit")
@click.argument("card_ref", metavar="CARD")
@click.option("--line", required=True, help="The production line it goes to.")
@click.option("--by", required=True)
@data_dir_option
@pass_app
@handle_errors
def card_edit(app: CliContext, card_ref: str, line: str, by: str) -> None:
    """Move CARD (not yet at a station) to another production line."""
    from producers.cards import edit_card

    changed = edit_card(app.store(), card_ref, by=by, line=line, policy=app.settings.policy)
    click.echo(f"changed: {', '.join(changed) or 'nothing'}")


@card.command("list")
@click.option("--state", default=None)
@click.option("--kind", type=click.Choice(["card", "temp_card"]), default=None)
@click.option("--user", "who", default=None, help="Only this holder's (e-mail or id).")
@click.option("--page", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--per-page", type=click.IntRange(1, 500), default=50, show_default=True)
@data_dir_option
@pass_app
@handle_errors
def card_list(
    app: CliContext,
    state: str | None,
    kind: str | None,
    who: str | None,
    page: int,
    per_page: int,
) -> None:
    """Cards and temporary cards by id, one page at a time."""
    from producers.cards import search_cards

    found = search_cards(
        app.store(), state=state, kind=kind, user=who, page=page, per_page=per_page
    )
    _card_table(app, found.items, found.total, found.page)


def _card_table(app: CliContext, items: list[Any], total: int, page: int) -> None:
    from rich.table import Table

    table = Table("id", "kind", "state", "number", "holder", "line", "valid until", "certs")
    table.title = f"cards {len(items)} of {total} (page {page})"
    for c in items:
        valid = sum(1 for state in c.certificates.values() if state == "valid")
        table.add_row(
            str(c.id),
            c.kind,
            c.state,
            c.card_number or "",
            c.user_email or "",
            c.line,
            (c.valid_until or "")[:10],
            f"{valid}/{len(c.certificates)}",
        )
    app.out.print(table)


COMMANDS = (card,)
