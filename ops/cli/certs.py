"""Certificates: ``cardline certs export|revoke|hold|release``."""

from __future__ import annotations

from pathlib import Path

import click

from ops.cli.context import CliContext, data_dir_option, handle_errors, pass_app
from schemas.states import OPERATOR_REASONS

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
def certs_export(app: CliContext, status: str, out: Path) -> None:
    """Write every certificate in STATUS to OUT as <serial>.pem."""
    from ops.pki import export_certs

    count = export_certs(app.settings, status, out)
    click.echo(f"{count} {status} certificates written to {out}")


@certs.command("revoke")
@click.argument("serial")
@click.option("--reason", required=True, type=REASONS_CHOICE)
@click.option("--by", required=True, help="Who revokes it (audited).")
@data_dir_option
@pass_app
@handle_errors
def certs_revoke(app: CliContext, serial: str, reason: str, by: str) -> None:
    """Revoke the certificate SERIAL (hex); the CRL is re-published."""
    from producers.certificates import revoke
    from schemas.states import RevocationReason

    click.echo(revoke(app.store(), serial, reason=RevocationReason(reason), by=by))


@certs.command("hold")
@click.argument("serial")
@click.option("--by", required=True)
@data_dir_option
@pass_app
@handle_errors
def certs_hold(app: CliContext, serial: str, by: str) -> None:
    """Put the certificate SERIAL on hold (listed on the CRL as certificateHold)."""
    from producers.certificates import hold

    click.echo(hold(app.store(), serial, by=by))


@certs.command("release")
@click.argument("serial")
@click.option("--by", required=True)
@data_dir_option
@pass_app
@handle_errors
def certs_release(app: CliContext, serial: str, by: str) -> None:
    """Release the certificate SERIAL from hold (removed from the next CRL)."""
    from producers.certificates import release

    click.echo(release(app.store(), serial, by=by))


COMMANDS = (certs,)
