"""Secrets at rest: sealed with AES-256-GCM under the master key.

Each sealed value is bound to its context (for example ``credential:42:pin``) as
associated data, so a sealed PIN copied into another row or column does not open.
Opened values come back wrapped in ``Secret``, whose ``repr``/``str`` never show the
value: a secret that reaches a log line or an exception text by accident prints stars.
"""

from __future__ import annotations

import base64
import os
import secrets as _random
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from schemas.errors import ConfigurationError, PermanentError

_VERSION = "v1"
KEY_BYTES = 32


class Secret:
    """A secret value that does not print itself."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('****')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and _random.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        return hash(("Secret", len(self._value)))


class SealedValueError(PermanentError):
    """A sealed value is corrupt, was sealed under another key, or belongs elsewhere."""


class SecretBox:
    """Seals and opens secrets under one master key."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ConfigurationError(f"master key must be {KEY_BYTES} bytes, got {len(key)}")
        self._aead = AESGCM(key)
        self._key = key

    @classmethod
    def from_b64(cls, text: str) -> SecretBox:
        try:
            key = base64.b64decode(text.strip(), validate=True)
        except ValueError as exc:
            raise ConfigurationError("CARDLINE_MASTER_KEY is not valid base64") from exc
        return cls(key)

    @classmethod
    def from_key_file(cls, path: Path, *, create: bool = True) -> SecretBox:
        """Load the key file, creating it (mode 0600) with a fresh random key if asked."""
        if not path.exists():
            if not create:
                raise ConfigurationError(f"master key file {path} does not exist")
            path.parent.mkdir(parents=True, exist_ok=True)
            key_b64 = base64.b64encode(os.urandom(KEY_BYTES)).decode()
            # O_EXCL: two processes starting at once must not each write a different key.
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass
            else:
                with os.fdopen(fd, "w") as fh:
                    fh.write(key_b64 + "\n")
        return cls.from_b64(path.read_text())

    def derive_key(self, info: bytes) -> bytes:
        """A 32-byte key for one other purpose, named by ``info`` (HKDF-SHA256 over the
        master key): it opens no sealed value, and does not give away the master key."""
        return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(
            self._key
        )

    def seal(self, value: str | bytes, *, context: str) -> str:
        nonce = os.urandom(12)
        data = value.encode() if isinstance(value, str) else value
        ct = self._aead.encrypt(nonce, data, context.encode())
        return f"{_VERSION}:{base64.b64encode(nonce + ct).decode()}"

    def open_bytes(self, token: str, *, context: str) -> bytes:
        version, _, body = token.partition(":")
        if version != _VERSION:
            raise SealedValueError(f"unknown sealed-value version {version!r} for {context}")
        raw = base64.b64decode(body)
        try:
            return self._aead.decrypt(raw[:12], raw[12:], context.encode())
        except InvalidTag as exc:
            raise SealedValueError(f"sealed value for {context} does not open") from exc

    def open(self, token: str, *, context: str) -> Secret:
        return Secret(self.open_bytes(token, context=context).decode())


def random_digits(length: int) -> Secret:
    """A uniformly random numeric secret (PIN, PUK) from the OS CSPRNG."""
    return Secret("".join(str(_random.randbelow(10)) for _ in range(length)))


def context(entity: str, entity_id: int, field: str) -> str:
    """The associated-data label that binds a sealed value to its row and column."""
    return f"{entity}:{entity_id}:{field}"
