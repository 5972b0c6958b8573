"""A CA key held in a PKCS#11 token (python-pkcs11): generated there, never leaving it.

``generate_key`` makes the key pair on the token (sensitive, not extractable) and returns
its public key; ``load_key`` returns a ``cryptography`` private key object whose
``sign()`` calls the token, so ``CertificateBuilder.sign`` and
``CertificateRevocationListBuilder.sign`` work unchanged (``db.pkcs11.TokenRsaKey`` /
``TokenEcKey``). The private-key methods that would need the key material
(``private_bytes``, ``private_numbers``, ``decrypt``, ``exchange``) refuse.

A process keeps one logged-in session per token (``db.pkcs11.KeptSession``, reopened
after a reinitialisation) and makes every call under ``db.pkcs11.LOCK``: login state is
per token per process, and SoftHSM2 is not safe under concurrent calls from several
threads. The PIN travels as a ``Secret`` and never appears in an error.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar, cast

import pkcs11
from pkcs11 import Attribute, Mechanism, ObjectClass
from pkcs11 import exceptions as p11
from pkcs11.types import SignMixin

from db import pkcs11 as token_lib
from db.pkcs11 import TokenEcKey, TokenRsaKey
from db.secrets import Secret
from schemas.errors import ConfigurationError, TransientError

__all__ = ["TokenEcKey", "TokenError", "TokenKeyRef", "TokenRsaKey", "generate_key", "load_key"]

_T = TypeVar("_T")
TokenPublicKey = token_lib.PublicKey


@dataclass(frozen=True)
class TokenKeyRef:
    """Where a token-held key lives. The PIN is a ``Secret``: it does not print."""

    pin: Secret
    module: str
    token_label: str
    key_label: str

    @property
    def key_id(self) -> bytes:
        # CKA_ID derived from the label, so a key and a certificate stored beside it match.
        return hashlib.sha256(self.key_label.encode()).digest()[:16]


class TokenError(TransientError):
    """The token failed an operation; the message names the token and the CKR_* code,
    never the PIN (``code`` keeps the raw code)."""

    def __init__(self, message: str, *, code: str) -> None:
        self.code = code
        super().__init__(message)


class _Token:
    """One logged-in session on one token; the signer of its key."""

    def __init__(self, ref: TokenKeyRef) -> None:
        self.ref = ref
        self.kept = token_lib.KeptSession(token_lib.library(ref.module), self._open)
        self._private: tuple[pkcs11.Session, pkcs11.PrivateKey] | None = None

    def _open(self) -> pkcs11.Session:
        library = self.kept.library
        try:
            token = library.token(label=self.ref.token_label)
        except p11.NoSuchToken:
            raise ConfigurationError(
                f"no PKCS#11 token labelled {self.ref.token_label!r} in {self.ref.module}"
            ) from None
        except p11.MultipleTokensReturned:
            raise ConfigurationError(
                f"more than one PKCS#11 token labelled {self.ref.token_label!r}"
            ) from None
        try:
            return token_lib.open_session(token, user_pin=self.ref.pin)
        except p11.PinIncorrect:
            raise ConfigurationError(
                f"PKCS#11 token {self.ref.token_label!r} refused the CA PIN (CARDLINE_CA_PIN)"
            ) from None
        except p11.UserAlreadyLoggedIn:
            # A session of this process is logged in already: a plain one shares it.
            return token_lib.open_session(token)

    def private_key(self) -> pkcs11.PrivateKey:
        """The private key object, found once per session."""
        session = self.kept.get()
        if self._private is None or self._private[0] is not session:
            self._private = (session, _find_private(session, self.ref))
        return self._private[1]

    def run(self, what: str, call: Callable[[pkcs11.Session], _T]) -> _T:
        """Run ``call(session)`` under the lock; a dead session is reopened once."""
        with token_lib.LOCK:
            for attempt in (1, 2):
                try:
                    return call(self.kept.get())
                except (p11.SessionHandleInvalid, p11.SessionClosed, p11.DeviceRemoved) as exc:
                    self.kept.forget()
                    self._private = None
                    if attempt == 2:
                        raise self._error(what, exc) from None
                except p11.PKCS11Error as exc:
                    raise self._error(what, exc) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def sign(self, data: bytes, mechanism: Mechanism) -> bytes:
        return self.run(
            "signing",
            lambda _: bytes(_signing(self.private_key()).sign(data, mechanism=mechanism)),
        )

    def _error(self, what: str, exc: p11.PKCS11Error) -> TokenError:
        code = token_lib.ckr_code(exc)
        return TokenError(
            f"PKCS#11 token {self.ref.token_label!r}: {what} failed ({code})", code=code
        )


_tokens: dict[tuple[str, str], _Token] = {}


def _token(ref: TokenKeyRef) -> _Token:
    with token_lib.LOCK:
        key = (ref.module, ref.token_label)
        token = _tokens.get(key)
        if token is None or token.ref.pin != ref.pin:
            token = _tokens[key] = _Token(ref)
        return token


def _signing(key: pkcs11.PrivateKey) -> SignMixin:
    # python-pkcs11 builds each key object's class from mixins at run time; its stubs
    # type a private key without them.
    return cast(SignMixin, key)


def _find_private(session: pkcs11.Session, ref: TokenKeyRef) -> pkcs11.PrivateKey:
    keys = token_lib.find(
        session, {Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: ref.key_label}
    )
    if not keys:
        raise ConfigurationError(
            f"PKCS#11 token {ref.token_label!r} holds no private key labelled {ref.key_label!r}"
        )
    if len(keys) > 1:
        raise ConfigurationError(
            f"PKCS#11 token {ref.token_label!r} holds {len(keys)} keys labelled "
            f"{ref.key_label!r}; labels must be unique"
        )
    return keys[0]  # type: ignore[return-value]  # the search asked for private keys only


def _public_of(session: pkcs11.Session, ref: TokenKeyRef) -> TokenPublicKey:
    found = token_lib.find(
        session, {Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.LABEL: ref.key_label}
    )
    if len(found) != 1:
        raise ConfigurationError(
            f"PKCS#11 token {ref.token_label!r}: expected one public key labelled "
            f"{ref.key_label!r}, found {len(found)}"
        )
    try:
        return token_lib.public_key_of(found[0])
    except ValueError:
        raise ConfigurationError(f"key {ref.key_label!r} is neither RSA nor EC") from None


def generate_key(ref: TokenKeyRef, algorithm: str) -> TokenPublicKey:
    """Generate the key pair on the token; returns its public key. Refuses a used label."""
    if algorithm not in token_lib.algorithms():
        raise ConfigurationError(f"unknown key algorithm {algorithm!r}")

    def make(session: pkcs11.Session) -> TokenPublicKey:
        if token_lib.find(session, {Attribute.LABEL: ref.key_label}):
            raise ConfigurationError(
                f"PKCS#11 token {ref.token_label!r} already holds objects labelled "
                f"{ref.key_label!r}; choose another key_label or remove them"
            )
        token_lib.generate_keypair(session, algorithm, key_id=ref.key_id, label=ref.key_label)
        return _public_of(session, ref)

    return _token(ref).run("key generation", make)


def load_key(ref: TokenKeyRef) -> TokenRsaKey | TokenEcKey:
    """The token-held private key as a ``cryptography`` key whose ``sign()`` uses the token."""
    token = _token(ref)

    def find(session: pkcs11.Session) -> TokenPublicKey:
        token.private_key()
        return _public_of(session, ref)

    return token_lib.token_key(token, token.run("key lookup", find))
