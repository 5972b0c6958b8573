"""PIN services for any token with ``verify_pin``/``unblock``: Cardline's own retry
counter, and remote unblock by challenge/response with the card's admin key.

Retry counting. A chip may or may not count wrong PINs (SoftHSM2 never locks a PIN), so
Cardline counts them itself: ``PinGuard`` blocks a card after ``max_tries`` consecutive
wrong PINs (3 by default) whatever the token does, and resets on a right PIN or an
unblock. The count lives in ``PinCounter``, a small frozen dataclass the caller keeps
(``PinGuard.counter`` after each call) wherever it keeps per-card state.

Remote unblock. The card shows a challenge (8 random bytes, as hex); the operator
reads it to Cardline; Cardline computes the response with the card's admin key (24
bytes, kept sealed per card by the ``prepare`` worker, as hex); the operator types the
response into the card, which checks it and resets the PIN. The arithmetic is the
Windows smart card minidriver's: response = 3DES-EDE-ECB(admin key, challenge).
``compute_response`` (``db.adminkey``) is Cardline's side; ``AdminKeyCard`` is the
card's side, done in software by ``SoftAdminKeyCard`` (any token, e.g. the simulator)
and on the token by ``stations.pkcs11_token.Pkcs11AdminKeyCard``.

No error here quotes a PIN, a PUK, an admin key, or a response.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

from db.adminkey import (
    ResponseRefused,
    admin_key_bytes,
    check_response,
    new_challenge,
)
from db.secrets import Secret
from schemas.errors import ConfigurationError, DeviceFault, PermanentError

MAX_PIN_TRIES = 3

# What a token says when it has blocked the PIN itself: ISO 7816 "authentication method
# blocked" (the simulator) and the PKCS#11 return value.
_TOKEN_BLOCKED_CODES = frozenset({"6983", "CKR_PIN_LOCKED"})


class PinBlocked(PermanentError):
    """The card's PIN is blocked; only an unblock (PUK or admin response) helps."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        super().__init__(f"PIN blocked after {failures} wrong tries: unblock the card")


@dataclass(frozen=True)
class PinCounter:
    """Consecutive wrong PINs of one card. Persist it as is; it holds no secret."""

    failures: int = 0
    max_tries: int = MAX_PIN_TRIES

    def __post_init__(self) -> None:
        if self.max_tries < 1:
            raise ConfigurationError(f"max_tries must be >= 1, got {self.max_tries}")
        if not 0 <= self.failures <= self.max_tries:
            raise ValueError(f"failures must be within [0, {self.max_tries}]")

    @property
    def tries_left(self) -> int:
        return self.max_tries - self.failures

    @property
    def blocked(self) -> bool:
        return self.failures >= self.max_tries

    def failed(self) -> PinCounter:
        """The counter after one more wrong PIN."""
        return replace(self, failures=min(self.failures + 1, self.max_tries))

    def reset(self) -> PinCounter:
        return replace(self, failures=0)

    def block(self) -> PinCounter:
        return replace(self, failures=self.max_tries)


class PinToken(Protocol):
    def verify_pin(self, pin: Secret) -> bool:
        """True when ``pin`` is the card's PIN (a session is then open)."""

    def unblock(self, puk: Secret, new_pin: Secret) -> None:
        """Set ``new_pin`` with the PUK (the SO PIN); a wrong PUK raises DeviceFault."""


class AdminKeyCard(Protocol):
    """The card's side of a remote unblock."""

    def challenge(self) -> str:
        """A fresh challenge (16 hex digits); it answers one response only."""

    def unblock_with_response(self, response_hex: str, new_pin: Secret) -> None:
        """Set ``new_pin`` when ``response_hex`` answers the last challenge; else raise
        ``ResponseRefused``. Either way the challenge is used up."""


class PinGuard:
    """PIN checks on one card under Cardline's retry counter.

    ``verify`` asks the token only while the counter is not blocked; a blocked card
    raises ``PinBlocked`` without touching the token. When the token reports a block of
    its own, the counter blocks too.
    """

    def __init__(self, token: PinToken, counter: PinCounter | None = None) -> None:
        self._token = token
        self._counter = counter or PinCounter()

    @property
    def counter(self) -> PinCounter:
        """The counter to persist after each call."""
        return self._counter

    def verify(self, pin: Secret) -> bool:
        """True for the right PIN (resets the count); False for a wrong one (counts it)."""
        if self._counter.blocked:
            raise PinBlocked(self._counter.failures)
        try:
            ok = self._token.verify_pin(pin)
        except DeviceFault as fault:
            if fault.code in _TOKEN_BLOCKED_CODES:
                self._counter = self._counter.block()
                raise PinBlocked(self._counter.failures) from fault
            raise
        self._counter = self._counter.reset() if ok else self._counter.failed()
        return ok

    def unblock(self, puk: Secret, new_pin: Secret) -> None:
        """Reset the PIN with the PUK; the count starts again. A wrong PUK raises the
        token's DeviceFault and leaves the count as it was."""
        self._token.unblock(puk, new_pin)
        self._counter = self._counter.reset()

    def unblock_by_response(self, card: AdminKeyCard, response_hex: str, new_pin: Secret) -> None:
        """Reset the PIN with an admin-key response to the card's challenge."""
        card.unblock_with_response(response_hex, new_pin)
        self._counter = self._counter.reset()


class SoftAdminKeyCard:
    """The card's side of a remote unblock, in software, for any ``PinToken``.

    It holds what the card would: the admin key, and the PUK it unblocks the token with.
    """

    def __init__(self, token: PinToken, *, admin_key: Secret, puk: Secret) -> None:
        admin_key_bytes(admin_key)  # a bad key fails here, not at the operator's desk
        self._token = token
        self._admin_key = admin_key
        self._puk = puk
        self._challenge: str | None = None

    def challenge(self) -> str:
        self._challenge = new_challenge()
        return self._challenge

    def unblock_with_response(self, response_hex: str, new_pin: Secret) -> None:
        challenge, self._challenge = self._challenge, None
        if challenge is None:
            raise ResponseRefused("no challenge outstanding: ask the card for one first")
        check_response(self._admin_key, challenge, response_hex)
        self._token.unblock(self._puk, new_pin)
