"""Service bureaus (issue 15, seed 000): order files out, delivery files in, every card
accounted for.

- ``export_order``: every ``ready`` card on a line routed to the bureau goes into one
  order file (``schemas.bureau``: signed by Cardline, encrypted to the bureau), and to
  ``at_bureau``, in the transaction that records the file. Nothing to order: no file.
  A card is never in two outstanding orders (a partial unique index backs it).
- ``import_delivery``: a delivery file signed by the bureau is checked whole before
  anything changes: its signature against the configured certificate, its bureau, its
  sequence (the next one: no gap, no replay), its id and digest (never seen), every
  record (an order line of this bureau still outstanding, once, a chip serial bound to
  no other card) and its counts. Any refusal names the record and changes nothing.
  Then, in one transaction: a produced card is bound to its chip serial and
  ``issued``, with an ``activate`` card update waiting for it at a desk (which
  personalises the chip and makes it ``active``, terminating the holder's previous
  card then); a rejected one is ordered again (``ready``) or ``failed`` per the reason.
- ``report``: per order file, ordered = produced + rejected + outstanding, the cards
  outstanding too long, the blanks the bureau reported spoiled.

Cardline's signing identity for order files is made on first use under the data dir:
an EC P-256 key sealed with the master key and a self-signed certificate the bureau
pins (``identity``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db import updates
from db.engine import Store
from db.files import atomic_write
from db.models import BureauFile, BureauLine, Credential, utcnow
from db.secrets import SecretBox
from db.transition import create_many, transition, transition_many
from schemas import bureau as fmt
from schemas.errors import ConfigurationError, PermanentError, ValidationFailed
from schemas.policy import Policy
from schemas.states import BureauLineState, CardState

log = structlog.get_logger(__name__)

_KEY_FILE, _CERT_FILE = "signing.key.sealed", "signing.pem"
_KEY_CONTEXT = "bureau:signing_key"


# --- Cardline's signing identity --------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def name(self) -> str:
        return self.certificate.subject.rfc4514_string()


def identity(folder: Path, box: SecretBox) -> Identity:
    """Cardline's order-signing key and certificate in ``folder``, made on first use."""
    key_path, cert_path = folder / _KEY_FILE, folder / _CERT_FILE
    if key_path.exists() and cert_path.exists():
        pem = box.open_bytes(key_path.read_text(encoding="ascii"), context=_KEY_CONTEXT)
        key = serialization.load_pem_private_key(pem, password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)  # made below
        return Identity(x509.load_pem_x509_certificate(cert_path.read_bytes()), key)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Cardline"),
            x509.NameAttribute(NameOID.COMMON_NAME, "Cardline bureau order signing"),
        ]
    )
    now = utcnow()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3 * 365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    atomic_write(key_path, box.seal(pem, context=_KEY_CONTEXT))
    atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    log.info("bureau.identity_made", subject=cert.subject.rfc4514_string())
    return Identity(cert, key)


def _certificate(path: Path, what: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"{what} {path}: {exc}") from None


# --- the order file ---------------------------------------------------------------------


@dataclass(frozen=True)
class Exported:
    bureau: str
    file_id: str
    sequence: int
    path: Path
    cards: int


def _keys(policy: Policy) -> list[fmt.KeySpec]:
    specs = [
        fmt.KeySpec(usage=u.value, key_type=policy.card_key_type, made="at_activation")
        for u in policy.on_card_usages
    ]
    if policy.escrow:
        specs.append(fmt.KeySpec(usage="encryption", key_type="rsa-2048", made="escrowed"))
    return specs


def _holder(cred: Credential) -> fmt.Holder:
    user = cred.user
    assert user is not None  # a card on a bureau line is a holder's card
    return fmt.Holder(
        first_name=user.first_name,
        last_name=user.last_name,
        email=user.email or None,
        organization=user.organization or None,
        org_unit=user.org_unit or None,
        title=user.title,
    )


def export_order(
    store: Store,
    name: str,
    config: fmt.BureauConfig,
    me: Identity,
    out_dir: Path,
    *,
    by: str,
    policy: Policy,
) -> Exported | None:
    """One order file of every ready card routed to bureau ``name`` (None: nothing to
    order, no file). The file is written before the transaction commits; a failed
    commit removes it."""
    where = f"bureaus.{name}.encryption_certificate"
    recipient = _certificate(config.encryption_certificate, where)
    if not isinstance(recipient.public_key(), rsa.RSAPublicKey):
        raise ConfigurationError(f"{where}: an RSA key is needed")
    path: Path | None = None
    try:
        with store.tx() as s:
            cards = list(
                s.scalars(
                    select(Credential)
                    .where(
                        Credential.state == CardState.READY,
                        Credential.line.in_(config.lines),
                    )
                    .order_by(Credential.id)
                    .with_for_update()
                )
            )
            if not cards:
                return None
            sequence = _next_sequence(s, name, "order")
            file_id = uuid.uuid4().hex
            lines = [f"{name}-{sequence}-{n}" for n in range(1, len(cards) + 1)]
            order = fmt.OrderFile(
                header=fmt.OrderHeader(
                    file_id=file_id,
                    bureau=name,
                    sequence=sequence,
                    created_at=utcnow(),
                    issuer=me.name,
                    record_count=len(cards),
                ),
                records=[
                    fmt.OrderRecord(
                        order_line_id=line_id,
                        card_number=cred.card_number or str(cred.id),
                        holder=_holder(cred),
                        face_layout=config.face_layout,
                        keys=_keys(policy),
                    )
                    for line_id, cred in zip(lines, cards, strict=True)
                ],
            )
            data = fmt.envelope(fmt.sign(fmt.dumps(order), me.certificate, me.key), recipient)
            path = out_dir / f"{name}-order-{sequence:06d}.p7m"
            row = BureauFile(
                bureau=name,
                kind="order",
                file_id=file_id,
                sequence=sequence,
                sha256=hashlib.sha256(data).hexdigest(),
                record_count=len(cards),
                created_by=by,
                path=str(path),
            )
            s.add(row)
            s.flush()
            create_many(
                s,
                BureauLine,
                [
                    {
                        "state": BureauLineState.ORDERED,
                        "order_line_id": line_id,
                        "bureau": name,
                        "credential_id": cred.id,
                        "order_file_id": row.id,
                    }
                    for line_id, cred in zip(lines, cards, strict=True)
                ],
                actor=by,
                reasons=[f"in order file {sequence} of {name}"] * len(cards),
            )
            transition_many(
                s,
                Credential,
                [c.id for c in cards],
                "export",
                actor=by,
                reason=f"ordered from bureau {name} (order file {sequence})",
            )
            out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            atomic_write(path, data)
    except BaseException:
        if path is not None:
            path.unlink(missing_ok=True)
        raise
    log.info("bureau.exported", bureau=name, sequence=sequence, cards=len(cards))
    return Exported(name, file_id, sequence, path, len(cards))


def _next_sequence(s: Session, name: str, kind: str) -> int:
    last = s.scalar(
        select(func.max(BureauFile.sequence)).where(
            BureauFile.bureau == name, BureauFile.kind == kind
        )
    )
    return int(last or 0) + 1


# --- the delivery file ------------------------------------------------------------------


@dataclass
class Imported:
    bureau: str
    sequence: int
    produced: int = 0
    reordered: int = 0
    failed: int = 0


def _refuse(message: str, where: str = "file") -> ValidationFailed:
    return ValidationFailed(f"delivery file refused: {message}", field=where)


def read_delivery(data: bytes, name: str, config: fmt.BureauConfig) -> fmt.DeliveryFile:
    """The delivery file in ``data`` if its signature is the bureau's and its content
    is a valid delivery file for bureau ``name``; ``ValidationFailed`` otherwise."""
    signer = _certificate(config.signing_certificate, f"bureaus.{name}.signing_certificate")
    try:
        content = fmt.verify(data, signer)
    except fmt.CmsError as exc:
        raise _refuse(str(exc)) from None
    try:
        delivery = fmt.DeliveryFile.model_validate_json(content)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "file"
        raise _refuse(f"{where}: {first['msg']}", where) from None
    if delivery.header.bureau != name:
        raise _refuse(f"it is bureau {delivery.header.bureau!r}'s, not {name!r}'s", "header.bureau")
    return delivery


def import_delivery(
    store: Store,
    name: str,
    config: fmt.BureauConfig,
    data: bytes,
    *,
    by: str,
    policy: Policy,
    keep_dir: Path | None = None,
) -> Imported:
    """Check the delivery file ``data`` of bureau ``name`` whole, then apply it in one
    transaction (see the module docstring)."""
    delivery = read_delivery(data, name, config)
    header = delivery.header
    digest = hashlib.sha256(data).hexdigest()
    result = Imported(name, header.sequence)
    with store.tx() as s:
        expected = _next_sequence(s, name, "delivery")
        seen = s.scalar(
            select(BureauFile.sequence).where(
                (BureauFile.file_id == header.file_id) | (BureauFile.sha256 == digest)
            )
        )
        if seen is not None:
            raise _refuse(f"already imported (delivery file {seen})", "header.file_id")
        if header.sequence != expected:
            raise _refuse(
                f"sequence {header.sequence} out of order: the next is {expected}",
                "header.sequence",
            )
        ids = [r.order_line_id for r in delivery.records]
        lines = {
            line.order_line_id: line
            for line in s.scalars(
                select(BureauLine).where(BureauLine.order_line_id.in_(ids)).with_for_update()
            )
        }
        serials = [r.chip_serial for r in delivery.records if r.chip_serial]
        bound = dict(
            s.execute(
                select(Credential.chip_serial, Credential.id).where(
                    Credential.chip_serial.in_(serials)
                )
            ).all()
        )
        seen_lines: dict[str, int] = {}
        seen_serials: dict[str, int] = {}
        for n, record in enumerate(delivery.records):
            where = f"records.{n}"
            line = lines.get(record.order_line_id)
            if record.order_line_id in seen_lines:
                raise _refuse(
                    f"order line {record.order_line_id} appears twice "
                    f"(records.{seen_lines[record.order_line_id]})",
                    where,
                )
            seen_lines[record.order_line_id] = n
            if line is None or line.bureau != name:
                raise _refuse(f"order line {record.order_line_id} is not one of {name}'s", where)
            if line.state != BureauLineState.ORDERED:
                raise _refuse(
                    f"order line {record.order_line_id} was already delivered ({line.state})",
                    where,
                )
            if record.chip_serial and record.chip_serial in seen_serials:
                raise _refuse(
                    f"chip serial {record.chip_serial} appears twice "
                    f"(records.{seen_serials[record.chip_serial]})",
                    where,
                )
            if record.chip_serial:
                seen_serials[record.chip_serial] = n
            if record.chip_serial and record.chip_serial in bound:
                raise _refuse(
                    f"chip serial {record.chip_serial} is already bound to card "
                    f"{bound[record.chip_serial]}",
                    where,
                )
        row = BureauFile(
            bureau=name,
            kind="delivery",
            file_id=header.file_id,
            sequence=header.sequence,
            sha256=digest,
            record_count=header.record_count,
            produced_count=header.produced_count,
            rejected_count=header.rejected_count,
            spoiled_blanks=header.spoiled_blanks,
            created_by=by,
        )
        s.add(row)
        s.flush()
        now = utcnow()
        for record in delivery.records:
            line = lines[record.order_line_id]
            cred = s.get(Credential, line.credential_id, with_for_update=True)
            assert cred is not None  # a foreign key guarantees it
            common = {"delivery_file_id": row.id, "delivered_at": now}
            if record.outcome == "produced":
                transition(
                    s,
                    line,
                    "deliver",
                    actor=by,
                    reason=f"delivery file {header.sequence}",
                    changes={
                        **common,
                        "chip_serial": record.chip_serial,
                        "card_serial": record.card_serial,
                        "atr": record.atr,
                    },
                )
                transition(
                    s,
                    cred,
                    "deliver",
                    actor=by,
                    reason=f"produced by bureau {name} (delivery file {header.sequence}): "
                    "waiting for activation at a desk",
                    changes={"chip_serial": record.chip_serial},
                )
                updates.request_activation(
                    s,
                    cred,
                    [u.value for u in policy.on_card_usages],
                    by=by,
                    replaces=config.replaces_previous,
                )
                result.produced += 1
                continue
            assert record.reason is not None  # checked by DeliveryRecord
            transition(
                s,
                line,
                "reject",
                actor=by,
                reason=f"{record.reason}: {fmt.REJECT_REASONS[record.reason][0]}",
                changes={**common, "reason": record.reason},
            )
            if config.reject_policy(record.reason) == "reorder":
                transition(s, cred, "reorder", actor=by, reason=f"bureau rejected: {record.reason}")
                result.reordered += 1
            else:
                transition(
                    s, cred, "bureau_fail", actor=by, reason=f"bureau rejected: {record.reason}"
                )
                result.failed += 1
        if keep_dir is not None:
            keep_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            kept = keep_dir / f"{name}-delivery-{header.sequence:06d}.p7s"
            atomic_write(kept, data)
            row.path = str(kept)
    log.info(
        "bureau.imported",
        bureau=name,
        sequence=header.sequence,
        produced=result.produced,
        reordered=result.reordered,
        failed=result.failed,
    )
    return result


# --- accounting -------------------------------------------------------------------------


@dataclass
class FileBalance:
    bureau: str
    sequence: int
    file_id: str
    created_at: dt.datetime
    ordered: int
    produced: int
    rejected: int
    outstanding: int

    @property
    def difference(self) -> int:
        return self.ordered - self.produced - self.rejected - self.outstanding


@dataclass
class BureauReport:
    files: list[FileBalance] = field(default_factory=list)
    overdue: list[dict[str, Any]] = field(default_factory=list)
    spoiled_blanks: dict[str, int] = field(default_factory=dict)

    @property
    def balanced(self) -> bool:
        return all(f.difference == 0 for f in self.files)

    def as_dict(self) -> dict[str, Any]:
        return {
            "balanced": self.balanced,
            "files": [
                {
                    "bureau": f.bureau,
                    "sequence": f.sequence,
                    "file_id": f.file_id,
                    "created_at": f.created_at.isoformat(),
                    "ordered": f.ordered,
                    "produced": f.produced,
                    "rejected": f.rejected,
                    "outstanding": f.outstanding,
                    "difference": f.difference,
                }
                for f in self.files
            ],
            "overdue": self.overdue,
            "spoiled_blanks": self.spoiled_blanks,
        }


def report(
    store: Store,
    bureaus: dict[str, fmt.BureauConfig],
    *,
    only: str | None = None,
    now: dt.datetime | None = None,
) -> BureauReport:
    """Per order file: ordered = produced + rejected + outstanding (the record count the
    file was made with against its lines' states), the lines outstanding past the
    bureau's ``outstanding_days``, and the blanks each bureau reported spoiled."""
    if only is not None and only not in bureaus:
        raise PermanentError(f"no bureau {only!r} is configured ({', '.join(sorted(bureaus))})")
    now = now or utcnow()
    out = BureauReport()
    names = [only] if only else sorted(bureaus)
    with store.read() as s:
        for name in names:
            counts: dict[int, Counter[str]] = {}
            for file_id, state, n in s.execute(
                select(BureauLine.order_file_id, BureauLine.state, func.count())
                .where(BureauLine.bureau == name)
                .group_by(BureauLine.order_file_id, BureauLine.state)
            ):
                counts.setdefault(file_id, Counter())[state] = n
            for f in s.scalars(
                select(BureauFile)
                .where(BureauFile.bureau == name, BureauFile.kind == "order")
                .order_by(BureauFile.sequence)
            ):
                c = counts.get(f.id, Counter())
                out.files.append(
                    FileBalance(
                        bureau=name,
                        sequence=f.sequence,
                        file_id=f.file_id,
                        created_at=f.created_at,
                        ordered=f.record_count,
                        produced=c[BureauLineState.PRODUCED],
                        rejected=c[BureauLineState.REJECTED],
                        outstanding=c[BureauLineState.ORDERED],
                    )
                )
            late = now - dt.timedelta(days=bureaus[name].outstanding_days)
            for line in s.scalars(
                select(BureauLine)
                .where(
                    BureauLine.bureau == name,
                    BureauLine.state == BureauLineState.ORDERED,
                    BureauLine.created_at < late,
                )
                .order_by(BureauLine.id)
                .limit(1000)
            ):
                out.overdue.append(
                    {
                        "bureau": name,
                        "order_line_id": line.order_line_id,
                        "card_id": line.credential_id,
                        "ordered_at": line.created_at.isoformat(),
                    }
                )
            out.spoiled_blanks[name] = int(
                s.scalar(
                    select(func.coalesce(func.sum(BureauFile.spoiled_blanks), 0)).where(
                        BureauFile.bureau == name, BureauFile.kind == "delivery"
                    )
                )
                or 0
            )
    return out
