"""The three device interfaces a station drives.

A station is a card printer with a contact encoder: the printer moves the card (feed,
print, eject), the reader talks to the chip (ATR, serial), and the token is the chip's
PKCS#11 view (keys, certificates, PIN). Each has a simulated implementation
(``stations.sim``) and, later, a real one; the runtime sees only these protocols.

Every method raises ``schemas.errors.DeviceFault`` (with ``kind`` from
``schemas.states.FaultKind`` and the raw device code where there is one) when the
device fails; any other exception is a bug.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from db.secrets import Secret
from schemas.states import CertUsage


@dataclass(frozen=True)
class ChipInfo:
    atr: str  # hex
    serial: str  # the chip serial number (ICCSN), hex or decimal as the card reports it


@dataclass(frozen=True)
class CardFaces:
    """The two faces as images (``front``, ``back``) and, where rendered, one PDF of two
    CR80 pages with real text (``pdf``), which is what a CUPS printer is sent."""

    front: Path
    back: Path
    pdf: Path | None = None


class Printer(Protocol):
    def feed(self) -> None:
        """Take a blank from the hopper to the encoder position (a jam is a fault)."""

    def print_faces(self, faces: CardFaces) -> None:
        """Print front and back onto the card in the printer."""

    def eject(self, *, reject: bool) -> None:
        """Send the card to the output stack, or to the reject bin."""


class Reader(Protocol):
    def read_chip(self, timeout_s: float) -> ChipInfo:
        """Wait up to ``timeout_s`` for the chip to answer; return its ATR and serial."""

    def check_present(self) -> None:
        """Raise a CHIP ``DeviceFault`` when the card ``read_chip`` read has left the
        reader since (a card removed mid-encode)."""


class ManualFeed(Protocol):
    """An encoder that also takes a card put in by hand between print jobs (a holder's
    card brought back for its pending updates: ``StationEntry.updates``)."""

    def read_inserted(self, timeout_s: float) -> ChipInfo:
        """The card put in by hand, if one is there within ``timeout_s`` (else a CHIP
        ``DeviceFault``)."""


class Token(Protocol):
    def initialise(self, *, label: str, so_pin: Secret, pin: Secret) -> None:
        """Personalise a blank chip: label it, set the SO PIN (the PUK) and the user PIN."""

    def generate_key(self, usage: CertUsage, key_type: str) -> str:
        """Generate a key pair on the chip for ``usage``; return its CKA_ID (hex)."""

    def make_csr(self, key_id: str, common_name: str) -> str:
        """A PEM PKCS#10 request for the key, signed on the chip."""

    def write_certificate(self, key_id: str, usage: CertUsage, cert_pem: str) -> None:
        """Store the issued certificate beside its key (same CKA_ID and label)."""

    def import_key(
        self, usage: CertUsage, key_pem: Secret, cert_pem: str, *, retired: bool = False
    ) -> str:
        """Import an escrowed private key and its certificate; return the CKA_ID (hex).

        ``retired`` keys (an earlier card's encryption keys, recovered from escrow) are
        kept beside the current one, so old mail still decrypts; otherwise the import
        replaces the key of ``usage``."""

    def close(self) -> None:
        """Log out and release the chip."""


@runtime_checkable
class AdminKeyHolder(Protocol):
    """A token that keeps the card's admin key for remote unblock (challenge/response)."""

    def store_admin_key(self, admin_key: Secret) -> None:
        """Write the card's admin key to the chip."""
