"""PKI operations for the CLI: export the CA and CRL, export certificates, publish now."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select

from db.files import atomic_write
from db.models import Certificate
from db.secrets import Secret
from ops.config import Settings
from ops.line import DataPaths, worker_context
from ops.store import open_checked
from schemas.messages import PublishCrl
from workers.crl import publish_crl

# Exports go where the operator says, for others to use: certificates and CRLs are
# public material, so they stay readable (the data dir's own copies are 0600).
PUBLIC = 0o644


def publish_now(settings: Settings) -> int:
    ctx = worker_context(settings, open_checked(settings), settings.secret_box())
    number = publish_crl(ctx, PublishCrl(reason="operator"), force=True)
    assert number is not None  # forced publication always publishes
    return number


def export_ca(settings: Settings, out: Path) -> list[Path]:
    """The chain, each CA certificate, and a CRL fresh enough to verify against."""
    ctx = worker_context(settings, open_checked(settings), settings.secret_box())
    publish_crl(ctx, PublishCrl(reason="export"))
    issuing_crl = x509.load_der_x509_crl((ctx.crl_dir / "issuing.crl").read_bytes())
    root_crl = x509.load_der_x509_crl((ctx.crl_dir / "root.crl").read_bytes())
    pem = serialization.Encoding.PEM
    files = {
        "ca-chain.pem": ctx.ca.chain_pem().encode(),
        "root.pem": ctx.ca.root.public_bytes(pem),
        "issuing.pem": ctx.ca.issuing.public_bytes(pem),
        "crl.pem": issuing_crl.public_bytes(pem),
        "root-crl.pem": root_crl.public_bytes(pem),
        "crls.pem": issuing_crl.public_bytes(pem) + root_crl.public_bytes(pem),
    }
    return [atomic_write(out / name, data, mode=PUBLIC) for name, data in files.items()]


def export_certs(settings: Settings, status: str, out: Path) -> int:
    store = open_checked(settings)
    with store.read() as s:
        rows = s.execute(
            select(Certificate.serial, Certificate.pem).where(Certificate.state == status)
        ).all()
    for serial, pem in rows:
        atomic_write(out / f"{serial}.pem", pem, mode=PUBLIC)
    return len(rows)


def export_escrow_pfx(
    settings: Settings, card: str, out: Path, *, by: str, request_id: int | None = None
) -> tuple[Path, Secret]:
    """Card ``card``'s escrowed key and certificate (with the CA chain) as a PFX at ``out``,
    under a one-time password generated here, returned once and stored nowhere. Under
    ``[approvals] escrow_export`` only as the collection of ``by``'s approved request
    ``request_id`` (spent by this export)."""
    from db.keys import PrivateKey
    from producers.escrow import escrowed_key
    from workers.ca import CertificateAuthority
    from workers.p12 import build_p12, generate_passphrase

    box = settings.secret_box()
    paths = DataPaths(settings.data_dir)
    # The CA first: a CA that cannot be loaded must not spend an approved request.
    ca = CertificateAuthority.load(paths.ca, box, settings.pki, pin=settings.ca_secret_pin())
    escrow = escrowed_key(
        open_checked(settings),
        box,
        card,
        by=by,
        steps=settings.approvals,
        request_id=request_id,
    )
    key = serialization.load_pem_private_key(escrow.key_pem.reveal().encode(), password=None)
    assert isinstance(key, PrivateKey)  # escrowed keys are generated here: RSA or EC
    password = generate_passphrase()
    pfx = build_p12(
        name=f"{escrow.holder} (encryption, card {escrow.card_number})",
        key=key,
        cert=x509.load_pem_x509_certificate(escrow.cert_pem.encode()),
        chain=[ca.issuing, ca.root],
        passphrase=password,
    )
    return atomic_write(out, pfx, mode=0o600), password
