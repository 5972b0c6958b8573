"""Issuance policy: the Blueprints' options that decide what a card gets."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.states import CertUsage


class ApprovalSteps(BaseModel):
    """``[approvals]``: which lifecycle processes wait for an approver (seed 002 §4.2,
    "an approval process can be enabled or disabled for any process that modifies the
    lifecycle of a user, a certificate, or a card"). All off by default; card requests
    have their own switch, ``[policy] approval_required`` (validated issuance, on)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    user_create: bool = False
    user_edit: bool = False
    user_deactivate: bool = False
    user_reactivate: bool = False
    user_lock: bool = False
    user_delete: bool = False
    principal_roles: bool = False  # role changes
    card_deactivate: bool = False
    card_reactivate: bool = False
    card_lock: bool = False
    card_renew: bool = False
    tempcard_assign: bool = False
    tempcard_extend: bool = False
    tempcard_withdraw: bool = False
    certificate_revoke: bool = False
    # Dual control of escrowed keys: an export is requested, approved by a second
    # principal, and only then collected once by its requester.
    escrow_export: bool = False

    def required(self, process: str) -> bool:
        """Whether ``process`` (a use case such as ``card.lock``) waits for an approver."""
        return bool(getattr(self, process.replace(".", "_")))


class Policy(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # Validated issuance (seed 001): a card request waits for an approver, and no
    # command or endpoint issues a card without one. Off: local issuance, where an
    # operator issues a card alone (``cardline card issue``, ``POST /cards/issue``).
    approval_required: bool = True
    pin_length: int = Field(6, ge=4, le=12)
    puk_length: int = Field(8, ge=6, le=16)
    certificates: tuple[CertUsage, ...] = (
        CertUsage.AUTHENTICATION,
        CertUsage.SIGNATURE,
        CertUsage.ENCRYPTION,
    )
    card_validity_days: int = Field(1095, ge=1)
    certificate_validity_days: int = Field(1095, ge=1)
    max_attempts: int = Field(3, ge=1, le=20)
    cards_per_user: int = Field(2, ge=1)
    activation_step: bool = False
    card_key_type: Literal["ec-p256", "rsa-2048"] = "ec-p256"
    default_line: str = Field("default", pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")
    # The state of a user created one at a time (the Blueprints' "status after create").
    user_status_after_create: Literal["active", "inactive"] = "active"
    # No two users share an e-mail (the Blueprints' "email uniqueness"). Off, a shared
    # e-mail names no one: imports and CPRs then need the external_id.
    email_unique: bool = True
    # Temporary cards: stock runs need approval; how long an assignment lasts (extend
    # adds to it); how many a user may hold at once.
    temp_card_approval_required: bool = True
    temp_card_validity_days: int = Field(14, ge=1, le=366)
    temp_cards_per_user: int = Field(1, ge=1, le=10)
    # Replacement requests made by a device incident wait for an approver.
    replacement_approval_required: bool = True
    # The reasons an operator chooses from to deactivate or reactivate a user or a card;
    # empty: any reason, in free text.
    deactivation_reasons: tuple[str, ...] = ()
    # PIN letters: written as PDF for printing, or also mailed to the holder.
    pin_letter_delivery: Literal["print", "mail"] = "print"
    # Production lines whose cards a service bureau makes (the lines of [bureaus.NAME],
    # filled in from there: not set in [policy]). Their ready cards go into order
    # files, never to a station's queue.
    bureau_lines: tuple[str, ...] = ()

    @property
    def on_card_usages(self) -> tuple[CertUsage, ...]:
        """Certificates whose keys the card generates itself (one set per attempt)."""
        return tuple(u for u in self.certificates if u is not CertUsage.ENCRYPTION)

    @property
    def escrow(self) -> bool:
        """Encryption keys are generated server-side and escrowed."""
        return CertUsage.ENCRYPTION in self.certificates
