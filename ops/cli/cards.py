"""Cards: ``cardline card ...`` — requests and decisions, renewal, the lifecycle of a
produced card (deactivate, reactivate, lock) and paging through cards."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from ops.cli.context import CliContext, data_dir_option, handle_errors, pass_app, requires
from ops.cli.lifecycle import add_lifecycle_commands
from schemas.states import CertUsage

if TYPE_CHECKING:
    from producers.principals import Caller


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
@click.option("--line", default=None)
@data_dir_option
@pass_app
@handle_errors
@requires("card.request")
def card_request(app: CliContext, users: tuple[str, ...], line: str | None, who: Caller) -> None:
    """Request a card for each USER (e-mail or id); several make one batch order."""
    from producers.cards import request_cards

    policy = app.settings.policy
    ids = request_cards(app.store(), users, by=who.actor, policy=policy, line=line)
    click.echo(f"cards requested: {', '.join(map(str, ids))}")


@card.command("issue")
@click.argument("users", nargs=-1, required=True)
@click.option("--line", default=None)
@data_dir_option
@pass_app
@handle_errors
@requires("card.issue")
def card_issue(app: CliContext, users: tuple[str, ...], line: str | None, who: Caller) -> None:
    """Issue a card for each USER at once (local issuance; refused under validated
    issuance, ``[policy] approval_required``)."""
    from producers.cards import issue_cards

    ids = issue_cards(app.store(), users, by=who.actor, policy=app.settings.policy, line=line)
    click.echo(f"cards issued: {', '.join(map(str, ids))}")


@card.command("decide")
@click.argument("decision", type=click.Choice(["approve", "reject", "postpone"]))
@click.argument("card_ref", metavar="CARD")
@click.option("--reason", default=None, help="Required to reject or postpone.")
@click.option("--comment", default=None)
@data_dir_option
@pass_app
@handle_errors
@requires("card.decide")
def card_decide(
    app: CliContext,
    decision: str,
    card_ref: str,
    reason: str | None,
    comment: str | None,
    who: Caller,
) -> None:
    """Approve, reject or postpone the request CARD (never your own)."""
    from producers import cards

    store, by = app.store(), who.actor
    if decision == "approve":
        state = cards.approve_card(store, card_ref, by=by, comment=comment)
    elif decision == "reject":
        state = cards.reject_card(store, card_ref, by=by, reason=reason or "", comment=comment)
    else:
        state = cards.postpone_card(store, card_ref, by=by, reason=reason or "")
    click.echo(state)


@card.command("cancel")
@click.argument("card_ref", metavar="CARD")
@data_dir_option
@pass_app
@handle_errors
@requires("card.cancel")
def card_cancel(app: CliContext, card_ref: str, who: Caller) -> None:
    """Cancel the request CARD (not yet produced)."""
    from producers import cards

    click.echo(cards.cancel_card(app.store(), card_ref, by=who.actor))


@card.command("activate")
@click.argument("card_ref", metavar="CARD")
@data_dir_option
@pass_app
@handle_errors
@requires("card.activate")
def card_activate(app: CliContext, card_ref: str, who: Caller) -> None:
    """Activate the issued card CARD."""
    from producers import cards

    click.echo(cards.activate_card(app.store(), card_ref, by=who.actor))


@card.command("renew")
@click.argument("card_ref", metavar="CARD")
@click.option(
    "--usage",
    "usages",
    multiple=True,
    type=click.Choice([u.value for u in CertUsage]),
    help="A certificate to deliver (repeat) [default: every one whose key the chip made].",
)
@click.option("--keep-keys", is_flag=True, help="Re-certify the chip's keys, no new keys.")
@click.option(
    "--recover",
    "recover",
    multiple=True,
    metavar="SERIAL",
    help="Also write this escrowed key of the holder's (repeat; see `escrow keys`).",
)
@click.option("--recover-all", is_flag=True, help="Also write every escrowed key of the holder's.")
@data_dir_option
@pass_app
@handle_errors
@requires("card.renew")
def card_renew(
    app: CliContext,
    card_ref: str,
    usages: tuple[str, ...],
    keep_keys: bool,
    recover: tuple[str, ...],
    recover_all: bool,
    who: Caller,
) -> None:
    """Renew the active card CARD: new keys and certificates, written when the card is
    next at an update desk (the old ones stay valid until then; PIN and PUK kept)."""
    params: dict[str, object] = {"usages": list(usages), "keep_keys": keep_keys}
    if recover or recover_all:
        params["recover"] = [] if recover_all else list(recover)
    app.perform(who, "card.renew", card_ref, params, lambda state: state)


@card.command("unblock")
@click.argument("card_ref", metavar="CARD")
@click.option("--challenge", required=True, help="The 16 hex digits the card shows.")
@data_dir_option
@pass_app
@handle_errors
@requires("card.unblock")
def card_unblock(app: CliContext, card_ref: str, challenge: str, who: Caller) -> None:
    """Answer CARD's unblock challenge (help desk): prints the response the holder types
    into the card, which then takes a new PIN. Audited; the response is never logged."""
    from producers.unblock import unblock_response

    answer = unblock_response(
        app.store(), app.settings.secret_box(), card_ref, challenge, by=who.actor
    )
    click.echo(answer.response)


@card.command("reset-pin")
@click.argument("card_ref", metavar="CARD")
@data_dir_option
@pass_app
@handle_errors
@requires("card.unblock")
def card_reset_pin(app: CliContext, card_ref: str, who: Caller) -> None:
    """Reset CARD's PIN with its PUK when the holder next inserts it at an update desk
    (help desk; a new PIN letter follows). For a card without an admin key, or a holder
    who brings the card in."""
    from producers.unblock import request_pin_reset

    update_id = request_pin_reset(app.store(), card_ref, by=who.actor)
    click.echo(f"PIN reset {update_id} waits for the card at a desk")


@card.command("show")
@click.argument("card_ref", metavar="CARD")
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of tables.")
@data_dir_option
@pass_app
@handle_errors
@requires("card.read")
def card_show(app: CliContext, card_ref: str, as_json: bool, who: Caller) -> None:
    """CARD (number or id): its certificates, whether each is on the chip, its updates
    (a renewal is pending until the card is next at an update desk), its production
    attempts and its timeline (every audited event)."""
    from rich.table import Table

    from producers.cards import get_card

    shown = get_card(app.store(), card_ref)
    if as_json:
        click.echo(shown.model_dump_json())
        return
    app.out.print(
        f"card {shown.id} ({shown.kind}) {shown.card_number or '-'}: {shown.state}, "
        f"holder {shown.user_email or '-'}, line {shown.line}"
    )
    certs = Table("usage", "serial", "state", "on the chip", "valid until", title="certificates")
    for c in shown.certificate_list:
        state = f"{c.state} ({c.revocation_reason})" if c.revocation_reason else c.state
        certs.add_row(c.usage, c.serial, state, "yes" if c.on_chip else "no", c.not_after[:10])
    app.out.print(certs)
    if shown.updates:
        table = Table("id", "kind", "state", "requested by", "requested", "done", title="updates")
        for u in shown.updates:
            done = u.applied_at or ", ".join(u.steps_done) or u.error or ""
            table.add_row(str(u.id), u.kind, u.state, u.requested_by, u.requested_at, done)
        app.out.print(table)
    if shown.attempt_list:
        table = Table(
            "#", "station", "chip", "state", "fault", "started", "ended", title="attempts"
        )
        for a in shown.attempt_list:
            fault = f"{a.fault}: {a.detail}" if a.fault else ""
            table.add_row(
                str(a.number),
                a.station_id or "",
                a.chip_serial or "",
                a.state,
                fault,
                a.started_at,
                a.finished_at or "",
            )
        app.out.print(table)
    timeline = Table("at", "who", "what", "from", "to", "why", title="timeline")
    for e in shown.events:
        timeline.add_row(
            e.at, e.actor, e.action, e.from_state or "", e.to_state or "", e.reason or ""
        )
    app.out.print(timeline)


@card.command("edit")
@click.argument("card_ref", metavar="CARD")
@click.option("--line", required=True, help="The production line it goes to.")
@data_dir_option
@pass_app
@handle_errors
@requires("card.edit")
def card_edit(app: CliContext, card_ref: str, line: str, who: Caller) -> None:
    """Move CARD (not yet at a station) to another production line."""
    from producers.cards import edit_card

    policy = app.settings.policy
    changed = edit_card(app.store(), card_ref, by=who.actor, line=line, policy=policy)
    click.echo(f"changed: {', '.join(changed) or 'nothing'}")


@card.command("list")
@click.option("--state", default=None)
@click.option("--kind", type=click.Choice(["card", "temp_card"]), default=None)
@click.option("--user", "holder", default=None, help="Only this holder's (e-mail or id).")
@click.option("--page", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--per-page", type=click.IntRange(1, 500), default=50, show_default=True)
@data_dir_option
@pass_app
@handle_errors
@requires("card.read")
def card_list(
    app: CliContext,
    state: str | None,
    kind: str | None,
    holder: str | None,
    page: int,
    per_page: int,
    who: Caller,
) -> None:
    """Cards and temporary cards by id, one page at a time."""
    from producers.cards import search_cards

    found = search_cards(
        app.store(), state=state, kind=kind, user=holder, page=page, per_page=per_page
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
