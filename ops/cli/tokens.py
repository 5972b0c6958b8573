"""Bearer tokens of the HTTP API: ``cardline token create|list|revoke``."""

from __future__ import annotations

import click

from ops.cli.context import CliContext, data_dir_option, handle_errors, pass_app
from schemas.roles import Role


@click.group()
def token() -> None:
    """Bearer tokens of the HTTP API."""


@token.command("create")
@click.option("--name", required=True, help="Who uses it (the actor in the audit log).")
@click.option("--role", required=True, type=click.Choice([r.value for r in Role]))
@click.option("--by", default="cli", show_default=True, help="Who creates it (audited).")
@data_dir_option
@pass_app
@handle_errors
def token_create(app: CliContext, name: str, role: str, by: str) -> None:
    """Create a token; it is printed once and stored only as a hash."""
    from producers.tokens import create_token

    token_id, secret = create_token(app.store(), name=name, role=role, by=by)
    app.err.print(f"token {token_id} for {name} ({role}); shown once, keep it safe:")
    click.echo(secret.reveal())


@token.command("list")
@data_dir_option
@pass_app
@handle_errors
def token_list(app: CliContext) -> None:
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
@click.option("--by", default="cli", show_default=True)
@data_dir_option
@pass_app
@handle_errors
def token_revoke(app: CliContext, token_id: int, by: str) -> None:
    """Revoke token TOKEN_ID: it stops working at once."""
    from producers.tokens import revoke_token

    revoke_token(app.store(), token_id, by=by)
    click.echo(f"token {token_id} revoked")


COMMANDS = (token,)
