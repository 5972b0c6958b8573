"""Proving who acts: ``cardline admin bootstrap``, ``cardline login|logout|whoami`` and
``cardline roles`` (the one table of who may run what)."""

from __future__ import annotations

import getpass
import os
from pathlib import Path

import click

from ops.cli.context import (
    CliContext,
    data_dir_option,
    handle_errors,
    json_option,
    pass_app,
    print_json,
)


@click.group()
def admin() -> None:
    """The host administrator's commands (they need the store and the master key)."""


@admin.command("bootstrap")
@click.option("--expires-days", type=click.IntRange(1, 3650), default=30, show_default=True)
@data_dir_option
@json_option
@pass_app
@handle_errors
def admin_bootstrap(app: CliContext, expires_days: int, as_json: bool) -> None:
    """Create the administrator principal `admin` (or, run again, recover access to it)
    and print a new token for it, once. It needs the store and the master key, which
    only the host's administrator holds; it is audited as the host account."""
    from ops.store import master_key_check
    from producers.principals import bootstrap_admin

    store = app.store()
    master_key_check(app.settings, store)
    host = f"host:{getpass.getuser()}"
    pid, secret = bootstrap_admin(store, by=host, expires_days=expires_days)
    if as_json:
        print_json({"principal_id": pid, "name": "admin", "token": secret.reveal()})
        return
    app.err.print(
        f"administrator principal {pid} (admin); its token, shown once — "
        "`cardline login` stores it, or set CARDLINE_TOKEN:"
    )
    click.echo(secret.reveal())


@click.command()
@click.option("--token-stdin", is_flag=True, help="Read the token from stdin instead of prompting.")
@data_dir_option
@pass_app
@handle_errors
def login(app: CliContext, token_stdin: bool) -> None:
    """Verify a token against the store and keep it in the token file (mode 0600;
    CARDLINE_TOKEN_FILE) for the CLI's operator commands."""
    import sys

    from producers.principals import authenticate

    presented = (
        sys.stdin.readline().strip()
        if token_stdin
        else click.prompt("token", hide_input=True).strip()
    )
    who = authenticate(app.store(), presented)
    path = app.load_settings().token_file.expanduser()
    _write_private(path, presented)
    roles = ", ".join(sorted(who.roles)) or "no role"
    click.echo(f"logged in as {who.name} (principal {who.id}; {roles}); token kept in {path}")


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text + "\n")
    os.replace(tmp, path)


@click.command()
@data_dir_option
@pass_app
@handle_errors
def logout(app: CliContext) -> None:
    """Forget the token kept by `cardline login` (the token itself stays valid until it
    expires or an administrator revokes it)."""
    path = app.load_settings().token_file.expanduser()
    if path.exists():
        path.unlink()
        click.echo(f"removed {path}")
    else:
        click.echo("not logged in")


@click.command()
@data_dir_option
@json_option
@pass_app
@handle_errors
def whoami(app: CliContext, as_json: bool) -> None:
    """The principal the CLI acts as, and its roles."""
    from producers.principals import authenticate

    who = authenticate(app.store(), app.presented_token())
    roles = sorted(r.value for r in who.roles)
    if as_json:
        print_json({"id": who.id, "name": who.name, "kind": who.kind, "roles": roles})
        return
    click.echo(f"{who.name} (principal {who.id}, {who.kind}): {', '.join(roles) or 'no role'}")


@click.command()
@click.option("--markdown", is_flag=True, help="The table as Markdown (as in the README).")
def roles(markdown: bool) -> None:
    """Which role may run which use case: the one table every check reads."""
    from schemas.permissions import USE_CASES, markdown_table, roles_for

    if markdown:
        click.echo(markdown_table(), nl=False)
        return
    for u in USE_CASES:
        allowed = ", ".join(sorted(r.value for r in roles_for(u.name)))
        click.echo(f"{u.name:<22} {allowed:<40} {u.what}")


COMMANDS = (admin, login, logout, whoami, roles)
