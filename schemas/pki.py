"""PKI configuration: the CA's algorithm and key store, and the certificate profiles.

Read from the ``[pki]`` table of the configuration file; every field has a default, so
an installation without one issues the Blueprints' three card certificates.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.states import CertUsage

Algorithm = Literal["ec-p256", "ec-p384", "rsa-2048", "rsa-3072"]
KeyUsageName = Literal[
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
]
# Names for the EKUs a card certificate uses; any dotted OID is accepted too.
EKU_NAMES = {
    "client_auth": "1.3.6.1.5.5.7.3.2",
    "email_protection": "1.3.6.1.5.5.7.3.4",
    "smartcard_logon": "1.3.6.1.4.1.311.20.2.2",
}
SanName = Literal["email", "upn"]
SOFTTOKEN_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")


class CertProfile(BaseModel):
    """What one kind of certificate carries."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key_usage: tuple[KeyUsageName, ...]
    extended_key_usage: tuple[str, ...] = ()
    subject_alt_names: tuple[SanName, ...] = ("email",)
    validity_days: int | None = Field(None, ge=1, le=3650)  # None: the policy's validity

    @model_validator(mode="after")
    def _eku_known(self) -> CertProfile:
        for eku in self.extended_key_usage:
            if eku not in EKU_NAMES and not all(p.isdigit() for p in eku.split(".")):
                raise ValueError(
                    f"extended_key_usage {eku!r} is neither a known name "
                    f"({', '.join(EKU_NAMES)}) nor a dotted OID"
                )
        return self

    def eku_oids(self) -> tuple[str, ...]:
        return tuple(EKU_NAMES.get(e, e) for e in self.extended_key_usage)


def default_profiles() -> dict[CertUsage, CertProfile]:
    return {
        CertUsage.AUTHENTICATION: CertProfile(
            key_usage=("digital_signature",),
            extended_key_usage=("client_auth", "smartcard_logon"),
            subject_alt_names=("email", "upn"),
        ),
        CertUsage.SIGNATURE: CertProfile(
            key_usage=("digital_signature", "content_commitment"),
            extended_key_usage=("email_protection",),
        ),
        # key_encipherment/data_encipherment for RSA keys; an EC key gets key_agreement
        # instead, since it cannot encipher.
        CertUsage.ENCRYPTION: CertProfile(
            key_usage=("key_encipherment", "data_encipherment"),
            extended_key_usage=("email_protection",),
        ),
    }


class SoftTokenType(BaseModel):
    """A kind of software token (PKCS#12) a user can be given: its key and profile."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    description: str = Field(..., min_length=1, max_length=100)
    key_algorithm: Algorithm = "rsa-2048"
    profile: CertProfile


def default_softtoken_types() -> dict[str, SoftTokenType]:
    """The Blueprints' "User P12 Certificate", and a signing-only soft token."""
    return {
        "user-p12": SoftTokenType(
            description="User P12 Certificate",
            profile=CertProfile(
                key_usage=(
                    "digital_signature",
                    "content_commitment",
                    "key_encipherment",
                    "data_encipherment",
                ),
                extended_key_usage=("client_auth", "email_protection"),
                subject_alt_names=("email", "upn"),
            ),
        ),
        "email-signing": SoftTokenType(
            description="E-mail signing certificate",
            key_algorithm="ec-p256",
            profile=CertProfile(
                key_usage=("digital_signature", "content_commitment"),
                extended_key_usage=("email_protection",),
            ),
        ),
    }


class CaConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field("Cardline", min_length=1, max_length=64)
    algorithm: Algorithm = "ec-p256"
    root_algorithm: Algorithm = "ec-p384"
    root_validity_years: int = Field(20, ge=1, le=40)
    issuing_validity_years: int = Field(10, ge=1, le=30)
    key_store: Literal["file", "pkcs11"] = "file"
    # For key_store = "pkcs11"; the PIN comes from CARDLINE_CA_PIN, never from a file.
    pkcs11_module: str = "/usr/lib/softhsm/libsofthsm2.so"
    token_label: str = "cardline-ca"  # noqa: S105  (a token's name, not a password)
    key_label: str = "issuing-ca"
    # Where relying parties fetch the CRL and the issuer certificate (CDP and AIA).
    base_url: str = Field("http://pki.cardline.invalid", pattern=r"^https?://[^\s]+$")
    crl_validity_hours: int = Field(48, ge=1, le=24 * 31)
    crl_interval_s: int = Field(3600, ge=10)


class PkiConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    ca: CaConfig = CaConfig()
    profiles: dict[CertUsage, CertProfile] = Field(default_factory=default_profiles)
    # Soft token types by name (``[pki.softtokens.<name>]``); given, they replace the defaults.
    softtokens: dict[str, SoftTokenType] = Field(default_factory=default_softtoken_types)
    # Soft token requests need a second person's approval (four-eyes).
    softtoken_approval: bool = True
    # Mail the passphrase too, in a separate message from the P12 (the Blueprints' option).
    softtoken_mail_passphrase: bool = False

    @model_validator(mode="after")
    def _every_usage_has_a_profile(self) -> PkiConfig:
        merged = {**default_profiles(), **self.profiles}
        object.__setattr__(self, "profiles", merged)
        return self

    @model_validator(mode="after")
    def _softtoken_names(self) -> PkiConfig:
        for name in self.softtokens:
            if not SOFTTOKEN_NAME.fullmatch(name):
                raise ValueError(
                    f"soft token type {name!r}: use 1-32 lowercase letters, digits or '-'"
                )
        return self

    def softtoken_type(self, name: str) -> SoftTokenType:
        try:
            return self.softtokens[name]
        except KeyError:
            known = ", ".join(sorted(self.softtokens))
            raise ValueError(f"unknown soft token type {name!r} (configured: {known})") from None

    def crl_url(self) -> str:
        return f"{self.ca.base_url.rstrip('/')}/crl/issuing.crl"

    def root_crl_url(self) -> str:
        return f"{self.ca.base_url.rstrip('/')}/crl/root.crl"

    def issuer_url(self) -> str:
        return f"{self.ca.base_url.rstrip('/')}/ca/issuing.crt"

    def root_url(self) -> str:
        return f"{self.ca.base_url.rstrip('/')}/ca/root.crt"
