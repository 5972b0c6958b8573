"""Job messages: the only way stages talk to each other.

Every message is written to the outbox in the transaction that makes it necessary and
published by the relay. A message carries identifiers and public data only (a CSR is
public); never a PIN, PUK, key or password. Each names its actor and queue, so the
relay needs nothing but the outbox row to publish it.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from schemas.states import CertUsage

PREPARE_QUEUE = "prepare"
PKI_QUEUE = "pki"
NOTIFY_QUEUE = "notify"
LINE_QUEUE_PREFIX = "line."


def line_queue(line: str) -> str:
    """The queue a station line consumes."""
    return f"{LINE_QUEUE_PREFIX}{line}"


class JobMessage(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    actor: ClassVar[str]

    def queue(self) -> str:
        raise NotImplementedError


class PrepareCard(JobMessage):
    """Generate the card's secrets and escrow key; ask for the escrow certificate."""

    actor: ClassVar[str] = "prepare"
    type: Literal["prepare_card"] = "prepare_card"
    credential_id: int

    def queue(self) -> str:
        return PREPARE_QUEUE


class IssueCertificate(JobMessage):
    """Issue one certificate for a CSR. ``attempt_id`` is None for the escrowed key and
    for a card update's new key (``update_id``: a renewal made the key on the chip)."""

    actor: ClassVar[str] = "pki"
    type: Literal["issue_certificate"] = "issue_certificate"
    credential_id: int
    attempt_id: int | None
    usage: CertUsage
    csr_pem: str
    update_id: int | None = None
    # The certificate ends then at the latest (a temporary card's assignment).
    not_after: dt.datetime | None = None

    def queue(self) -> str:
        return PKI_QUEUE


class PublishCrl(JobMessage):
    """Publish the issuing CA's CRL if the revoked set changed (or the CRL ages)."""

    actor: ClassVar[str] = "pki"
    type: Literal["publish_crl"] = "publish_crl"
    reason: str = "revocation changed"
    # Publish even when the revoked set equals the last CRL's (the reconciler's re-drive).
    force: bool = False

    def queue(self) -> str:
        return PKI_QUEUE


class IssueSoftToken(JobMessage):
    """Generate the soft token's key, issue its certificate, seal the P12 and passphrase."""

    actor: ClassVar[str] = "pki"
    type: Literal["issue_softtoken"] = "issue_softtoken"
    soft_token_id: int

    def queue(self) -> str:
        return PKI_QUEUE


class RecertifyCard(JobMessage):
    """New certificates for the keys already on a produced card (renewal, temporary-card
    assignment): every usage whose current certificate predates the card's
    ``recertify_requested_at``; ``pin_letter`` sends the PIN letter once done."""

    actor: ClassVar[str] = "pki"
    type: Literal["recertify_card"] = "recertify_card"
    credential_id: int
    pin_letter: bool = False

    def queue(self) -> str:
        return PKI_QUEUE


class DeliverSoftToken(JobMessage):
    """Write the issued P12 (and its public certificate) out, and mail it where configured."""

    actor: ClassVar[str] = "notify"
    type: Literal["deliver_softtoken"] = "deliver_softtoken"
    soft_token_id: int

    def queue(self) -> str:
        return NOTIFY_QUEUE


class ProduceCard(JobMessage):
    """A card is ready: a station on ``line`` should produce it."""

    actor: ClassVar[str] = "produce"
    type: Literal["produce_card"] = "produce_card"
    credential_id: int
    line: str

    def queue(self) -> str:
        return line_queue(self.line)


class SendPinLetter(JobMessage):
    """Write (and where configured, send) the PIN letter of a produced card."""

    actor: ClassVar[str] = "notify"
    type: Literal["pin_letter"] = "pin_letter"
    credential_id: int

    def queue(self) -> str:
        return NOTIFY_QUEUE


class SendReminder(JobMessage):
    """Mail one expiry reminder (``db.models.Reminder``) to its recipient, once."""

    actor: ClassVar[str] = "notify"
    type: Literal["send_reminder"] = "send_reminder"
    reminder_id: int

    def queue(self) -> str:
        return NOTIFY_QUEUE


PkiJob = Annotated[
    IssueCertificate | PublishCrl | IssueSoftToken | RecertifyCard, Field(discriminator="type")
]
NotifyJob = Annotated[SendPinLetter | DeliverSoftToken | SendReminder, Field(discriminator="type")]

PREPARE_JOB: TypeAdapter[PrepareCard] = TypeAdapter(PrepareCard)
PKI_JOB: TypeAdapter[IssueCertificate | PublishCrl | IssueSoftToken | RecertifyCard] = TypeAdapter(
    PkiJob
)
NOTIFY_JOB: TypeAdapter[SendPinLetter | DeliverSoftToken | SendReminder] = TypeAdapter(NotifyJob)
PRODUCE_JOB: TypeAdapter[ProduceCard] = TypeAdapter(ProduceCard)
