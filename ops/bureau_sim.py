"""A service bureau, simulated from the published format alone (``schemas.bureau``).

It imports nothing of Cardline's but that format module. Given an order file, it
decrypts it with the bureau's encryption key, checks Cardline's signature against the
certificate the bureau pinned, "produces" every card (rejecting a seeded share with a
reason from the published list), and writes a delivery file signed with the bureau's
signing key::

    python -m ops.bureau_sim keys --out DIR          # the bureau's keys and certificates
    python -m ops.bureau_sim produce ORDER.p7m --keys DIR --cardline-cert signing.pem \\
        --sequence 1 --out delivery.p7s [--reject-rate 0.1] [--seed 7] [--only N]

``--only N`` delivers the first N records (a partial delivery: the rest stays
outstanding at Cardline). The chip serials are random, 16 hex digits, as a real
bureau's ICCSNs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import sys
import uuid
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from schemas import bureau as fmt

_REASONS = sorted(fmt.REJECT_REASONS)


def make_keys(out: Path, name: str = "Example Card Bureau") -> None:
    """The bureau's signing and encryption keys (RSA-2048) and self-signed certificates:
    ``sign.pem``/``sign.key``, ``enc.pem``/``enc.key`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    for role in ("sign", "enc"):
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, name),
                x509.NameAttribute(NameOID.COMMON_NAME, f"{name} {role}"),
            ]
        )
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=365))
            .sign(key, hashes.SHA256())
        )
        (out / f"{role}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path = out / f"{role}.key"
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        key_path.chmod(0o600)


def _load(keys: Path, role: str) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    cert = x509.load_pem_x509_certificate((keys / f"{role}.pem").read_bytes())
    key = serialization.load_pem_private_key((keys / f"{role}.key").read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return cert, key


def read_order(data: bytes, keys: Path, cardline_cert: x509.Certificate) -> fmt.OrderFile:
    """The order in ``data``: decrypted, its signature checked, its content validated."""
    enc_cert, enc_key = _load(keys, "enc")
    signed = fmt.open_envelope(data, enc_cert, enc_key)
    return fmt.OrderFile.model_validate_json(fmt.verify(signed, cardline_cert))


def produce(
    order: fmt.OrderFile,
    *,
    sequence: int,
    reject_rate: float = 0.0,
    seed: int | None = None,
    only: int | None = None,
    spoiled: int = 0,
) -> fmt.DeliveryFile:
    """The delivery of ``order``'s first ``only`` records (all by default)."""
    rng = random.Random(seed)
    records: list[fmt.DeliveryRecord] = []
    for record in order.records[:only]:
        if rng.random() < reject_rate:
            records.append(
                fmt.DeliveryRecord(
                    order_line_id=record.order_line_id,
                    outcome="rejected",
                    reason=rng.choice(_REASONS),
                )
            )
            continue
        records.append(
            fmt.DeliveryRecord(
                order_line_id=record.order_line_id,
                outcome="produced",
                chip_serial=f"{rng.getrandbits(64):016X}",
                card_serial=f"B{rng.getrandbits(32):010d}",
                atr="3BF81300008131FE454A434F5076323431B7",
            )
        )
    produced = sum(r.outcome == "produced" for r in records)
    return fmt.DeliveryFile(
        header=fmt.DeliveryHeader(
            file_id=uuid.UUID(int=rng.getrandbits(128)).hex
            if seed is not None
            else uuid.uuid4().hex,
            bureau=order.header.bureau,
            sequence=sequence,
            created_at=dt.datetime.now(dt.UTC),
            produced_count=produced,
            rejected_count=len(records) - produced,
            record_count=len(records),
            spoiled_blanks=spoiled,
        ),
        records=records,
    )


def _fresh_id() -> str:
    return uuid.uuid4().hex


def sign_delivery(delivery: fmt.DeliveryFile, keys: Path) -> bytes:
    cert, key = _load(keys, "sign")
    return fmt.sign(fmt.dumps(delivery), cert, key)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.bureau_sim", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    keys = sub.add_parser("keys", help="make the bureau's keys and certificates")
    keys.add_argument("--out", type=Path, required=True)
    run = sub.add_parser("produce", help="produce an order file's cards")
    run.add_argument("order", type=Path)
    run.add_argument("--keys", type=Path, required=True)
    run.add_argument("--cardline-cert", type=Path, required=True)
    run.add_argument("--sequence", type=int, required=True)
    run.add_argument("--out", type=Path, required=True)
    run.add_argument("--reject-rate", type=float, default=0.0)
    run.add_argument("--seed", type=int, default=None)
    run.add_argument("--only", type=int, default=None)
    run.add_argument("--spoiled", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "keys":
        make_keys(args.out)
        print(f"bureau keys in {args.out}: give sign.pem and enc.pem to Cardline")
        return 0
    cardline = x509.load_pem_x509_certificate(args.cardline_cert.read_bytes())
    try:
        order = read_order(args.order.read_bytes(), args.keys, cardline)
    except (fmt.CmsError, ValueError) as exc:
        print(f"order file refused: {exc}", file=sys.stderr)
        return 2
    delivery = produce(
        order,
        sequence=args.sequence,
        reject_rate=args.reject_rate,
        seed=args.seed,
        only=args.only,
        spoiled=args.spoiled,
    )
    args.out.write_bytes(sign_delivery(delivery, args.keys))
    h = delivery.header
    print(f"delivery {h.sequence}: {h.produced_count} produced, {h.rejected_count} rejected")
    return 0


if __name__ == "__main__":
    sys.exit(main())
