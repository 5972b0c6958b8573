"""Card production requests (seed 000): what an identity system signs and sends.

The wire form is ``SignedCpr``: ``payload`` is the base64url of the UTF-8 JSON of a
``Cpr`` exactly as signed, ``signature`` the base64url signature over those bytes by the
identity system's key (RSA PKCS#1 v1.5 or ECDSA, both with SHA-256), ``signer`` the
system's configured name. Verifying the bytes as received (not a re-serialisation)
means no canonical JSON is needed on either side.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from schemas.api import UserIn


class Cpr(BaseModel):
    model_config = ConfigDict(extra="forbid")

    identity_system: str = Field(min_length=1, max_length=64)
    request_id: str = Field(min_length=1, max_length=100)
    user: UserIn
    line: str | None = Field(None, max_length=32)


class SignedCpr(BaseModel):
    model_config = ConfigDict(extra="forbid")

    signer: str = Field(min_length=1, max_length=64)
    payload: str = Field(min_length=1, max_length=64_000)
    signature: str = Field(min_length=1, max_length=2_000)


class IdentitySystem(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    certificate: Path  # PEM certificate whose key signs this system's CPRs


class CprConfig(BaseModel):
    """``[cpr]`` in CARDLINE_CONFIG."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Create the user when the CPR names one Cardline does not know (the seed's
    # "creation of user is optional").
    create_users: bool = True
    # Cards requested by a CPR wait for an approver (default: the identity system's
    # own process approved them).
    approval_required: bool = False
    identity_systems: dict[str, IdentitySystem] = Field(default_factory=dict)


class CprOutcome(BaseModel):
    """What a stored CPR made: the user (new or updated) and the card request."""

    user_id: int
    card_id: int
    card_state: str
    user_created: bool
    cpr_replaced: bool
