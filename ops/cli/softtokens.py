"""Software tokens (PKCS#12): ``cardline softtoken ...``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from ops.cli.certs import REASONS_CHOICE
from ops.cli.context import CliContext, data_dir_option, handle_errors, pass_app, requires

if TYPE_CHECKING:
    from producers.principals import Caller


@click.group()
def softtoken() -> None:
    """Software tokens (PKCS#12): request, approve, reject, cancel, revoke, password."""


@softtoken.command("types")
@data_dir_option
@pass_app
@handle_errors
def softtoken_types(app: CliContext) -> None:
    """The soft token types configured in [pki.softtokens]."""
    for name, kind in sorted(app.settings.pki.softtokens.items()):
        click.echo(f"{name}\t{kind.key_algorithm}\t{kind.description}")


@softtoken.command("request")
@click.option("--user", required=True, help="The holder's e-mail or user id.")
@click.option("--type", "types", multiple=True, required=True, help="A token type (repeat).")
@data_dir_option
@pass_app
@handle_errors
@requires("softtoken.request")
def softtoken_request(app: CliContext, user: str, types: tuple[str, ...], who: Caller) -> None:
    """Request one soft token per --type for USER."""
    from producers.softtokens import request_softtokens

    pki = app.settings.pki
    ids = request_softtokens(app.store(), user, types, by=who.actor, pki=pki)
    state = "requested" if pki.softtoken_approval else "approved"
    for token_id, name in zip(ids, types, strict=True):
        click.echo(f"soft token {token_id} ({name}) {state}")


@softtoken.command("approve")
@click.argument("token_id", type=int)
@data_dir_option
@pass_app
@handle_errors
@requires("softtoken.decide")
def softtoken_approve(app: CliContext, token_id: int, who: Caller) -> None:
    """Approve soft token TOKEN_ID; the PKI worker issues it."""
    from producers.softtokens import approve

    click.echo(approve(app.store(), token_id, by=who.actor))


@softtoken.command("reject")
@click.argument("token_id", type=int)
@click.option("--reason", required=True)
@data_dir_option
@pass_app
@handle_errors
@requires("softtoken.decide")
def softtoken_reject(app: CliContext, token_id: int, reason: str, who: Caller) -> None:
    """Reject soft token request TOKEN_ID."""
    from producers.softtokens import reject

    click.echo(reject(app.store(), token_id, by=who.actor, reason=reason))


@softtoken.command("cancel")
@click.argument("token_id", type=int)
@data_dir_option
@pass_app
@handle_errors
@requires("softtoken.manage")
def softtoken_cancel(app: CliContext, token_id: int, who: Caller) -> None:
    """Cancel soft token TOKEN_ID before it is issued."""
    from producers.softtokens import cancel

    click.echo(cancel(app.store(), token_id, by=who.actor))


@softtoken.command("revoke")
@click.argument("token_id", type=int)
@click.option("--reason", required=True, type=REASONS_CHOICE)
@data_dir_option
@pass_app
@handle_errors
@requires("softtoken.manage")
def softtoken_revoke(app: CliContext, token_id: int, reason: str, who: Caller) -> None:
    """Revoke soft token TOKEN_ID and its certificate; the CRL is re-published."""
    from producers.softtokens import revoke
    from schemas.states import RevocationReason

    click.echo(revoke(app.store(), token_id, by=who.actor, reason=RevocationReason(reason)))


@softtoken.command("password")
@click.argument("token_id", type=int)
@data_dir_option
@pass_app
@handle_errors
@requires("softtoken.password")
def softtoken_password(app: CliContext, token_id: int, who: Caller) -> None:
    """Display the passphrase of soft token TOKEN_ID (audited; your roles must allow it)."""
    from producers.softtokens import reveal_passphrase

    settings = app.settings
    secret = reveal_passphrase(
        app.store(), settings.secret_box(), token_id, by=who.actor, roles=frozenset(who.roles)
    )
    click.echo(secret.reveal())


@softtoken.command("list")
@click.option("--user", default=None, help="Only this holder's (e-mail or id).")
@click.option("--state", default=None)
@data_dir_option
@pass_app
@handle_errors
@requires("softtoken.read")
def softtoken_list(app: CliContext, user: str | None, state: str | None, who: Caller) -> None:
    """Soft tokens with their state, certificate serial and P12 file."""
    from rich.table import Table

    from producers.softtokens import list_softtokens

    views = list_softtokens(app.store(), user=user, state=state)
    table = Table("id", "user", "type", "state", "requested by", "approved by", "serial", "P12")
    for v in views:
        table.add_row(
            str(v.id),
            v.user_email,
            v.token_type,
            v.state,
            v.requested_by,
            v.approved_by or "",
            v.serial or "",
            v.p12_path or "",
        )
    app.out.print(table)


COMMANDS = (softtoken,)
