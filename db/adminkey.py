"""Remote unblock arithmetic, Cardline's side: the response to a card's challenge.

The card shows a challenge (8 random bytes, as hex); the help desk reads it to
Cardline; Cardline answers with 3DES-EDE-ECB under the card's admin key (24 bytes,
kept sealed per card), as the Windows smart card minidriver does. The card's side is
in ``stations.pin``; both use these functions. No error here quotes an admin key or a
response.
"""

from __future__ import annotations

import hmac
import secrets

from cryptography.hazmat.primitives.ciphers import Cipher, modes

from db.secrets import Secret
from schemas.errors import PermanentError, ValidationFailed

try:
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
except ImportError:  # cryptography < 43 has it only among the primitives
    from cryptography.hazmat.primitives.ciphers.algorithms import TripleDES

CHALLENGE_BYTES = 8
ADMIN_KEY_BYTES = 24


class ResponseRefused(PermanentError):
    """The unblock response does not answer the card's challenge."""


class AdminKeyInvalid(PermanentError):
    """The stored admin key is not 24 bytes of hex (its value is never shown)."""


def _hex_bytes(text: str, *, field: str, size: int) -> bytes:
    """``size`` bytes from hex as an operator types it (any case, spaces allowed)."""
    cleaned = "".join(text.split())
    try:
        value = bytes.fromhex(cleaned)
    except ValueError:
        raise ValidationFailed(f"{field} is not hex", field=field) from None
    if len(value) != size:
        raise ValidationFailed(f"{field} must be {size} bytes ({2 * size} hex digits)", field=field)
    return value


def admin_key_bytes(admin_key: Secret) -> bytes:
    """The 24 key bytes of an admin key kept as hex."""
    try:
        key = bytes.fromhex(admin_key.reveal().strip())
    except ValueError:
        raise AdminKeyInvalid("admin key is not hex") from None
    if len(key) != ADMIN_KEY_BYTES:
        raise AdminKeyInvalid(f"admin key is {len(key)} bytes, not {ADMIN_KEY_BYTES}")
    return key


def challenge_bytes(challenge_hex: str) -> bytes:
    return _hex_bytes(challenge_hex, field="challenge", size=CHALLENGE_BYTES)


def new_challenge() -> str:
    """A challenge as a card shows it: 8 random bytes, 16 upper-case hex digits."""
    return secrets.token_bytes(CHALLENGE_BYTES).hex().upper()


def compute_response(admin_key: Secret, challenge_hex: str) -> str:
    """The response to ``challenge_hex``: 3DES-EDE-ECB under the admin key, as 16
    upper-case hex digits (the minidriver's convention)."""
    # ECB over exactly one block is what the minidriver specifies; no bulk data goes here.
    cipher = Cipher(TripleDES(admin_key_bytes(admin_key)), modes.ECB())  # noqa: S305
    encryptor = cipher.encryptor()
    response = encryptor.update(challenge_bytes(challenge_hex)) + encryptor.finalize()
    return response.hex().upper()


def check_response(admin_key: Secret, challenge_hex: str, response_hex: str) -> None:
    """Raise ``ResponseRefused`` unless ``response_hex`` answers ``challenge_hex``
    (compared in constant time)."""
    expected = bytes.fromhex(compute_response(admin_key, challenge_hex))
    if not hmac.compare_digest(expected, response_bytes(response_hex)):
        raise ResponseRefused("the response does not answer the challenge")


def response_bytes(response_hex: str) -> bytes:
    return _hex_bytes(response_hex, field="response", size=CHALLENGE_BYTES)
