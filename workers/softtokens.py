"""Soft tokens: ``pki`` issues the key, certificate and P12; ``notify`` delivers it.

``issue_softtoken`` (pki queue) generates the key server-side, issues the certificate
for the token type's profile, generates the passphrase, seals P12 and passphrase and
moves the token ``approved -> issued`` with its certificate row, in one transaction.
A second delivery finds the token issued and stops; a delivery that loses the race
rolls its work back (``StateConflict``), so a token never has two certificates.

``deliver_softtoken`` (notify queue) writes the P12 and the PEM of its certificate to
the data dir (mode 0600) and, where mail is configured, mails the P12 to the holder
(the passphrase only when ``softtoken_mail_passphrase`` is on, in a separate message).
"""

from __future__ import annotations

import datetime as dt

import structlog
from cryptography.hazmat.primitives import serialization

from db import keys
from db.files import atomic_write
from db.models import Certificate, SoftToken, utcnow
from db.secrets import context
from db.transition import create, record, transition
from schemas.messages import DeliverSoftToken, IssueSoftToken
from schemas.states import CertState, SoftTokenState
from workers.ca import Holder
from workers.context import WorkerContext
from workers.p12 import build_p12, generate_passphrase, hash_passphrase

log = structlog.get_logger(__name__)


def issue_softtoken(ctx: WorkerContext, job: IssueSoftToken) -> None:
    with ctx.store.read() as s:
        token = s.get(SoftToken, job.soft_token_id)
        if token is None or token.state != SoftTokenState.APPROVED:
            log.info("pki.softtoken_skipped", soft_token_id=job.soft_token_id)
            return
        kind = ctx.pki.softtoken_type(token.token_type)
        user = token.user
        holder = Holder(
            common_name=user.display_name,
            email=user.email,
            upn=user.upn,
            organization=user.organization,
            org_unit=user.org_unit,
            country=user.country,
        )
        token_type = token.token_type
    key = keys.generate(kind.key_algorithm)
    cert = ctx.ca.issue_for_key(
        key.public_key(),
        profile=kind.profile,
        holder=holder,
        validity_days=ctx.policy.certificate_validity_days,
    )
    passphrase = generate_passphrase()
    p12 = build_p12(
        name=f"{holder.common_name} ({kind.description})",
        key=key,
        cert=cert,
        chain=[ctx.ca.issuing, ctx.ca.root],
        passphrase=passphrase,
    )
    tid = job.soft_token_id
    with ctx.store.tx() as s:
        token = s.get(SoftToken, tid)
        if token is None or token.state != SoftTokenState.APPROVED:
            return
        row = Certificate(
            state=CertState.VALID,
            credential_id=None,
            attempt_id=None,
            soft_token_id=tid,
            usage=token_type,
            serial=f"{cert.serial_number:x}",
            subject=cert.subject.rfc4514_string(),
            not_before=cert.not_valid_before_utc.astimezone(dt.UTC),
            not_after=cert.not_valid_after_utc.astimezone(dt.UTC),
            pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
        )
        create(s, row, actor="worker:pki", reason=f"soft token {token_type} certificate")
        transition(
            s,
            token,
            "issue",
            actor="worker:pki",
            reason=f"certificate {row.serial}",
            changes={
                "passphrase_hash": hash_passphrase(passphrase),
                "passphrase_sealed": ctx.box.seal(
                    passphrase.reveal(), context=context("soft_token", tid, "passphrase")
                ),
                "p12_sealed": ctx.box.seal(p12, context=context("soft_token", tid, "p12")),
                "issued_at": utcnow(),
            },
            messages=[DeliverSoftToken(soft_token_id=tid)],
        )
    log.info("pki.softtoken_issued", soft_token_id=tid, token_type=token_type, serial=row.serial)


def deliver_softtoken(ctx: WorkerContext, job: DeliverSoftToken) -> None:
    tid = job.soft_token_id
    with ctx.store.read() as s:
        token = s.get(SoftToken, tid)
        if token is None or token.p12_sealed is None or token.p12_path is not None:
            log.info("notify.softtoken_skipped", soft_token_id=tid)
            return
        cert = s.query(Certificate).filter(Certificate.soft_token_id == tid).one()
        sealed_p12, sealed_pass = token.p12_sealed, token.passphrase_sealed
        email, name, token_type = token.user.email, token.user.display_name, token.token_type
        cert_pem = cert.pem
    p12 = ctx.box.open_bytes(sealed_p12, context=context("soft_token", tid, "p12"))
    base = ctx.softtokens_dir / f"{tid}-{token_type}"
    p12_path = atomic_write(base.with_suffix(".p12"), p12, mode=0o600)
    atomic_write(base.with_suffix(".pem"), cert_pem)
    mailed = None
    if ctx.mailer is not None:
        ctx.mailer.send_softtoken(
            to=email, holder=name, token_type=token_type, p12=p12, filename=p12_path.name
        )
        if ctx.pki.softtoken_mail_passphrase and sealed_pass is not None:
            ctx.mailer.send_passphrase(
                to=email,
                holder=name,
                token_type=token_type,
                passphrase=ctx.box.open(
                    sealed_pass, context=context("soft_token", tid, "passphrase")
                ),
            )
        mailed = utcnow()
    with ctx.store.tx() as s:
        # Read under the audit head lock: a second delivery that got here first is seen.
        token = s.get(SoftToken, tid)
        if token is not None and token.p12_path is None:
            record(
                s,
                token,
                "deliver",
                actor="worker:notify",
                reason="P12 written" + (" and mailed" if mailed else ""),
                changes={"p12_path": str(p12_path), "mailed_at": mailed},
            )
    log.info("notify.softtoken_delivered", soft_token_id=tid, mailed=mailed is not None)
