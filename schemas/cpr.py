"""Card production requests (seed 000): what an identity system signs and sends.

The wire form is ``SignedCpr``: ``payload`` is the base64url of the UTF-8 JSON of a
``Cpr`` exactly as signed, ``signature`` the base64url signature over those bytes by the
identity system's key (RSA PKCS#1 v1.5 or ECDSA, both with SHA-256), ``signer`` the
system's configured name. Verifying the bytes as received (not a re-serialisation)
means no canonical JSON is needed on either side; a key repeated in those bytes is
refused, so no reader can see a different CPR than the one Cardline checked.

``issued_at`` is signed with the rest: a CPR is accepted only inside ``[cpr]
max_age_s`` of it (and at most ``max_skew_s`` ahead of Cardline's clock), and its
``request_id`` only once, ever.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from schemas.api import UserIn
from schemas.batch import LINE_NAME


class Cpr(BaseModel):
    model_config = ConfigDict(extra="forbid")

    identity_system: str = Field(min_length=1, max_length=64)
    request_id: str = Field(min_length=1, max_length=100)
    # When the identity system issued it, with a time zone; signed like the rest.
    issued_at: AwareDatetime
    # Attributes the CPR leaves out keep the user's current value (an explicit null
    # clears an optional one).
    user: UserIn
    line: str | None = Field(None, max_length=32, pattern=LINE_NAME.pattern)


class SignedCpr(BaseModel):
    model_config = ConfigDict(extra="forbid")

    signer: str = Field(min_length=1, max_length=64)
    payload: str = Field(min_length=1, max_length=64_000)
    signature: str = Field(min_length=1, max_length=2_000)


class IdentitySystem(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    certificate: Path  # PEM certificate whose key signs this system's CPRs
    # The principals (token names) that may submit this system's CPRs; no other may.
    principals: tuple[str, ...] = Field(min_length=1)


class CprConfig(BaseModel):
    """``[cpr]`` in CARDLINE_CONFIG."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Create the user when the CPR names one Cardline does not know (the seed's
    # "creation of user is optional").
    create_users: bool = True
    # Cards requested by a CPR wait for an approver (default: the identity system's
    # own process approved them).
    approval_required: bool = False
    # A CPR older than this (by its signed issued_at) is refused, and so is one more
    # than max_skew_s ahead of Cardline's clock.
    max_age_s: int = Field(600, gt=0, le=7 * 24 * 3600)
    max_skew_s: int = Field(60, ge=0, le=3600)
    # A CPR may update a user that an operator, an import or another identity system
    # created (default: refused, naming the user's owner).
    take_over_users: bool = False
    identity_systems: dict[str, IdentitySystem] = Field(default_factory=dict)


class CprOutcome(BaseModel):
    """What a stored CPR made: the user (new or updated) and the card request."""

    user_id: int
    card_id: int
    card_state: str
    user_created: bool
    cpr_replaced: bool
