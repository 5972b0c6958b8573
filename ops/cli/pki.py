"""The CA: ``cardline pki init|export|crl``."""

from __future__ import annotations

from pathlib import Path

import click

from ops.cli.context import CliContext, data_dir_option, handle_errors, pass_app


@click.group()
def pki() -> None:
    """The CA: set-up, export, CRLs."""


@pki.command("init")
@data_dir_option
@pass_app
@handle_errors
def pki_init(app: CliContext) -> None:
    """Create the root and issuing CA ([pki.ca] in CARDLINE_CONFIG); never overwrites."""
    from ops.line import DataPaths
    from workers.ca import CertificateAuthority

    settings = app.settings
    paths = DataPaths(settings.data_dir)
    paths.make()
    ca = CertificateAuthority.init(
        paths.ca, settings.secret_box(), settings.pki, pin=settings.ca_secret_pin()
    )
    click.echo(f"root CA:    {ca.root.subject.rfc4514_string()}")
    click.echo(
        f"issuing CA: {ca.issuing.subject.rfc4514_string()} "
        f"({settings.pki.ca.algorithm}, key in {settings.pki.ca.key_store})"
    )


@pki.command("export")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@data_dir_option
@pass_app
@handle_errors
def pki_export(app: CliContext, out: Path) -> None:
    """Write ca-chain.pem, root.pem, issuing.pem and the current crl.pem to OUT."""
    from ops.pki import export_ca

    for path in export_ca(app.settings, out):
        click.echo(str(path))


@pki.command("crl")
@data_dir_option
@pass_app
@handle_errors
def pki_crl(app: CliContext) -> None:
    """Publish a fresh CRL now."""
    from ops.pki import publish_now

    number = publish_now(app.settings)
    click.echo(f"published CRL number {number}")


COMMANDS = (pki,)
