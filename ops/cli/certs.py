"""Certificates: ``cardline certs export|revoke|hold|release``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from ops.cli.context import CliContext, data_dir_option, handle_errors, pass_app, requires
from schemas.states import OPERATOR_REASONS

if TYPE_CHECKING:
    from producers.principals import Caller

# The revocation reasons an operator may give.
REASONS_CHOICE = click.Choice([r.value for r in OPERATOR_REASONS])


@click.group()
def certs() -> None:
    """Certificates: export, revoke, hold, release."""


@certs.command("export")
@click.option("--status", type=click.Choice(["valid", "hold", "revoked", "expired"]), required=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@data_dir_option
@pass_app
@handle_errors
@requires("certificate.read")
def certs_export(app: CliContext, status: str, out: Path, who: Caller) -> None:
    """Write every certificate in STATUS to OUT as <serial>.pem."""
    from ops.pki import export_certs

    count = export_certs(app.settings, status, out)
    click.echo(f"{count} {status} certificates written to {out}")


@certs.command("revoke")
@click.argument("serial")
@click.option("--reason", required=True, type=REASONS_CHOICE)
@data_dir_option
@pass_app
@handle_errors
@requires("certificate.revoke")
def certs_revoke(app: CliContext, serial: str, reason: str, who: Caller) -> None:
    """Revoke the certificate SERIAL (hex); the CRL is re-published."""
    app.perform(who, "certificate.revoke", serial, {"reason": reason}, lambda state: state)


@certs.command("hold")
@click.argument("serial")
@data_dir_option
@pass_app
@handle_errors
@requires("certificate.hold")
def certs_hold(app: CliContext, serial: str, who: Caller) -> None:
    """Put the certificate SERIAL on hold (listed on the CRL as certificateHold)."""
    from producers.certificates import hold

    click.echo(hold(app.store(), serial, by=who.actor))


@certs.command("release")
@click.argument("serial")
@data_dir_option
@pass_app
@handle_errors
@requires("certificate.hold")
def certs_release(app: CliContext, serial: str, who: Caller) -> None:
    """Release the certificate SERIAL from hold (removed from the next CRL)."""
    from producers.certificates import release

    click.echo(release(app.store(), serial, by=who.actor))


COMMANDS = (certs,)
