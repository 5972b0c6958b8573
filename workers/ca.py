"""A minimal two-level CA (root and issuing) built with ``cryptography``.

It issues the three certificates a card needs (authentication, signature,
encryption). The issuing key is sealed under the master key on disk; the full PKI
(profiles from configuration, CRLs, HSM-held keys) is a later stage of the project.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from db.files import atomic_write
from db.secrets import SecretBox
from schemas.errors import PermanentError
from schemas.states import CertUsage

SMARTCARD_LOGON = ObjectIdentifier("1.3.6.1.4.1.311.20.2.2")
MS_UPN = ObjectIdentifier("1.3.6.1.4.1.311.20.2.3")
_KEY_CONTEXT = "ca:issuing:key"


class CsrRejected(PermanentError):
    """A certificate request failed verification."""


@dataclass(frozen=True)
class Holder:
    """The certificate subject's attributes (the Blueprints' certificate attributes)."""

    common_name: str
    email: str
    upn: str
    organization: str
    org_unit: str | None = None
    country: str | None = None


def _der_utf8(text: str) -> bytes:
    body = text.encode()
    n = len(body)
    length = (
        bytes([n])
        if n < 0x80
        else bytes([0x80 | ((n.bit_length() + 7) // 8)])
        + n.to_bytes((n.bit_length() + 7) // 8, "big")
    )
    return b"\x0c" + length + body


def _name(attrs: list[tuple[ObjectIdentifier, str | None]]) -> x509.Name:
    return x509.Name([x509.NameAttribute(oid, value) for oid, value in attrs if value])


def holder_name(holder: Holder) -> x509.Name:
    return _name(
        [
            (NameOID.COUNTRY_NAME, holder.country),
            (NameOID.ORGANIZATION_NAME, holder.organization),
            (NameOID.ORGANIZATIONAL_UNIT_NAME, holder.org_unit),
            (NameOID.COMMON_NAME, holder.common_name),
        ]
    )


def _key_usage(usage: CertUsage, public_key: object) -> x509.KeyUsage:
    flags = dict.fromkeys(
        (
            "digital_signature",
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "key_cert_sign",
            "crl_sign",
            "encipher_only",
            "decipher_only",
        ),
        False,
    )
    if usage is CertUsage.AUTHENTICATION:
        flags["digital_signature"] = True
    elif usage is CertUsage.SIGNATURE:
        flags.update(digital_signature=True, content_commitment=True)
    elif isinstance(public_key, rsa.RSAPublicKey):
        flags.update(key_encipherment=True, data_encipherment=True)
    else:
        # An EC key cannot encipher; key agreement is its encryption usage.
        flags["key_agreement"] = True
    return x509.KeyUsage(**flags)


_EKU = {
    CertUsage.AUTHENTICATION: [ExtendedKeyUsageOID.CLIENT_AUTH, SMARTCARD_LOGON],
    CertUsage.SIGNATURE: [ExtendedKeyUsageOID.EMAIL_PROTECTION],
    CertUsage.ENCRYPTION: [ExtendedKeyUsageOID.EMAIL_PROTECTION],
}


class CertificateAuthority:
    """Root and issuing CA kept in ``ca_dir``; the issuing key sealed at rest."""

    def __init__(
        self,
        root: x509.Certificate,
        issuing: x509.Certificate,
        key: CertificateIssuerPrivateKeyTypes,
    ) -> None:
        self.root = root
        self.issuing = issuing
        self._key = key

    @classmethod
    def load_or_create(
        cls, ca_dir: Path, box: SecretBox, *, name: str = "Cardline"
    ) -> CertificateAuthority:
        """Load the CA from ``ca_dir``, creating it once (safe across processes)."""
        ca_dir.mkdir(parents=True, exist_ok=True)
        with _file_lock(ca_dir / ".lock"):
            if not (ca_dir / "issuing.pem").exists():
                _create(ca_dir, box, name)
            root = x509.load_pem_x509_certificate((ca_dir / "root.pem").read_bytes())
            issuing = x509.load_pem_x509_certificate((ca_dir / "issuing.pem").read_bytes())
            sealed = (ca_dir / "issuing.key.sealed").read_text()
        der = box.open_bytes(sealed, context=_KEY_CONTEXT)
        key = serialization.load_der_private_key(der, password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)  # we only create EC CA keys
        return cls(root, issuing, key)

    def chain_pem(self) -> str:
        return "".join(
            c.public_bytes(serialization.Encoding.PEM).decode() for c in (self.issuing, self.root)
        )

    def issue(
        self,
        csr_pem: str,
        *,
        usage: CertUsage,
        holder: Holder,
        validity_days: int,
    ) -> x509.Certificate:
        """Verify the CSR's signature and issue a certificate for its key."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem.encode())
        except ValueError as exc:
            raise CsrRejected(f"{usage} CSR is not a PEM PKCS#10 request") from exc
        if not csr.is_signature_valid:
            raise CsrRejected(f"{usage} CSR signature does not verify")
        public_key = csr.public_key()
        if not isinstance(public_key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
            raise CsrRejected(f"{usage} CSR key type {type(public_key).__name__} is not allowed")
        now = dt.datetime.now(dt.UTC)
        san: list[x509.GeneralName] = [x509.RFC822Name(holder.email)]
        if usage is CertUsage.AUTHENTICATION:
            san.append(x509.OtherName(MS_UPN, _der_utf8(holder.upn)))
        builder = (
            x509.CertificateBuilder()
            .subject_name(holder_name(holder))
            .issuer_name(self.issuing.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(
                min(now + dt.timedelta(days=validity_days), self.issuing.not_valid_after_utc)
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(usage, public_key), critical=True)
            .add_extension(x509.ExtendedKeyUsage(_EKU[usage]), critical=False)
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.issuing.public_key()),  # type: ignore[arg-type]  # our CA keys are EC
                critical=False,
            )
        )
        return builder.sign(self._key, hashes.SHA256())


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _ca_cert(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    signer: ec.EllipticCurvePrivateKey,
    *,
    years: int,
    path_length: int,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365 * years))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()),
            critical=False,
        )
        .sign(signer, hashes.SHA256())
    )


def _create(ca_dir: Path, box: SecretBox, name: str) -> None:
    root_key = ec.generate_private_key(ec.SECP384R1())
    root_name = _name([(NameOID.ORGANIZATION_NAME, name), (NameOID.COMMON_NAME, f"{name} Root CA")])
    root = _ca_cert(root_name, root_name, root_key.public_key(), root_key, years=20, path_length=1)
    key = ec.generate_private_key(ec.SECP256R1())
    issuing_name = _name(
        [(NameOID.ORGANIZATION_NAME, name), (NameOID.COMMON_NAME, f"{name} Issuing CA 1")]
    )
    issuing = _ca_cert(issuing_name, root_name, key.public_key(), root_key, years=10, path_length=0)
    der = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write(ca_dir / "issuing.key.sealed", box.seal(der, context=_KEY_CONTEXT))
    _write(ca_dir / "root.pem", root.public_bytes(serialization.Encoding.PEM).decode())
    # issuing.pem last: its presence means the CA is complete.
    _write(ca_dir / "issuing.pem", issuing.public_bytes(serialization.Encoding.PEM).decode())
    # The root key is not kept: this minimal CA never issues another intermediate.


def _write(path: Path, text: str) -> None:
    atomic_write(path, text, mode=0o600)
