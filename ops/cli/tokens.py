"""Principals and their tokens: ``cardline principal ...`` and ``cardline token ...``.

An administrator (``principal.admin``) creates principals and issues and revokes their
tokens; roles change through ``principal roles`` (``principal.roles``), which an
approval step can hold.
"""

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
from schemas.roles import PrincipalKind, Role

if TYPE_CHECKING:
    from producers.principals import Caller

ROLE_CHOICE = click.Choice([r.value for r in Role])


@click.group()
def principal() -> None:
    """Who may act: operators, identity systems, bureaus, stations, services."""


@principal.command("create")
@click.argument("name")
@click.option("--role", "roles", multiple=True, type=ROLE_CHOICE, help="A role (repeat).")
@click.option(
    "--kind",
    type=click.Choice([k.value for k in PrincipalKind]),
    default=PrincipalKind.OPERATOR.value,
    show_default=True,
)
@click.option("--password", is_flag=True, help="Prompt for a console password too.")
@data_dir_option
@pass_app
@handle_errors
@requires("principal.admin")
def principal_create(
    app: CliContext, name: str, roles: tuple[str, ...], kind: str, password: bool, who: Caller
) -> None:
    """Create principal NAME. With the role-change approval step on, it starts with no
    role and its roles wait for an approver."""
    from db.secrets import Secret
    from producers import principals

    held = app.settings.approvals.required("principal.roles")
    store = app.store()
    pid = principals.create_principal(
        store, name, roles=[] if held else roles, by=who.actor, kind=kind
    )
    click.echo(f"principal {pid} ({principals.normalise_name(name)}) created")
    if held and roles:
        app.perform(who, "principal.roles", str(pid), {"roles": sorted(roles)}, str)
    if password:
        secret = click.prompt("password", hide_input=True, confirmation_prompt=True)
        principals.set_password(store, pid, Secret(secret), by=who.actor)
        click.echo("console password set")


@principal.command("list")
@data_dir_option
@json_option
@pass_app
@handle_errors
@requires("principal.admin")
def principal_list(app: CliContext, as_json: bool, who: Caller) -> None:
    """Principals with their kind, roles and live tokens."""
    from dataclasses import asdict

    from rich.table import Table

    from producers.principals import list_principals

    views = list_principals(app.store())
    if as_json:
        print_json({"principals": [asdict(v) for v in views]})
        return
    table = Table("id", "name", "kind", "roles", "live tokens", "created by", "disabled")
    for v in views:
        table.add_row(
            str(v.id),
            v.name,
            v.kind,
            ", ".join(v.roles) or "none",
            str(v.live_tokens),
            v.created_by,
            "yes" if v.disabled else "",
        )
    app.out.print(table)


@principal.command("roles")
@click.argument("name")
@click.option("--role", "roles", multiple=True, type=ROLE_CHOICE, help="A role (repeat).")
@data_dir_option
@pass_app
@handle_errors
@requires("principal.roles")
def principal_roles(app: CliContext, name: str, roles: tuple[str, ...], who: Caller) -> None:
    """Replace the roles of principal NAME (name or id); none given clears them."""
    from producers.principals import find_principal

    pid = find_principal(app.store(), name)
    app.perform(
        who,
        "principal.roles",
        str(pid),
        {"roles": sorted(set(roles))},
        lambda chosen: f"principal {pid}: {', '.join(chosen) or 'no role'}",
    )


@principal.command("password")
@click.argument("name")
@data_dir_option
@pass_app
@handle_errors
@requires("principal.admin")
def principal_password(app: CliContext, name: str, who: Caller) -> None:
    """Set the console password of principal NAME (prompted, at least 12 characters)."""
    from db.secrets import Secret
    from producers.principals import find_principal, set_password

    pid = find_principal(app.store(), name)
    secret = click.prompt("password", hide_input=True, confirmation_prompt=True)
    set_password(app.store(), pid, Secret(secret), by=who.actor)
    click.echo(f"console password of principal {pid} set")


@click.group()
def token() -> None:
    """Bearer tokens of principals (the API's and the CLI's proof of who acts)."""


@token.command("create")
@click.argument("name")
@click.option("--expires-days", type=click.IntRange(1, 3650), default=90, show_default=True)
@data_dir_option
@json_option
@pass_app
@handle_errors
@requires("principal.admin")
def token_create(app: CliContext, name: str, expires_days: int, as_json: bool, who: Caller) -> None:
    """A new token for principal NAME (name or id); printed once, stored as a hash."""
    from producers.principals import find_principal, issue_token

    pid = find_principal(app.store(), name)
    token_id, secret = issue_token(app.store(), pid, by=who.actor, expires_days=expires_days)
    if as_json:
        print_json({"id": token_id, "principal_id": pid, "token": secret.reveal()})
        return
    app.err.print(f"token {token_id} for principal {pid}; shown once, keep it safe:")
    click.echo(secret.reveal())


@token.command("list")
@data_dir_option
@pass_app
@handle_errors
@requires("principal.admin")
def token_list(app: CliContext, who: Caller) -> None:
    """Tokens by id, principal and its roles (never the tokens themselves)."""
    from rich.table import Table

    from producers.tokens import list_tokens

    table = Table("id", "principal", "roles", "created by", "created", "expires", "revoked")
    for v in list_tokens(app.store()):
        table.add_row(
            str(v.id),
            f"{v.name} (#{v.principal_id})",
            v.roles,
            v.created_by,
            v.created_at,
            v.expires_at or "never",
            "yes" if v.revoked else "",
        )
    app.out.print(table)


@token.command("revoke")
@click.argument("token_id", type=int)
@data_dir_option
@pass_app
@handle_errors
@requires("principal.admin")
def token_revoke(app: CliContext, token_id: int, who: Caller) -> None:
    """Revoke token TOKEN_ID: it stops working at once."""
    from producers.principals import revoke_token

    revoke_token(app.store(), token_id, by=who.actor)
    click.echo(f"token {token_id} revoked")


COMMANDS = (principal, token)
