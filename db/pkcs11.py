"""PKCS#11 through python-pkcs11, shared by every stage that holds keys in a token.

The CA key (``workers.hsm``) and the card chip (``stations.pkcs11_token``) both use it:

- ``library(module)``: the module loaded once per path per process.
- ``LOCK``: one process-wide lock taken around every call into any PKCS#11 library.
  python-pkcs11 releases the GIL and SoftHSM2 is not safe under concurrent calls from
  several threads (HARDWARE-NOTES), so nothing here or in a caller runs unlocked.
- ``Library.reinitialize()``: C_Finalize + C_Initialize, which makes tokens created by
  another process visible but closes every session of the process; ``generation``
  counts reinitialisations so that a ``KeptSession`` knows its handle is dead (SoftHSM2
  reuses handle numbers, so an old handle may name somebody else's new session).
- ``ckr_code(exc)``: the raw ``CKR_*`` name of a python-pkcs11 error, from one table.
- ``generate_keypair``, ``public_key_of``, ``private_key_template``: key material in and
  out of a token in ``cryptography`` terms.
- ``TokenRsaKey``/``TokenEcKey``: ``cryptography`` private keys whose ``sign()`` calls the
  token, so CSR, certificate and CRL builders sign on the token unchanged.

Errors from python-pkcs11 propagate (callers map them with ``ckr_code`` into their own
errors); a module that cannot be loaded is a ``ConfigurationError``. No message here
ever contains a PIN: PINs arrive as ``Secret`` and are revealed only into the call.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, NoReturn, Protocol

import pkcs11
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11
from pkcs11.util.ec import (
    decode_ec_public_key,
    encode_ec_public_key,
    encode_ecdsa_signature,
    encode_named_curve_parameters,
)

from db.secrets import Secret
from schemas.errors import ConfigurationError

LOCK = threading.RLock()

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

CURVES = {"ec-p256": "secp256r1", "ec-p384": "secp384r1"}
RSA_BITS = {"rsa-2048": 2048, "rsa-3072": 3072}
_RSA_MECHANISMS = {
    "sha256": Mechanism.SHA256_RSA_PKCS,
    "sha384": Mechanism.SHA384_RSA_PKCS,
    "sha512": Mechanism.SHA512_RSA_PKCS,
}

# The CKR_* return value behind each python-pkcs11 exception (its own NoSuchToken and
# friends are searches that found nothing, not return values; they keep their name).
_CKR: dict[type[p11.PKCS11Error], str] = {
    p11.AnotherUserAlreadyLoggedIn: "CKR_USER_ANOTHER_ALREADY_LOGGED_IN",
    p11.ArgumentsBad: "CKR_ARGUMENTS_BAD",
    p11.AttributeReadOnly: "CKR_ATTRIBUTE_READ_ONLY",
    p11.AttributeSensitive: "CKR_ATTRIBUTE_SENSITIVE",
    p11.AttributeTypeInvalid: "CKR_ATTRIBUTE_TYPE_INVALID",
    p11.AttributeValueInvalid: "CKR_ATTRIBUTE_VALUE_INVALID",
    p11.DataInvalid: "CKR_DATA_INVALID",
    p11.DataLenRange: "CKR_DATA_LEN_RANGE",
    p11.DeviceError: "CKR_DEVICE_ERROR",
    p11.DeviceMemory: "CKR_DEVICE_MEMORY",
    p11.DeviceRemoved: "CKR_DEVICE_REMOVED",
    p11.DomainParamsInvalid: "CKR_DOMAIN_PARAMS_INVALID",
    p11.EncryptedDataInvalid: "CKR_ENCRYPTED_DATA_INVALID",
    p11.EncryptedDataLenRange: "CKR_ENCRYPTED_DATA_LEN_RANGE",
    p11.ExceededMaxIterations: "CKR_EXCEEDED_MAX_ITERATIONS",
    p11.FunctionCancelled: "CKR_FUNCTION_CANCELED",
    p11.FunctionFailed: "CKR_FUNCTION_FAILED",
    p11.FunctionNotSupported: "CKR_FUNCTION_NOT_SUPPORTED",
    p11.FunctionRejected: "CKR_FUNCTION_REJECTED",
    p11.GeneralError: "CKR_GENERAL_ERROR",
    p11.HostMemory: "CKR_HOST_MEMORY",
    p11.KeyHandleInvalid: "CKR_KEY_HANDLE_INVALID",
    p11.KeyIndigestible: "CKR_KEY_INDIGESTIBLE",
    p11.KeyNeeded: "CKR_KEY_NEEDED",
    p11.KeyNotNeeded: "CKR_KEY_NOT_NEEDED",
    p11.KeyNotWrappable: "CKR_KEY_NOT_WRAPPABLE",
    p11.KeySizeRange: "CKR_KEY_SIZE_RANGE",
    p11.KeyTypeInconsistent: "CKR_KEY_TYPE_INCONSISTENT",
    p11.KeyUnextractable: "CKR_KEY_UNEXTRACTABLE",
    p11.MechanismInvalid: "CKR_MECHANISM_INVALID",
    p11.MechanismParamInvalid: "CKR_MECHANISM_PARAM_INVALID",
    p11.NoEvent: "CKR_NO_EVENT",
    p11.ObjectHandleInvalid: "CKR_OBJECT_HANDLE_INVALID",
    p11.OperationActive: "CKR_OPERATION_ACTIVE",
    p11.OperationNotInitialized: "CKR_OPERATION_NOT_INITIALIZED",
    p11.PinExpired: "CKR_PIN_EXPIRED",
    p11.PinIncorrect: "CKR_PIN_INCORRECT",
    p11.PinInvalid: "CKR_PIN_INVALID",
    p11.PinLenRange: "CKR_PIN_LEN_RANGE",
    p11.PinLocked: "CKR_PIN_LOCKED",
    p11.PinTooWeak: "CKR_PIN_TOO_WEAK",
    p11.PublicKeyInvalid: "CKR_PUBLIC_KEY_INVALID",
    p11.RandomNoRNG: "CKR_RANDOM_NO_RNG",
    p11.RandomSeedNotSupported: "CKR_RANDOM_SEED_NOT_SUPPORTED",
    p11.SessionClosed: "CKR_SESSION_CLOSED",
    p11.SessionCount: "CKR_SESSION_COUNT",
    p11.SessionExists: "CKR_SESSION_EXISTS",
    p11.SessionHandleInvalid: "CKR_SESSION_HANDLE_INVALID",
    p11.SessionReadOnly: "CKR_SESSION_READ_ONLY",
    p11.SessionReadOnlyExists: "CKR_SESSION_READ_ONLY_EXISTS",
    p11.SessionReadWriteSOExists: "CKR_SESSION_READ_WRITE_SO_EXISTS",
    p11.SignatureInvalid: "CKR_SIGNATURE_INVALID",
    p11.SignatureLenRange: "CKR_SIGNATURE_LEN_RANGE",
    p11.SlotIDInvalid: "CKR_SLOT_ID_INVALID",
    p11.TemplateIncomplete: "CKR_TEMPLATE_INCOMPLETE",
    p11.TemplateInconsistent: "CKR_TEMPLATE_INCONSISTENT",
    p11.TokenNotPresent: "CKR_TOKEN_NOT_PRESENT",
    p11.TokenNotRecognised: "CKR_TOKEN_NOT_RECOGNIZED",
    p11.TokenWriteProtected: "CKR_TOKEN_WRITE_PROTECTED",
    p11.UnwrappingKeyHandleInvalid: "CKR_UNWRAPPING_KEY_HANDLE_INVALID",
    p11.UnwrappingKeySizeRange: "CKR_UNWRAPPING_KEY_SIZE_RANGE",
    p11.UnwrappingKeyTypeInconsistent: "CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT",
    p11.UserAlreadyLoggedIn: "CKR_USER_ALREADY_LOGGED_IN",
    p11.UserNotLoggedIn: "CKR_USER_NOT_LOGGED_IN",
    p11.UserPinNotInitialized: "CKR_USER_PIN_NOT_INITIALIZED",
    p11.UserTooManyTypes: "CKR_USER_TOO_MANY_TYPES",
    p11.WrappedKeyInvalid: "CKR_WRAPPED_KEY_INVALID",
    p11.WrappedKeyLenRange: "CKR_WRAPPED_KEY_LEN_RANGE",
    p11.WrappingKeyHandleInvalid: "CKR_WRAPPING_KEY_HANDLE_INVALID",
    p11.WrappingKeySizeRange: "CKR_WRAPPING_KEY_SIZE_RANGE",
    p11.WrappingKeyTypeInconsistent: "CKR_WRAPPING_KEY_TYPE_INCONSISTENT",
}


def ckr_code(exc: p11.PKCS11Error) -> str:
    """The ``CKR_*`` name for a python-pkcs11 error (its class name when it has none)."""
    return _CKR.get(type(exc), type(exc).__name__)


class Library:
    """One loaded PKCS#11 module. Get it from ``library()``; use it under ``LOCK``."""

    def __init__(self, module: str, lib: Any) -> None:
        self.module = module
        self._lib = lib
        self.generation = 0

    def reinitialize(self) -> None:
        """C_Finalize then C_Initialize: tokens made since become visible, and every
        session of this process on this module is gone (``generation`` moves on)."""
        with LOCK:
            self._lib.reinitialize()
            self.generation += 1

    def tokens(self) -> list[pkcs11.Token]:
        """The initialised and uninitialised tokens this process sees now."""
        with LOCK:
            return list(self._lib.get_tokens())

    def token(self, *, label: str | None = None, serial: bytes | None = None) -> pkcs11.Token:
        """The one token with this label or serial; reinitialises once when it is not
        (uniquely) visible. Raises ``NoSuchToken``/``MultipleTokensReturned`` after that."""
        query: dict[str, Any] = {"token_serial": serial} if serial else {"token_label": label}
        with LOCK:
            try:
                return self._lib.get_token(**query)  # type: ignore[no-any-return]  # untyped Cython
            except (p11.NoSuchToken, p11.MultipleTokensReturned):
                self.reinitialize()
                return self._lib.get_token(**query)  # type: ignore[no-any-return]  # untyped Cython


_libraries: dict[str, Library] = {}


def library(module: str) -> Library:
    """The module at path ``module``, loaded (and C_Initialize'd) once per process."""
    with LOCK:
        found = _libraries.get(module)
        if found is None:
            try:
                found = _libraries[module] = Library(module, pkcs11.lib(module))
            except (OSError, RuntimeError) as exc:  # PKCS11Error is a RuntimeError
                raise ConfigurationError(
                    f"cannot load PKCS#11 module {module}: {type(exc).__name__}"
                ) from None
        return found


class KeptSession:
    """A session kept open across calls and reopened once the library was reinitialised.

    ``open_session`` makes a new one (logging in as it likes). Login state is per token
    per process: closing a logged-in session logs every session of the process out.
    """

    def __init__(self, library: Library, open_session: Callable[[], pkcs11.Session]) -> None:
        self.library = library
        self._open = open_session
        self._session: pkcs11.Session | None = None
        self._generation = -1

    def get(self) -> pkcs11.Session:
        """The live session, opened now when there is none (or only a dead one)."""
        with LOCK:
            if self._session is None or self._generation != self.library.generation:
                self._session = None
                session = self._open()  # may itself reinitialise (a token not yet seen)
                self._session, self._generation = session, self.library.generation
            return self._session

    def is_open(self) -> bool:
        with LOCK:
            return self._session is not None and self._generation == self.library.generation

    def forget(self) -> None:
        """Drop the session without closing it (its handle is known to be dead)."""
        with LOCK:
            self._session = None

    def close(self) -> None:
        """Close the session (logging out) if it is still alive; idempotent."""
        with LOCK:
            alive = self.is_open()
            session, self._session = self._session, None
            if alive and session is not None:
                session.close()


def open_session(
    token: pkcs11.Token, *, user_pin: Secret | None = None, so_pin: Secret | None = None
) -> pkcs11.Session:
    """A read-write session, logged in as user or SO when a PIN is given.

    Read-write on purpose: a failed login leaves its session behind (python-pkcs11 opens
    before it logs in), and a read-only one left behind would make every later SO login
    fail with CKR_SESSION_READ_ONLY_EXISTS.
    """
    with LOCK:
        if so_pin is not None:
            return token.open(rw=True, so_pin=so_pin.reveal())
        if user_pin is not None:
            return token.open(rw=True, user_pin=user_pin.reveal())
        return token.open(rw=True)


def find(session: pkcs11.Session, attrs: dict[Attribute, Any]) -> list[pkcs11.Object]:
    """Every object matching ``attrs``; the search is always run to its end, so no search
    operation is left for the garbage collector to finalise on a reused handle."""
    with LOCK:
        return list(session.get_objects(attrs))


_PRIVATE_TEMPLATE = {
    Attribute.SENSITIVE: True,
    Attribute.EXTRACTABLE: False,
    Attribute.TOKEN: True,
    Attribute.PRIVATE: True,
}


def generate_keypair(
    session: pkcs11.Session, algorithm: str, *, key_id: bytes, label: str
) -> tuple[pkcs11.PublicKey, pkcs11.PrivateKey]:
    """Generate a key pair on the token (private half sensitive, never extractable).

    ``algorithm`` is a key of ``CURVES`` or ``RSA_BITS``; another is a ``ValueError``.
    """
    with LOCK:
        if algorithm in CURVES:
            params = session.create_domain_parameters(
                KeyType.EC,
                {Attribute.EC_PARAMS: encode_named_curve_parameters(CURVES[algorithm])},
                local=True,
            )
            return params.generate_keypair(
                id=key_id, label=label, store=True, private_template=_PRIVATE_TEMPLATE
            )
        if algorithm in RSA_BITS:
            return session.generate_keypair(
                KeyType.RSA,
                RSA_BITS[algorithm],
                id=key_id,
                label=label,
                store=True,
                private_template=_PRIVATE_TEMPLATE,
            )
    raise ValueError(f"unsupported key algorithm {algorithm!r}; use one of {algorithms()}")


def algorithms() -> list[str]:
    return sorted([*CURVES, *RSA_BITS])


def public_key_of(obj: pkcs11.Object) -> PublicKey:
    """The ``cryptography`` public key of a token public key object."""
    with LOCK:
        key_type = obj[Attribute.KEY_TYPE]
        if key_type == KeyType.EC:
            loaded = serialization.load_der_public_key(encode_ec_public_key(obj))  # type: ignore[arg-type]  # a PublicKey object
            if not isinstance(loaded, ec.EllipticCurvePublicKey):
                raise ValueError("token EC key is not a usable EC public key")
            return loaded
        if key_type == KeyType.RSA:
            return rsa.RSAPublicNumbers(
                int.from_bytes(obj[Attribute.PUBLIC_EXPONENT], "big"),
                int.from_bytes(obj[Attribute.MODULUS], "big"),
            ).public_key()
    raise ValueError(f"token key type {key_type!r} is neither RSA nor EC")


def _int_bytes(value: int) -> bytes:
    return value.to_bytes((value.bit_length() + 7) // 8 or 1, "big")


def private_key_template(key: PrivateKey) -> dict[Attribute, Any]:
    """The attributes that store ``key`` as a token private key object: sensitive, not
    extractable, for decryption (RSA) or key agreement (EC). Add ID and LABEL."""
    template: dict[Attribute, Any] = {Attribute.CLASS: ObjectClass.PRIVATE_KEY, **_PRIVATE_TEMPLATE}
    if isinstance(key, rsa.RSAPrivateKey):
        n = key.private_numbers()
        template.update(
            {
                Attribute.KEY_TYPE: KeyType.RSA,
                Attribute.MODULUS: _int_bytes(n.public_numbers.n),
                Attribute.PUBLIC_EXPONENT: _int_bytes(n.public_numbers.e),
                Attribute.PRIVATE_EXPONENT: _int_bytes(n.d),
                Attribute.PRIME_1: _int_bytes(n.p),
                Attribute.PRIME_2: _int_bytes(n.q),
                Attribute.EXPONENT_1: _int_bytes(n.dmp1),
                Attribute.EXPONENT_2: _int_bytes(n.dmq1),
                Attribute.COEFFICIENT: _int_bytes(n.iqmp),
                Attribute.DECRYPT: True,
                Attribute.UNWRAP: True,
                Attribute.SIGN: True,
            }
        )
        return template
    curve = key.curve.name
    if curve not in CURVES.values():
        raise ValueError(f"unsupported curve {curve}")
    size = (key.curve.key_size + 7) // 8
    template.update(
        {
            Attribute.KEY_TYPE: KeyType.EC,
            Attribute.EC_PARAMS: encode_named_curve_parameters(curve),
            Attribute.VALUE: key.private_numbers().private_value.to_bytes(size, "big"),
            Attribute.DERIVE: True,
            Attribute.SIGN: True,
        }
    )
    return template


def public_key_template(key: PublicKey) -> dict[Attribute, Any]:
    """The attributes that store ``key`` as a token public key object. Add ID and LABEL."""
    if isinstance(key, rsa.RSAPublicKey):
        numbers = key.public_numbers()
        return {
            Attribute.CLASS: ObjectClass.PUBLIC_KEY,
            Attribute.KEY_TYPE: KeyType.RSA,
            Attribute.TOKEN: True,
            Attribute.PRIVATE: False,
            Attribute.MODULUS: _int_bytes(numbers.n),
            Attribute.PUBLIC_EXPONENT: _int_bytes(numbers.e),
            Attribute.ENCRYPT: True,
            Attribute.VERIFY: True,
            Attribute.WRAP: True,
        }
    spki = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    template = decode_ec_public_key(spki)
    template.update({Attribute.TOKEN: True, Attribute.PRIVATE: False, Attribute.VERIFY: True})
    return template


class TokenSigner(Protocol):
    """Signs with one token-held private key; locking and error mapping are its own."""

    def sign(self, data: bytes, mechanism: Mechanism) -> bytes:
        """``data`` signed on the token with ``mechanism``."""


def _no_export(what: str) -> NoReturn:
    raise TypeError(f"a token-held key cannot {what}: it never leaves the token")


class TokenRsaKey(rsa.RSAPrivateKey):
    """An RSA key in a token: PKCS#1 v1.5 signatures (SHA-256/384/512) made there."""

    def __init__(self, signer: TokenSigner, public: rsa.RSAPublicKey) -> None:
        self._signer = signer
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
        return self._signer.sign(bytes(data), mechanism)

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
    """An EC key in a token: ECDSA over a digest made here (SoftHSM2 has no
    CKM_ECDSA_SHA256), signed with CKM_ECDSA there, DER-encoded here."""

    def __init__(self, signer: TokenSigner, public: ec.EllipticCurvePublicKey) -> None:
        self._signer = signer
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
            h = hashes.Hash(algorithm)
            h.update(data)
            digest = h.finalize()
        return bytes(encode_ecdsa_signature(self._signer.sign(digest, Mechanism.ECDSA)))

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


def token_key(signer: TokenSigner, public: PublicKey) -> TokenRsaKey | TokenEcKey:
    """The ``cryptography`` private key for a token key with this public half."""
    if isinstance(public, rsa.RSAPublicKey):
        return TokenRsaKey(signer, public)
    return TokenEcKey(signer, public)
