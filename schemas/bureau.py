"""The service-bureau exchange (seed 000): the order file out, the delivery file in.

Both files are JSON documents, version 1, whose JSON Schemas are published with the
project (``schemas/published/bureau-order-v1.schema.json`` and
``bureau-delivery-v1.schema.json``; ``cardline bureau schema order|delivery`` prints
them). On the wire each is CMS (RFC 5652, DER):

- **order file** (Cardline -> bureau): the UTF-8 JSON of an ``OrderFile``, signed by
  Cardline (SignedData, the content inside, our signing certificate included), then
  encrypted to the bureau's encryption certificate (EnvelopedData, RSA key transport,
  AES-256-CBC). ``openssl cms -decrypt`` then ``openssl cms -verify`` read it.
- **delivery file** (bureau -> Cardline): the UTF-8 JSON of a ``DeliveryFile``, signed
  by the bureau (SignedData with the content inside), not encrypted (it carries no
  personal data beyond order line ids and chip serials).

The helpers at the end of this module (``sign``, ``verify``, ``envelope``, ``open_envelope``)
are the whole CMS profile; a bureau's software needs nothing else of Cardline's (the
simulator in ``ops/bureau_sim.py`` uses only this module).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any, Literal

from asn1crypto import cms as acms  # type: ignore[import-untyped]
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.serialization import pkcs7
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

_NAME = r"^[a-z0-9][a-z0-9_-]{0,31}$"

# Why a bureau could not produce a card, and what Cardline does about it: "reorder"
# puts the card in the next order file, "fail" ends it (failed, a person looks).
REJECT_REASONS: dict[str, tuple[str, Literal["reorder", "fail"]]] = {
    "chip_defect": ("the chip failed personalisation or its test", "reorder"),
    "print_defect": ("the print failed inspection", "reorder"),
    "damaged": ("the card was damaged in production or handling", "reorder"),
    "stock_out": ("the bureau had no blank of the ordered stock", "reorder"),
    "photo_unusable": ("the photo could not be printed to the layout", "fail"),
    "data_invalid": ("a holder attribute could not be printed or encoded", "fail"),
    "cancelled": ("the order line was cancelled at the bureau", "fail"),
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Holder(_Strict):
    first_name: str = Field(min_length=1, max_length=100)
    last_name: str = Field(min_length=1, max_length=100)
    email: str | None = Field(None, max_length=254)
    organization: str | None = Field(None, max_length=200)
    org_unit: str | None = Field(None, max_length=200)
    title: str | None = Field(None, max_length=200)
    photo: str | None = Field(None, max_length=2_000_000)  # base64 JPEG/PNG, if any


class KeySpec(_Strict):
    """A key the card must carry and where it is made: on the chip at activation
    (``at_activation``), or by the bureau at pre-personalisation (``by_bureau``, whose
    public key the delivery record reports)."""

    usage: Literal["authentication", "signature", "encryption"]
    key_type: str = Field(min_length=1, max_length=32)
    made: Literal["at_activation", "by_bureau", "escrowed"]


class OrderHeader(_Strict):
    format: Literal["cardline-bureau-order/1"] = "cardline-bureau-order/1"
    file_id: str = Field(min_length=1, max_length=64)
    bureau: str = Field(pattern=_NAME)
    sequence: int = Field(ge=1)  # 1, 2, 3 ... per bureau, without gaps
    created_at: AwareDatetime
    issuer: str = Field(min_length=1, max_length=200)  # our identity (certificate subject)
    record_count: int = Field(ge=0)


class OrderRecord(_Strict):
    order_line_id: str = Field(min_length=1, max_length=64)
    card_number: str = Field(min_length=1, max_length=32)
    holder: Holder
    face_layout: str = Field(min_length=1, max_length=64)
    keys: list[KeySpec] = Field(max_length=8)


class OrderFile(_Strict):
    header: OrderHeader
    records: list[OrderRecord] = Field(max_length=1_000_000)

    @model_validator(mode="after")
    def _counts(self) -> OrderFile:
        if self.header.record_count != len(self.records):
            raise ValueError(
                f"header.record_count {self.header.record_count} but {len(self.records)} records"
            )
        return self


class DeliveryHeader(_Strict):
    format: Literal["cardline-bureau-delivery/1"] = "cardline-bureau-delivery/1"
    file_id: str = Field(min_length=1, max_length=64)
    bureau: str = Field(pattern=_NAME)
    sequence: int = Field(ge=1)  # 1, 2, 3 ... per bureau, without gaps
    created_at: AwareDatetime
    produced_count: int = Field(ge=0)
    rejected_count: int = Field(ge=0)
    record_count: int = Field(ge=0)
    spoiled_blanks: int = Field(0, ge=0)  # blanks the bureau spoiled for these cards


class PublicKeyOut(_Strict):
    usage: Literal["authentication", "signature", "encryption"]
    public_key_pem: str = Field(min_length=1, max_length=4_000)


class DeliveryRecord(_Strict):
    order_line_id: str = Field(min_length=1, max_length=64)
    outcome: Literal["produced", "rejected"]
    chip_serial: str | None = Field(None, pattern=r"^[0-9A-F]{8,32}$")  # the ICCSN
    card_serial: str | None = Field(None, max_length=64)  # printed on the card body
    atr: str | None = Field(None, pattern=r"^[0-9A-F]{4,66}$")
    public_keys: list[PublicKeyOut] = Field(default_factory=list, max_length=8)
    reason: str | None = None  # one of REJECT_REASONS, for a rejected record

    @model_validator(mode="after")
    def _outcome(self) -> DeliveryRecord:
        if self.outcome == "produced":
            if not self.chip_serial:
                raise ValueError("a produced record needs chip_serial")
            if self.reason is not None:
                raise ValueError("a produced record has no reason")
        else:
            if self.reason not in REJECT_REASONS:
                raise ValueError(f"reason must be one of {sorted(REJECT_REASONS)}")
            if self.chip_serial is not None:
                raise ValueError("a rejected record has no chip_serial")
        return self


class DeliveryFile(_Strict):
    header: DeliveryHeader
    records: list[DeliveryRecord] = Field(max_length=1_000_000)

    @model_validator(mode="after")
    def _counts(self) -> DeliveryFile:
        h = self.header
        produced = sum(r.outcome == "produced" for r in self.records)
        rejected = len(self.records) - produced
        if (h.record_count, h.produced_count, h.rejected_count) != (
            len(self.records),
            produced,
            rejected,
        ):
            raise ValueError(
                f"header counts (records {h.record_count}, produced {h.produced_count}, "
                f"rejected {h.rejected_count}) disagree with the records ({len(self.records)}, "
                f"{produced}, {rejected})"
            )
        return self


class BureauConfig(_Strict):
    """``[bureaus.NAME]`` in CARDLINE_CONFIG: a service bureau Cardline orders cards from.

    Cardline's own signing certificate and key (which sign every order file) are made
    on first use under the data dir, the key sealed with the master key; ``cardline
    bureau certificate`` prints the certificate to give to the bureau."""

    signing_certificate: Path  # the bureau's (PEM): its delivery files must verify
    encryption_certificate: Path  # the bureau's (PEM, RSA): order files are encrypted to it
    lines: tuple[str, ...] = Field(min_length=1)  # production lines this bureau makes
    stock: str = Field("standard", min_length=1, max_length=64)  # the blanks it holds
    face_layout: str = Field("standard", min_length=1, max_length=64)
    # A card outstanding (ordered, not delivered) longer than this is named by the report.
    outstanding_days: int = Field(14, ge=1, le=365)
    # A delivered card replaces its holder's other cards: they are terminated when it is
    # activated at a desk, and not before (seed 000); false: it is an extra card.
    replaces_previous: bool = True
    # What a rejection does, per reason code (default: REJECT_REASONS' own).
    on_reject: dict[str, Literal["reorder", "fail"]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _reasons(self) -> BureauConfig:
        unknown = sorted(set(self.on_reject) - set(REJECT_REASONS))
        if unknown:
            raise ValueError(f"on_reject: unknown reason {unknown}; use {sorted(REJECT_REASONS)}")
        return self

    def reject_policy(self, reason: str) -> Literal["reorder", "fail"]:
        return self.on_reject.get(reason, REJECT_REASONS[reason][1])


def json_schemas() -> dict[str, dict[str, Any]]:
    """The published JSON Schemas, by file name."""
    return {
        "bureau-order-v1.schema.json": OrderFile.model_json_schema(),
        "bureau-delivery-v1.schema.json": DeliveryFile.model_json_schema(),
    }


def dumps(document: OrderFile | DeliveryFile) -> bytes:
    return json.dumps(document.model_dump(mode="json"), ensure_ascii=False).encode()


# --- the CMS profile --------------------------------------------------------------------


class CmsError(ValueError):
    """A CMS file that does not verify, decrypt or parse (the reason says which)."""


SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def sign(content: bytes, certificate: x509.Certificate, key: SigningKey) -> bytes:
    """CMS SignedData (DER) with ``content`` inside, signed with SHA-256."""
    return (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(content)
        .add_signer(certificate, key, hashes.SHA256())
        .sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])
    )


def envelope(content: bytes, recipient: x509.Certificate) -> bytes:
    """CMS EnvelopedData (DER) of ``content`` for ``recipient`` (RSA), AES-256-CBC."""
    return (
        pkcs7.PKCS7EnvelopeBuilder()
        .set_data(content)
        .add_recipient(recipient)
        .set_content_encryption_algorithm(algorithms.AES256)
        .encrypt(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])
    )


def open_envelope(data: bytes, certificate: x509.Certificate, key: rsa.RSAPrivateKey) -> bytes:
    """The content of EnvelopedData ``data`` addressed to ``certificate``."""
    try:
        return pkcs7.pkcs7_decrypt_der(data, certificate, key, [])
    except ValueError as exc:
        raise CmsError(f"the file does not decrypt for this recipient: {exc}") from None


def verify(data: bytes, signer: x509.Certificate) -> bytes:
    """The content of SignedData ``data`` if it is signed by ``signer`` (the certificate
    configured for the sender: the one in the file must be it) and the signature holds.
    Anything else is a ``CmsError`` naming what failed."""
    try:
        info = acms.ContentInfo.load(data, strict=True)
        if info["content_type"].native != "signed_data":
            raise CmsError(f"not CMS SignedData but {info['content_type'].native}")
        signed = info["content"]
        content = signed["encap_content_info"]["content"].native
        infos = list(signed["signer_infos"])
        if len(infos) != 1:
            raise CmsError(f"{len(infos)} signers; exactly one expected")
        signer_info = infos[0]
        certs = [
            x509.load_der_x509_certificate(c.chosen.dump()) for c in signed["certificates"] or []
        ]
    except CmsError:
        raise
    except Exception as exc:  # asn1crypto raises many kinds on malformed input
        raise CmsError(f"not a readable CMS file: {type(exc).__name__}") from None
    if not isinstance(content, bytes):
        raise CmsError("the file has no content inside (a detached signature)")
    expected = signer.public_bytes(serialization.Encoding.DER)
    if not any(
        hmac.compare_digest(c.public_bytes(serialization.Encoding.DER), expected) for c in certs
    ):
        raise CmsError("the file is not signed with the configured certificate")
    sid = signer_info["sid"]
    if (
        sid.name == "issuer_and_serial_number"
        and sid.chosen["serial_number"].native != signer.serial_number
    ):
        raise CmsError("the signer is not the configured certificate")
    digest_name = signer_info["digest_algorithm"]["algorithm"].native
    if digest_name != "sha256":
        raise CmsError(f"digest {digest_name}: only sha256 is accepted")
    attrs = signer_info["signed_attrs"]
    if not attrs:
        raise CmsError("the signature has no signed attributes")
    found = {a["type"].native: a["values"][0].native for a in attrs}
    if found.get("content_type") != "data":
        raise CmsError("the signed content type is not data")
    digest = found.get("message_digest")
    if not isinstance(digest, bytes) or not hmac.compare_digest(
        digest, hashlib.sha256(content).digest()
    ):
        raise CmsError("the content does not match its signed digest")
    signed_bytes = b"\x31" + attrs.dump()[1:]  # the SET OF the attributes, as signed
    signature = signer_info["signature"].native
    public = signer.public_key()
    try:
        if isinstance(public, rsa.RSAPublicKey):
            public.verify(signature, signed_bytes, padding.PKCS1v15(), hashes.SHA256())
        elif isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(signature, signed_bytes, ec.ECDSA(hashes.SHA256()))
        else:
            raise CmsError("the signer's key is neither RSA nor EC")
    except InvalidSignature:
        raise CmsError("the signature does not verify") from None
    return content
