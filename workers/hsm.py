"""A CA key held in a PKCS#11 token (python-pkcs11): generated there, never leaving it.

``generate_key`` makes the key pair on the token (sensitive, not extractable) and returns
its public key; ``load_key`` returns a ``cryptography`` private key object whose
``sign()`` calls the token, so ``CertificateBuilder.sign`` and
``CertificateRevocationListBuilder.sign`` work unchanged (HARDWARE-NOTES: subclass the
key interface). The private-key methods that would need the key material
(``private_bytes``, ``private_numbers``, ``decrypt``, ``exchange``) refuse.

A process keeps one logged-in session per token and serialises every call on it with a
lock: login state is per token per process, and SoftHSM2 is not safe under concurrent
calls from several threads. The PIN travels as a ``Secret`` and never appears in an error.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import pkcs11
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11
from pkcs11.util.ec import (
    encode_ec_public_key,
    encode_ecdsa_signature,
    encode_named_curve_parameters,
)

from db.secrets import Secret
from schemas.errors import ConfigurationError, TransientError

_T = TypeVar("_T")
TokenPublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey

_CURVES = {"ec-p256": "secp256r1", "ec-p384": "secp384r1"}
_RSA_BITS = {"rsa-2048": 2048, "rsa-3072": 3072}
_RSA_MECHANISMS = {
    "sha256": Mechanism.SHA256_RSA_PKCS,
    "sha384": Mechanism.SHA384_RSA_PKCS,
    "sha512": Mechanism.SHA512_RSA_PKCS,
}


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
    """The token failed an operation; the message names the token, never the PIN."""


class _Token:
    """One logged-in session on one token, used under a lock."""

    def __init__(self, ref: TokenKeyRef) -> None:
        self.ref = ref
        self.lock = threading.RLock()
        self._session: Any = None
        self._private: Any = None

    def private_key(self) -> Any:
        """The private key object, found once per session."""
        if self._private is None:
            self._private = _find_private(self.session(), self.ref)
        return self._private

    def session(self) -> Any:
        if self._session is None:
            lib = _library(self.ref.module)
            try:
                token = lib.get_token(token_label=self.ref.token_label)
            except (p11.NoSuchToken, p11.MultipleTokensReturned):
                lib.reinitialize()  # a token created after the library loaded is invisible
                try:
                    token = lib.get_token(token_label=self.ref.token_label)
                except p11.NoSuchToken:
                    raise ConfigurationError(
                        f"no PKCS#11 token labelled {self.ref.token_label!r} in {self.ref.module}"
                    ) from None
                except p11.MultipleTokensReturned:
                    raise ConfigurationError(
                        f"more than one PKCS#11 token labelled {self.ref.token_label!r}"
                    ) from None
            try:
                self._session = token.open(rw=True, user_pin=self.ref.pin.reveal())
            except p11.PinIncorrect:
                raise ConfigurationError(
                    f"PKCS#11 token {self.ref.token_label!r} refused the CA PIN (CARDLINE_CA_PIN)"
                ) from None
            except p11.UserAlreadyLoggedIn:
                # A session of this process is logged in already: a plain one shares it.
                self._session = token.open(rw=True)
        return self._session

    def run(self, what: str, call: Callable[[Any], _T]) -> _T:
        """Run ``call(session)`` under the lock; a dead session is reopened once."""
        with self.lock:
            for attempt in (1, 2):
                try:
                    return call(self.session())
                except (p11.SessionHandleInvalid, p11.SessionClosed, p11.DeviceRemoved) as exc:
                    self._session = self._private = None
                    if attempt == 2:
                        raise TokenError(
                            f"PKCS#11 token {self.ref.token_label!r}: {what} failed "
                            f"({type(exc).__name__})"
                        ) from None
                except p11.PKCS11Error as exc:
                    raise TokenError(
                        f"PKCS#11 token {self.ref.token_label!r}: {what} failed "
                        f"({type(exc).__name__})"
                    ) from None
        raise AssertionError("unreachable")  # pragma: no cover


_libraries: dict[str, Any] = {}
_tokens: dict[tuple[str, str], _Token] = {}
_registry_lock = threading.Lock()


def _library(module: str) -> Any:
    with _registry_lock:
        if module not in _libraries:
            try:
                _libraries[module] = pkcs11.lib(module)
            except (OSError, RuntimeError, p11.PKCS11Error) as exc:
                raise ConfigurationError(
                    f"cannot load PKCS#11 module {module}: {type(exc).__name__}"
                ) from None
        return _libraries[module]


def _token(ref: TokenKeyRef) -> _Token:
    with _registry_lock:
        key = (ref.module, ref.token_label)
        token = _tokens.get(key)
        if token is None or token.ref.pin != ref.pin:
            token = _tokens[key] = _Token(ref)
        return token


def _find_private(session: Any, ref: TokenKeyRef) -> Any:
    keys = list(
        session.get_objects(
            {Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: ref.key_label}
        )
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
    return keys[0]


def _public_of(session: Any, ref: TokenKeyRef) -> TokenPublicKey:
    found = list(
        session.get_objects(
            {Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.LABEL: ref.key_label}
        )
    )
    if len(found) != 1:
        raise ConfigurationError(
            f"PKCS#11 token {ref.token_label!r}: expected one public key labelled "
            f"{ref.key_label!r}, found {len(found)}"
        )
    pub = found[0]
    if pub.key_type == KeyType.EC:
        loaded = serialization.load_der_public_key(encode_ec_public_key(pub))
        if not isinstance(loaded, ec.EllipticCurvePublicKey):
            raise ConfigurationError(f"key {ref.key_label!r} is not a usable EC key")
        return loaded
    numbers = rsa.RSAPublicNumbers(
        int.from_bytes(pub[Attribute.PUBLIC_EXPONENT], "big"),
        int.from_bytes(pub[Attribute.MODULUS], "big"),
    )
    return numbers.public_key()


def generate_key(ref: TokenKeyRef, algorithm: str) -> TokenPublicKey:
    """Generate the key pair on the token; returns its public key. Refuses a used label."""
    private_template = {
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: False,
        Attribute.TOKEN: True,
        Attribute.PRIVATE: True,
    }

    def make(session: Any) -> TokenPublicKey:
        existing = list(session.get_objects({Attribute.LABEL: ref.key_label}))
        if existing:
            raise ConfigurationError(
                f"PKCS#11 token {ref.token_label!r} already holds objects labelled "
                f"{ref.key_label!r}; choose another key_label or remove them"
            )
        if algorithm in _CURVES:
            params = session.create_domain_parameters(
                KeyType.EC,
                {Attribute.EC_PARAMS: encode_named_curve_parameters(_CURVES[algorithm])},
                local=True,
            )
            params.generate_keypair(
                id=ref.key_id,
                label=ref.key_label,
                store=True,
                private_template=private_template,
            )
        elif algorithm in _RSA_BITS:
            session.generate_keypair(
                KeyType.RSA,
                _RSA_BITS[algorithm],
                id=ref.key_id,
                label=ref.key_label,
                store=True,
                private_template=private_template,
            )
        else:
            raise ConfigurationError(f"unknown key algorithm {algorithm!r}")
        return _public_of(session, ref)

    return _token(ref).run("key generation", make)


def load_key(ref: TokenKeyRef) -> TokenRsaKey | TokenEcKey:
    """The token-held private key as a ``cryptography`` key whose ``sign()`` uses the token."""
    token = _token(ref)

    def find(session: Any) -> TokenPublicKey:
        token.private_key()
        return _public_of(session, ref)

    public = token.run("key lookup", find)
    if isinstance(public, rsa.RSAPublicKey):
        return TokenRsaKey(token, public)
    if isinstance(public, ec.EllipticCurvePublicKey):
        return TokenEcKey(token, public)
    raise ConfigurationError(f"key {ref.key_label!r} is neither RSA nor EC")


def _no_export(what: str) -> NoReturn:
    raise TypeError(f"a token-held key cannot {what}: it never leaves the token")


class TokenRsaKey(rsa.RSAPrivateKey):
    def __init__(self, token: _Token, public: rsa.RSAPublicKey) -> None:
        self._token = token
        self._public = public

    def sign(
        self,
        data: bytes,
        padding: padding.AsymmetricPadding,
        algorithm: utils.Prehashed | hashes.HashAlgorithm | utils.NoDigestInfo,
    ) -> bytes:
        if padding.name != "EMSA-PKCS1-v1_5" or isinstance(
            algorithm, utils.Prehashed | utils.NoDigestInfo
        ):
            raise TypeError("the token key signs PKCS#1 v1.5 over unhashed data only")
        mechanism = _RSA_MECHANISMS.get(algorithm.name)
        if mechanism is None:
            raise TypeError(f"the token key does not sign with {algorithm.name}")
        token = self._token

        def sign(session: Any) -> bytes:
            return bytes(token.private_key().sign(data, mechanism=mechanism))

        return self._token.run("signing", sign)

    @property
    def key_size(self) -> int:
        return self._public.key_size

    def public_key(self) -> rsa.RSAPublicKey:
        return self._public

    def decrypt(self, ciphertext: bytes, padding: padding.AsymmetricPadding) -> bytes:
        _no_export("decrypt here")

    def private_numbers(self) -> rsa.RSAPrivateNumbers:
        _no_export("give its private numbers")

    def private_bytes(
        self,
        encoding: serialization.Encoding,
        format: serialization.PrivateFormat,
        encryption_algorithm: serialization.KeySerializationEncryption,
    ) -> bytes:
        _no_export("be serialised")

    def __copy__(self) -> TokenRsaKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> TokenRsaKey:
        return self


class TokenEcKey(ec.EllipticCurvePrivateKey):
    def __init__(self, token: _Token, public: ec.EllipticCurvePublicKey) -> None:
        self._token = token
        self._public = public

    def sign(
        self,
        data: bytes | bytearray | memoryview,
        signature_algorithm: ec.EllipticCurveSignatureAlgorithm,
    ) -> bytes:
        if not isinstance(signature_algorithm, ec.ECDSA):
            raise TypeError("the token key signs ECDSA only")
        algorithm = signature_algorithm.algorithm
        if isinstance(algorithm, utils.Prehashed):
            digest = bytes(data)
        else:
            # SoftHSM2 has no CKM_ECDSA_SHA256: hash here, sign the digest on the token.
            h = hashes.Hash(algorithm)
            h.update(data)
            digest = h.finalize()
        token = self._token

        def sign(session: Any) -> bytes:
            raw = token.private_key().sign(digest, mechanism=Mechanism.ECDSA)
            return bytes(encode_ecdsa_signature(raw))

        return self._token.run("signing", sign)

    @property
    def curve(self) -> ec.EllipticCurve:
        return self._public.curve

    @property
    def key_size(self) -> int:
        return self._public.curve.key_size

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public

    def exchange(self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey) -> bytes:
        _no_export("do key agreement here")

    def private_numbers(self) -> ec.EllipticCurvePrivateNumbers:
        _no_export("give its private numbers")

    def private_bytes(
        self,
        encoding: serialization.Encoding,
        format: serialization.PrivateFormat,
        encryption_algorithm: serialization.KeySerializationEncryption,
    ) -> bytes:
        _no_export("be serialised")

    def __copy__(self) -> TokenEcKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> TokenEcKey:
        return self
