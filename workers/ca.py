"""The CA: a root and an issuing CA built with ``cryptography``.

``cardline pki init`` creates both (algorithms from ``[pki.ca]``). The root key is
sealed under the master key and used only to sign the issuing CA and the root's CRL.
The issuing key is sealed in a file (the embedded default) or generated in a PKCS#11
token, where it never leaves it (``workers.hsm``). End-entity certificates follow the
configured profiles and carry the CRL distribution point and the issuer's address.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)
from cryptography.x509.oid import AuthorityInformationAccessOID, NameOID, ObjectIdentifier

from db.files import atomic_write
from db.secrets import Secret, SecretBox
from schemas.errors import ConfigurationError, PermanentError
from schemas.pki import CertProfile, PkiConfig
from schemas.states import CertUsage, RevocationReason

MS_UPN = ObjectIdentifier("1.3.6.1.4.1.311.20.2.3")
ROOT_KEY_CONTEXT = "ca:root:key"
ISSUING_KEY_CONTEXT = "ca:issuing:key"

REASON_FLAGS = {
    RevocationReason.UNSPECIFIED: None,  # RFC 5280: omit the reason code rather than send 0
    RevocationReason.KEY_COMPROMISE: x509.ReasonFlags.key_compromise,
    RevocationReason.AFFILIATION_CHANGED: x509.ReasonFlags.affiliation_changed,
    RevocationReason.SUPERSEDED: x509.ReasonFlags.superseded,
    RevocationReason.CESSATION_OF_OPERATION: x509.ReasonFlags.cessation_of_operation,
    RevocationReason.CERTIFICATE_HOLD: x509.ReasonFlags.certificate_hold,
    RevocationReason.PRIVILEGE_WITHDRAWN: x509.ReasonFlags.privilege_withdrawn,
}


class CsrRejected(PermanentError):
    """A certificate request failed verification."""


class CaExists(ConfigurationError):
    """``pki init`` would overwrite an existing CA."""


@dataclass(frozen=True)
class Holder:
    """The certificate subject's attributes (the Blueprints' certificate attributes)."""

    common_name: str
    email: str
    upn: str
    organization: str
    org_unit: str | None = None
    country: str | None = None


@dataclass(frozen=True)
class RevokedEntry:
    serial: int
    revoked_at: dt.datetime
    reason: RevocationReason


def generate_key(algorithm: str) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    if algorithm.startswith("ec-"):
        curve = {"ec-p256": ec.SECP256R1(), "ec-p384": ec.SECP384R1()}[algorithm]
        return ec.generate_private_key(curve)
    bits = {"rsa-2048": 2048, "rsa-3072": 3072}[algorithm]
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def hash_for(key: CertificateIssuerPrivateKeyTypes) -> hashes.SHA256 | hashes.SHA384:
    """SHA-384 for P-384 keys (a matching strength), SHA-256 otherwise."""
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def _der_utf8(text: str) -> bytes:
    body = text.encode()
    n = len(body)
    if n < 0x80:
        return b"\x0c" + bytes([n]) + body
    size = (n.bit_length() + 7) // 8
    return b"\x0c" + bytes([0x80 | size]) + n.to_bytes(size, "big") + body


def _name(attrs: Sequence[tuple[ObjectIdentifier, str | None]]) -> x509.Name:
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


_NO_USAGE = dict.fromkeys(
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


def _key_usage(profile: CertProfile, public_key: CertificatePublicKeyTypes) -> x509.KeyUsage:
    flags = dict(_NO_USAGE)
    for name in profile.key_usage:
        flags[name] = True
    if not isinstance(public_key, rsa.RSAPublicKey) and (
        flags["key_encipherment"] or flags["data_encipherment"]
    ):
        # An EC key cannot encipher; key agreement is its encryption usage.
        flags.update(key_encipherment=False, data_encipherment=False, key_agreement=True)
    return x509.KeyUsage(**flags)


def _aia(url: str) -> x509.AuthorityInformationAccess:
    return x509.AuthorityInformationAccess(
        [
            x509.AccessDescription(
                AuthorityInformationAccessOID.CA_ISSUERS, x509.UniformResourceIdentifier(url)
            )
        ]
    )


def _cdp(url: str) -> x509.CRLDistributionPoints:
    return x509.CRLDistributionPoints(
        [
            x509.DistributionPoint(
                full_name=[x509.UniformResourceIdentifier(url)],
                relative_name=None,
                reasons=None,
                crl_issuer=None,
            )
        ]
    )


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        **{**_NO_USAGE, "digital_signature": True, "key_cert_sign": True, "crl_sign": True}
    )


class CertificateAuthority:
    """Root and issuing CA kept in ``ca_dir``; keys sealed at rest or held in a token."""

    def __init__(
        self,
        config: PkiConfig,
        root: x509.Certificate,
        issuing: x509.Certificate,
        key: CertificateIssuerPrivateKeyTypes,
        root_key: CertificateIssuerPrivateKeyTypes,
    ) -> None:
        self.config = config
        self.root = root
        self.issuing = issuing
        self._key = key
        self._root_key = root_key

    # --- set-up ----------------------------------------------------------------------

    @classmethod
    def init(
        cls, ca_dir: Path, box: SecretBox, config: PkiConfig, *, pin: Secret | None = None
    ) -> CertificateAuthority:
        """Create the root and issuing CA; refuse to overwrite an existing one."""
        ca_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        with _file_lock(ca_dir / ".lock"):
            if (ca_dir / "issuing.pem").exists():
                raise CaExists(f"a CA already exists in {ca_dir}; it is never overwritten")
            _create(ca_dir, box, config, pin)
        return cls.load(ca_dir, box, config, pin=pin)

    @classmethod
    def load(
        cls, ca_dir: Path, box: SecretBox, config: PkiConfig, *, pin: Secret | None = None
    ) -> CertificateAuthority:
        if not (ca_dir / "issuing.pem").exists():
            raise ConfigurationError(f"no CA in {ca_dir}: run `cardline pki init`")
        root = x509.load_pem_x509_certificate((ca_dir / "root.pem").read_bytes())
        issuing = x509.load_pem_x509_certificate((ca_dir / "issuing.pem").read_bytes())
        root_key = _load_sealed(box, ca_dir / "root.key.sealed", ROOT_KEY_CONTEXT)
        ref_file = ca_dir / "issuing.key.pkcs11.json"
        if ref_file.exists():
            key = _token_key(json.loads(ref_file.read_text()), pin)
        else:
            key = _load_sealed(box, ca_dir / "issuing.key.sealed", ISSUING_KEY_CONTEXT)
        if key.public_key() != issuing.public_key():
            raise ConfigurationError(f"the issuing key in {ca_dir} does not match issuing.pem")
        return cls(config, root, issuing, key, root_key)

    @classmethod
    def load_or_create(
        cls,
        ca_dir: Path,
        box: SecretBox,
        config: PkiConfig | None = None,
        *,
        pin: Secret | None = None,
    ) -> CertificateAuthority:
        """The embedded default: create the CA on first use (safe across processes)."""
        config = config or PkiConfig()
        ca_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        with _file_lock(ca_dir / ".lock"):
            if not (ca_dir / "issuing.pem").exists():
                _create(ca_dir, box, config, pin)
        return cls.load(ca_dir, box, config, pin=pin)

    def chain_pem(self) -> str:
        return "".join(
            c.public_bytes(serialization.Encoding.PEM).decode() for c in (self.issuing, self.root)
        )

    # --- issuance ----------------------------------------------------------------------

    def issue(
        self,
        csr_pem: str,
        *,
        usage: CertUsage,
        holder: Holder,
        validity_days: int,
    ) -> x509.Certificate:
        """Verify the CSR's signature and issue a certificate for its key per the profile."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem.encode())
        except ValueError as exc:
            raise CsrRejected(f"{usage} CSR is not a PEM PKCS#10 request") from exc
        if not csr.is_signature_valid:
            raise CsrRejected(f"{usage} CSR signature does not verify")
        public_key = csr.public_key()
        if not isinstance(public_key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
            raise CsrRejected(f"{usage} CSR key type {type(public_key).__name__} is not allowed")
        return self.issue_for_key(
            public_key,
            profile=self.config.profiles[usage],
            holder=holder,
            validity_days=validity_days,
        )

    def issue_for_key(
        self,
        public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey,
        *,
        profile: CertProfile,
        holder: Holder,
        validity_days: int,
    ) -> x509.Certificate:
        """Issue a certificate for ``public_key`` per ``profile`` (the key is checked by
        the caller: a verified CSR, or a key generated here for a soft token)."""
        days = profile.validity_days or validity_days
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(holder_name(holder))
            .issuer_name(self.issuing.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(min(now + dt.timedelta(days=days), self.issuing.not_valid_after_utc))
            .add_extension(_key_usage(profile, public_key), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
            .add_extension(_cdp(self.config.crl_url()), critical=False)
            .add_extension(_aia(self.config.issuer_url()), critical=False)
        )
        ekus = [ObjectIdentifier(oid) for oid in profile.eku_oids()]
        if ekus:
            builder = builder.add_extension(x509.ExtendedKeyUsage(ekus), critical=False)
        san = self._subject_alt_names(profile, holder)
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(self._key, hash_for(self._key))

    @staticmethod
    def _subject_alt_names(profile: CertProfile, holder: Holder) -> list[x509.GeneralName]:
        names: list[x509.GeneralName] = []
        if "email" in profile.subject_alt_names:
            names.append(x509.RFC822Name(holder.email))
        if "upn" in profile.subject_alt_names:
            names.append(x509.OtherName(MS_UPN, _der_utf8(holder.upn)))
        return names

    # --- revocation lists -------------------------------------------------------------

    def crl(
        self,
        revoked: Sequence[RevokedEntry],
        *,
        number: int,
        this_update: dt.datetime,
        next_update: dt.datetime,
    ) -> x509.CertificateRevocationList:
        """The issuing CA's CRL listing ``revoked`` (certificates on hold included)."""
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.issuing.subject)
            .last_update(this_update)
            .next_update(next_update)
            .add_extension(x509.CRLNumber(number), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )
        for entry in revoked:
            item = (
                x509.RevokedCertificateBuilder()
                .serial_number(entry.serial)
                .revocation_date(entry.revoked_at)
            )
            flag = REASON_FLAGS[entry.reason]
            if flag is not None:
                item = item.add_extension(x509.CRLReason(flag), critical=False)
            builder = builder.add_revoked_certificate(item.build())
        return builder.sign(self._key, hash_for(self._key))

    def root_crl(
        self, *, this_update: dt.datetime, next_update: dt.datetime
    ) -> x509.CertificateRevocationList:
        """The root's CRL (it has revoked nothing); its number is the time in seconds."""
        return (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.root.subject)
            .last_update(this_update)
            .next_update(next_update)
            .add_extension(x509.CRLNumber(int(this_update.timestamp())), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._root_key.public_key()),
                critical=False,
            )
            .sign(self._root_key, hash_for(self._root_key))
        )


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _load_sealed(box: SecretBox, path: Path, context: str) -> CertificateIssuerPrivateKeyTypes:
    key = serialization.load_der_private_key(
        box.open_bytes(path.read_text(), context=context), password=None
    )
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ConfigurationError(f"{path} holds an unsupported key type")
    return key


def _token_key(ref: dict[str, str], pin: Secret | None) -> CertificateIssuerPrivateKeyTypes:
    if pin is None:
        raise ConfigurationError("the issuing CA key is in a PKCS#11 token: set CARDLINE_CA_PIN")
    from workers import hsm  # only installations with a token need python-pkcs11 loaded

    return hsm.load_key(hsm.TokenKeyRef(pin=pin, **ref))


def _seal_key(box: SecretBox, key: CertificateIssuerPrivateKeyTypes, context: str) -> str:
    der = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return box.seal(der, context=context)


def _ca_cert(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: CertificatePublicKeyTypes,
    signer: CertificateIssuerPrivateKeyTypes,
    *,
    years: int,
    path_length: int | None,
    extra: Sequence[x509.ExtensionType] = (),
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365 * years))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()),
            critical=False,
        )
    )
    for ext in extra:
        builder = builder.add_extension(ext, critical=False)
    return builder.sign(signer, hash_for(signer))


def _create(ca_dir: Path, box: SecretBox, config: PkiConfig, pin: Secret | None) -> None:
    ca = config.ca
    root_key = generate_key(ca.root_algorithm)
    root_name = _name(
        [(NameOID.ORGANIZATION_NAME, ca.name), (NameOID.COMMON_NAME, f"{ca.name} Root CA")]
    )
    root = _ca_cert(
        root_name,
        root_name,
        root_key.public_key(),
        root_key,
        years=ca.root_validity_years,
        path_length=None,
    )
    issuing_public: CertificatePublicKeyTypes
    if ca.key_store == "pkcs11":
        if pin is None:
            raise ConfigurationError("key_store = pkcs11 needs CARDLINE_CA_PIN")
        from workers import hsm

        ref = {"module": ca.pkcs11_module, "token_label": ca.token_label, "key_label": ca.key_label}
        issuing_public = hsm.generate_key(hsm.TokenKeyRef(pin=pin, **ref), ca.algorithm)
        atomic_write(ca_dir / "issuing.key.pkcs11.json", json.dumps(ref), mode=0o600)
    else:
        issuing_key = generate_key(ca.algorithm)
        issuing_public = issuing_key.public_key()
        atomic_write(
            ca_dir / "issuing.key.sealed",
            _seal_key(box, issuing_key, ISSUING_KEY_CONTEXT),
            mode=0o600,
        )
    issuing_name = _name(
        [(NameOID.ORGANIZATION_NAME, ca.name), (NameOID.COMMON_NAME, f"{ca.name} Issuing CA 1")]
    )
    issuing = _ca_cert(
        issuing_name,
        root_name,
        issuing_public,
        root_key,
        years=min(ca.issuing_validity_years, ca.root_validity_years),
        path_length=0,
        extra=[_cdp(config.root_crl_url()), _aia(config.root_url())],
    )
    atomic_write(ca_dir / "root.key.sealed", _seal_key(box, root_key, ROOT_KEY_CONTEXT), mode=0o600)
    atomic_write(ca_dir / "root.pem", root.public_bytes(serialization.Encoding.PEM))
    # issuing.pem last: its presence means the CA is complete.
    atomic_write(ca_dir / "issuing.pem", issuing.public_bytes(serialization.Encoding.PEM))
