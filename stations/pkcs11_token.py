"""The card's chip through PKCS#11 (python-pkcs11): the real ``Token`` driver.

The model, as SoftHSM2 lets us test it. The station's hopper is a token directory; a
blank card is a token whose label matches the glob ``token_label``, whose user PIN is
not initialised (CKF_USER_PIN_INITIALIZED clear) and whose SO PIN is the manufacturer's
transport key ``transport_pin``. ``initialise`` takes the first blank in label order
that no driver in this process has taken yet (reinitialising the library when none is
visible, so tokens made since it loaded appear), logs in as SO with the transport key,
sets the user PIN, changes the SO PIN to the PUK, logs out, logs in as the user and
keeps that session for the card. A token label cannot change after C_InitToken, so the
card label goes into the CKA_LABEL of every object instead: ``"<prefix><card>
authentication key"``, ``"... retired encryption key"``.

Keys are generated on the token (sensitive, never extractable); CKA_ID is the subject
key identifier of the public key, as ``stations.sim`` and most issuing tools set it.
A CSR is signed on the token; a certificate is stored beside its key only when its
public key is the key's. Escrowed keys are imported as private key objects (sensitive,
not extractable) with their public key and certificate under one CKA_ID.

At an update desk (``stations.desk``) a produced card comes back: ``open_card`` finds
its token (the one matching ``token_label`` that carries the card's admin key or
certificates under its card label: SoftHSM2 has no reader, so the chip serial the
reader read cannot name the token) and logs in with its PIN. A renewal generates a key
``keep_old``: it is labelled ``"... new authentication key"`` beside the current one
(listed ``fresh``) and takes the current label once ``delete_key`` has erased the old
one; a desk killed in between finds it promoted when it opens the card again.

PINs: ``verify_pin`` logs in (False on CKR_PIN_INCORRECT), ``unblock`` resets the PIN
as SO with the PUK, ``change_pin`` changes it as the user. This driver counts nothing:
SoftHSM2 never locks a PIN, so retry counting is ``stations.pin.PinGuard``'s.

Every call into the library is made under ``db.pkcs11.LOCK``. Every failure is a CHIP
``DeviceFault`` with the raw CKR_* name as ``code``; codes this driver decides itself
reuse the CKR_* a card would return for the same thing (see ``_NOT_LOGGED_IN`` and
friends). No message or log event carries a PIN, a PUK or key material.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hmac
from collections.abc import Callable, Iterator
from typing import Any, cast

import pkcs11
import structlog
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass, TokenFlag
from pkcs11 import exceptions as p11
from pkcs11.types import EncryptMixin, SignMixin
from pkcs11.util.x509 import decode_x509_certificate

from db import pkcs11 as token_lib
from db.adminkey import ResponseRefused, admin_key_bytes, response_bytes
from db.secrets import Secret
from schemas.card_numbers import mask_card_number
from schemas.errors import DeviceFault
from schemas.states import CertUsage, FaultKind
from stations.sim import TokenObject

log = structlog.get_logger(__name__)

KEY_TYPES = ("ec-p256", "rsa-2048")

# Codes for refusals this driver decides itself, named as a PKCS#11 token would.
_NOT_LOGGED_IN = "CKR_USER_NOT_LOGGED_IN"  # no card, or its session is closed
_NOT_PERSONALISED = "CKR_USER_PIN_NOT_INITIALIZED"  # PIN services before initialise
_BAD_DATA = "CKR_DATA_INVALID"  # a certificate or key that does not fit (sim: 6A80)
_NO_KEY = "CKR_KEY_HANDLE_INVALID"  # no key with that CKA_ID (sim: 6A88)
_NO_BLANK = "CKR_TOKEN_NOT_PRESENT"  # the hopper is empty

# (module, token serial) of every blank a driver in this process has taken: two
# stations of one process never personalise the same token, and a blank that failed is
# not fed again (a real one went to the reject bin).
_taken: set[tuple[str, bytes]] = set()


def _fault(detail: str, code: str) -> DeviceFault:
    return DeviceFault(FaultKind.CHIP, detail, code=code)


@contextlib.contextmanager
def _chip(what: str) -> Iterator[None]:
    """Hold the library lock; turn a PKCS#11 error into a CHIP fault with its CKR code."""
    with token_lib.LOCK:
        try:
            yield
        except p11.PKCS11Error as exc:
            raise _fault(f"{what} failed", token_lib.ckr_code(exc)) from None


def _key_id(public: token_lib.PublicKey) -> bytes:
    """CKA_ID as most issuing tools set it: the subject key identifier (SHA-1 of the key)."""
    return x509.SubjectKeyIdentifier.from_public_key(public).digest


def _spki(public: token_lib.PublicKey) -> bytes:
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _key_type(public: token_lib.PublicKey) -> str:
    if isinstance(public, rsa.RSAPublicKey):
        return f"rsa-{public.key_size}"
    return "ec-p256" if isinstance(public.curve, ec.SECP256R1) else f"ec-{public.curve.name}"


def _parse_certificate(cert_pem: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(cert_pem.encode())
    except ValueError:
        raise _fault("certificate is not a readable PEM X.509 certificate", _BAD_DATA) from None


def _load_escrowed_key(key_pem: Secret) -> token_lib.PrivateKey:
    """The private key in ``key_pem``; errors never quote the key or the parser's message."""
    try:
        key = serialization.load_pem_private_key(key_pem.reveal().encode(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise _fault(
            "escrowed key is not a readable unencrypted PEM private key", _BAD_DATA
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise _fault("escrowed key is neither RSA nor EC", _BAD_DATA)
    return key


def _check_cert_matches(cert: x509.Certificate, public: token_lib.PublicKey) -> None:
    cert_key = cert.public_key()
    if not isinstance(cert_key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise _fault("certificate key is neither RSA nor EC", _BAD_DATA)
    if _spki(cert_key) != _spki(public):
        raise _fault("certificate does not belong to the key", _BAD_DATA)


class _KeySigner:
    """Signs with the card's private key ``key_id`` through the card's session."""

    def __init__(self, token: Pkcs11Token, key_id: bytes) -> None:
        self._token = token
        self._key_id = key_id

    def sign(self, data: bytes, mechanism: Mechanism) -> bytes:
        with token_lib.LOCK:
            key = self._token._private(self._token._session(), self._key_id)
            return bytes(cast(SignMixin, key).sign(data, mechanism=mechanism))


class Pkcs11Token:
    """The chip in the encoder, as a PKCS#11 token (see the module docstring).

    One driver serves one station and encodes many cards: ``initialise`` moves it to the
    next blank. ``key_label_prefix`` goes before the card label in every CKA_LABEL.
    """

    def __init__(
        self,
        module: str,
        *,
        token_label: str,
        transport_pin: Secret,
        key_label_prefix: str = "",
    ) -> None:
        self._library = token_lib.library(module)  # a missing module fails here, at start-up
        self.module = module
        self.token_label = token_label
        self._transport_pin = transport_pin
        self._prefix = key_label_prefix
        # The card in the encoder: its token's serial and label, the card label, the PIN
        # its session was opened with, and that session.
        self._serial: bytes | None = None
        self._chip_label: str | None = None
        self._card: str | None = None
        self._pin: Secret | None = None
        self._kept: token_lib.KeptSession | None = None
        self._admin_challenge: bytes | None = None

    # --- what a station sees ----------------------------------------------------------

    @property
    def label(self) -> str | None:
        """The card label set by ``initialise`` (None before)."""
        return self._card

    @property
    def _masked_card(self) -> str | None:
        """The card label as log events show it: a card number but for its last four."""
        return None if self._card is None else mask_card_number(self._card)

    @property
    def chip_label(self) -> str | None:
        """The token label of the blank the current card was made on."""
        return self._chip_label

    @property
    def chip_serial(self) -> str | None:
        """The token serial of the current card (as the token reports it)."""
        return self._serial.decode(errors="replace") if self._serial else None

    def initialise(self, *, label: str, so_pin: Secret, pin: Secret) -> None:
        """Personalise the next blank: user PIN ``pin``, SO PIN ``so_pin`` (the PUK), and
        keep a user session open on it."""
        with _chip("initialise"):
            self._end_card()
            token = self._take_blank()
            self._serial, self._chip_label, self._card = token.serial, token.label, label
            try:
                session = token_lib.open_session(token, so_pin=self._transport_pin)
            except p11.PinIncorrect:
                raise _fault("the blank refused the transport key", "CKR_PIN_INCORRECT") from None
            with _closing(session):
                session.init_pin(pin.reveal())
                session.set_pin(self._transport_pin.reveal(), so_pin.reveal())
            self._login(pin)
        log.info(
            "token.initialised",
            card=mask_card_number(label),
            chip=self._chip_label,
            serial=self.chip_serial,
        )

    def generate_key(self, usage: CertUsage, key_type: str, *, keep_old: bool = False) -> str:
        """Generate a key pair for ``usage`` on the chip (replacing that usage's key);
        return its CKA_ID (hex). ``keep_old`` (a renewal) keeps the current key beside
        the new one, which is listed ``fresh`` until ``delete_key`` erases the old one.
        ``key_type`` other than ec-p256/rsa-2048 is a ValueError."""
        if key_type not in KEY_TYPES:
            raise ValueError(f"unsupported key type {key_type!r}; use one of {list(KEY_TYPES)}")
        with _chip("key generation"):
            session = self._session()
            label = self._label(usage)
            old = token_lib.find(session, {Attribute.LABEL: label})
            beside = keep_old and any(o[Attribute.CLASS] == ObjectClass.PRIVATE_KEY for o in old)
            if beside:
                label = self._label(usage, role="new")
            public, private = token_lib.generate_keypair(
                session, key_type, key_id=b"new", label=label
            )
            key_id = _key_id(token_lib.public_key_of(public))
            public[Attribute.ID] = private[Attribute.ID] = key_id
            if not beside:
                _destroy(old)
        log.info(
            "token.key_generated",
            card=self._masked_card,
            usage=usage.value,
            key_id=key_id.hex(),
            beside_old=beside,
        )
        return key_id.hex()

    def delete_key(self, key_id: str) -> None:
        """Erase the key ``key_id`` (private and public) and its certificate from the
        chip; a ``fresh`` key of its usage becomes the current one. An unknown id is a
        fault (CKR_KEY_HANDLE_INVALID)."""
        kid = _id_bytes(key_id)
        with _chip("key deletion"):
            session = self._session()
            private = self._private(session, kid)
            usage, _ = self._usage_of(str(private[Attribute.LABEL]))
            mine = [
                o
                for o in token_lib.find(session, {Attribute.ID: kid})
                if self._usage_of(str(o[Attribute.LABEL]))[0] is not None
            ]
            _destroy(mine)
            if usage is not None:
                self._promote(session, usage)
        log.info("token.key_deleted", card=self._masked_card, key_id=key_id)

    def open_card(self, serial: str, pin: Secret, *, card_number: str | None = None) -> None:
        """Take the produced card ``card_number`` (chip serial ``serial`` in the reader)
        and log in with ``pin``: what an update desk does. No token of that card is a
        fault (CKR_TOKEN_NOT_PRESENT); a wrong PIN too (CKR_PIN_INCORRECT), after which
        the card stays selected for ``unblock`` with its PUK."""
        if not card_number:
            raise _fault("the card's number is needed to find its token", _NO_BLANK)
        with _chip("card open"):
            self._end_card()
            token = self._card_token(card_number)
            self._serial, self._chip_label, self._card = token.serial, token.label, card_number
            try:
                session = self._login(pin)
            except p11.PinIncorrect:
                # The card stays selected without a session: the PUK still reaches it
                # (``unblock``), as at a desk resetting a forgotten PIN.
                raise _fault("the card refused its PIN", "CKR_PIN_INCORRECT") from None
            for usage in CertUsage:
                self._promote(session, usage)
        log.info("token.card_opened", card=self._masked_card, chip=self._chip_label)

    def change_puk(self, puk: Secret, new_puk: Secret) -> None:
        """Set a new PUK (the SO PIN) with the current one (C_SetPIN as SO); a wrong PUK
        is a fault with CKR_PIN_INCORRECT."""
        with _chip("PUK change"):
            self._require_card()
            self._logout()
            self._as_so(puk, lambda session: session.set_pin(puk.reveal(), new_puk.reveal()))
            self._pin = None
        log.info("token.puk_changed", card=self._masked_card)

    def make_csr(self, key_id: str, common_name: str) -> str:
        """A PEM PKCS#10 request with subject CN=``common_name``, signed on the chip."""
        kid = _id_bytes(key_id)
        with _chip("CSR signing"):
            session = self._session()
            self._private(session, kid)
            key = token_lib.token_key(_KeySigner(self, kid), self._public(session, kid))
            subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
            csr = (
                x509.CertificateSigningRequestBuilder()
                .subject_name(subject)
                .sign(key, hashes.SHA256())
            )
        return csr.public_bytes(serialization.Encoding.PEM).decode()

    def write_certificate(self, key_id: str, usage: CertUsage, cert_pem: str) -> None:
        """Store the certificate beside its key (same CKA_ID and CKA_LABEL); refuse one for
        another key or another usage (CKR_DATA_INVALID)."""
        kid = _id_bytes(key_id)
        cert = _parse_certificate(cert_pem)
        with _chip("certificate write"):
            session = self._session()
            private = self._private(session, kid)
            label = str(private[Attribute.LABEL])
            if self._usage_of(label)[0] != usage:
                raise _fault(f"key {key_id} is not the {usage.value} key", _BAD_DATA)
            _check_cert_matches(cert, self._public(session, kid))
            self._store_certificate(session, cert, kid, label)
        log.info(
            "token.certificate_written", card=self._masked_card, usage=usage.value, key_id=key_id
        )

    def import_key(
        self, usage: CertUsage, key_pem: Secret, cert_pem: str, *, retired: bool = False
    ) -> str:
        """Import an escrowed key with its public key and certificate; return its CKA_ID.

        A ``retired`` key (recovered from an earlier card) is kept beside the current one;
        otherwise the import replaces the current key of ``usage``."""
        key = _load_escrowed_key(key_pem)
        cert = _parse_certificate(cert_pem)
        public = key.public_key()
        _check_cert_matches(cert, public)
        kid = _key_id(public)
        with _chip("key import"):
            session = self._session()
            label = self._label(usage, retired=retired)
            selector: dict[Attribute, Any] = {Attribute.LABEL: label}
            if retired:
                selector[Attribute.ID] = kid
            old = token_lib.find(session, selector)
            for template in (
                token_lib.private_key_template(key),
                token_lib.public_key_template(public),
            ):
                session.create_object({**template, Attribute.ID: kid, Attribute.LABEL: label})
            self._store_certificate(session, cert, kid, label, replace=False)
            _destroy(old)
        log.info(
            "token.key_imported",
            card=self._masked_card,
            usage=usage.value,
            retired=retired,
            key_id=kid.hex(),
        )
        return kid.hex()

    def close(self) -> None:
        """Log out and release the chip; PIN services still reach the card afterwards."""
        with _chip("close"):
            self._logout()
            self._pin = None

    # --- PIN services -----------------------------------------------------------------

    def verify_pin(self, pin: Secret) -> bool:
        """Log in with ``pin``: True keeps that session; False on CKR_PIN_INCORRECT.

        Counts nothing (SoftHSM2 never locks); a token that does lock raises a fault
        with CKR_PIN_LOCKED."""
        with _chip("PIN verification"):
            self._require_card()
            self._logout()
            try:
                self._login(pin)
            except p11.PinIncorrect:
                log.info("token.pin_verified", card=self._masked_card, ok=False)
                return False
        log.info("token.pin_verified", card=self._masked_card, ok=True)
        return True

    def unblock(self, puk: Secret, new_pin: Secret) -> None:
        """Set ``new_pin`` as SO with the PUK (C_InitPIN). A wrong PUK is a fault with
        CKR_PIN_INCORRECT. No session is left open: ``verify_pin`` opens the next."""
        with _chip("PIN unblock"):
            self._require_card()
            self._logout()
            self._as_so(puk, lambda session: session.init_pin(new_pin.reveal()))
            self._pin = None
        log.info("token.pin_unblocked", card=self._masked_card)

    def change_pin(self, old: Secret, new: Secret) -> None:
        """Change the user PIN from ``old`` to ``new`` (C_SetPIN); keep the session."""
        with _chip("PIN change"):
            self._require_card()
            self._logout()
            try:
                session = self._login(old)
            except p11.PinIncorrect:
                raise _fault("wrong PIN", "CKR_PIN_INCORRECT") from None
            session.set_pin(old.reveal(), new.reveal())
            self._pin = new
        log.info("token.pin_changed", card=self._masked_card)

    def objects(self) -> tuple[TokenObject, ...]:
        """The keys on the chip with their usage, label and certificate subject."""
        with _chip("object listing"):
            session = self._session()
            privates = token_lib.find(session, {Attribute.CLASS: ObjectClass.PRIVATE_KEY})
            found = [self._describe(session, private) for private in privates]
        return tuple(obj for obj in found if obj is not None)

    # --- the admin key (remote unblock, the card's side) ------------------------------

    def store_admin_key(self, admin_key: Secret) -> None:
        """Store the card's 24-byte 3DES admin key on the chip (CKK_DES3, encrypt only,
        sensitive, never extractable), replacing any earlier one.

        It is a public object: the check must work while the user cannot log in. So
        anyone with a session on the token can encrypt with it; see
        ``Pkcs11AdminKeyCard`` for what that means."""
        value = admin_key_bytes(admin_key)
        with _chip("admin key write"):
            session = self._session()
            label = self._admin_label()
            old = token_lib.find(session, {Attribute.LABEL: label})
            session.create_object(
                {
                    Attribute.CLASS: ObjectClass.SECRET_KEY,
                    Attribute.KEY_TYPE: KeyType.DES3,
                    Attribute.VALUE: value,
                    Attribute.LABEL: label,
                    Attribute.ID: b"admin",
                    Attribute.TOKEN: True,
                    Attribute.PRIVATE: False,
                    Attribute.SENSITIVE: True,
                    Attribute.EXTRACTABLE: False,
                    Attribute.MODIFIABLE: False,
                    Attribute.ENCRYPT: True,
                    Attribute.DECRYPT: False,
                    Attribute.WRAP: False,
                    Attribute.UNWRAP: False,
                    Attribute.SIGN: False,
                    Attribute.VERIFY: False,
                    Attribute.DERIVE: False,
                }
            )
            _destroy(old)
        log.info("token.admin_key_stored", card=self._masked_card)

    def admin_challenge(self) -> str:
        """A challenge from the chip's random generator (16 hex digits), for one response."""
        with _chip("challenge"):
            self._require_card()
            with self._any_session() as session:
                challenge = bytes(session.generate_random(64))
        self._admin_challenge = challenge
        return challenge.hex().upper()

    def admin_unblock(self, response_hex: str, *, puk: Secret, new_pin: Secret) -> None:
        """Check ``response_hex`` against the last challenge on the chip (3DES-ECB with
        the stored admin key, compared in constant time), then set ``new_pin`` as SO.

        Raises ``ResponseRefused`` on a wrong response; the challenge is used up either
        way, so each guess costs a new challenge."""
        given = response_bytes(response_hex)
        challenge, self._admin_challenge = self._admin_challenge, None
        if challenge is None:
            raise ResponseRefused("no challenge outstanding: ask the card for one first")
        with _chip("admin response check"):
            self._require_card()
            with self._any_session() as session:
                found = token_lib.find(
                    session,
                    {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: self._admin_label()},
                )
                if len(found) != 1:
                    raise _fault("the card holds no admin key", _NO_KEY)
                admin_key = cast(EncryptMixin, found[0])
                # Bytes in, bytes out (an iterator in would give an iterator out).
                expected = cast(bytes, admin_key.encrypt(challenge, mechanism=Mechanism.DES3_ECB))
            if not hmac.compare_digest(expected, given):
                raise ResponseRefused("the response does not answer the challenge")
            self._logout()
            self._as_so(puk, lambda session: session.init_pin(new_pin.reveal()))
            self._pin = None
        log.info("token.pin_unblocked", card=self._masked_card, by="admin response")

    # --- inside -----------------------------------------------------------------------

    def _take_blank(self) -> pkcs11.Token:
        """The first blank in label order (then serial) that no driver has taken."""
        for attempt in (1, 2):
            blanks = sorted(
                (token for token in self._library.tokens() if self._is_free_blank(token)),
                key=lambda token: (token.label, token.serial),
            )
            if blanks:
                _taken.add((self.module, blanks[0].serial))
                return blanks[0]
            if attempt == 1:
                self._library.reinitialize()  # blanks made since the library loaded
        raise _fault(f"no blank labelled {self.token_label!r} left in the hopper", _NO_BLANK)

    def _is_free_blank(self, token: pkcs11.Token) -> bool:
        flags = token.flags
        return bool(
            flags & TokenFlag.TOKEN_INITIALIZED
            and not flags & TokenFlag.USER_PIN_INITIALIZED
            and fnmatch.fnmatchcase(token.label, self.token_label)
            and (self.module, token.serial) not in _taken
        )

    def _token(self) -> pkcs11.Token:
        try:
            return self._library.token(serial=self._serial)
        except (p11.NoSuchToken, p11.MultipleTokensReturned):
            raise _fault("the card's token is gone", _NO_BLANK) from None

    def _login(self, pin: Secret) -> pkcs11.Session:
        """Open the card's user session with ``pin``; it is kept (and reopened with the
        same PIN after a library reinitialisation). Raises PinIncorrect as it comes."""
        kept = token_lib.KeptSession(
            self._library, lambda: token_lib.open_session(self._token(), user_pin=pin)
        )
        session = kept.get()
        self._kept, self._pin = kept, pin
        return session

    def _logout(self) -> None:
        kept, self._kept = self._kept, None
        if kept is not None:
            kept.close()

    def _as_so(self, so_pin: Secret, call: Callable[[pkcs11.Session], object]) -> None:
        try:
            session = token_lib.open_session(self._token(), so_pin=so_pin)
        except p11.PinIncorrect:
            raise _fault("wrong PUK", "CKR_PIN_INCORRECT") from None
        with _closing(session):
            call(session)

    def _end_card(self) -> None:
        """Forget the previous card: log out (if the token is still there) and reset."""
        with contextlib.suppress(p11.PKCS11Error):
            self._logout()
        self._kept = None
        self._serial = self._chip_label = self._card = self._pin = None
        self._admin_challenge = None

    def _require_card(self) -> None:
        if self._serial is None:
            raise _fault("chip is not initialised", _NOT_PERSONALISED)

    def _session(self) -> pkcs11.Session:
        """The card's logged-in session; a fault when there is none."""
        if self._serial is None or self._kept is None:
            raise _fault("no open session: initialise or log in first", _NOT_LOGGED_IN)
        return self._kept.get()

    @contextlib.contextmanager
    def _any_session(self) -> Iterator[pkcs11.Session]:
        """The card's session if one is open, else a public (not logged-in) one that is
        closed after the block."""
        if self._kept is not None:
            yield self._kept.get()
            return
        with _closing(token_lib.open_session(self._token())) as session:
            yield session

    def _label(self, usage: CertUsage, *, retired: bool = False, role: str = "") -> str:
        role = "retired" if retired else role
        return f"{self._prefix}{self._card} {role + ' ' if role else ''}{usage.value} key"

    def _admin_label(self) -> str:
        return f"{self._prefix}{self._card} admin key"

    def _usage_of(self, label: str) -> tuple[CertUsage | None, bool]:
        """Usage and retiredness from a CKA_LABEL this driver wrote."""
        usage, role = self._role_of(label)
        return usage, role == "retired"

    def _role_of(self, label: str) -> tuple[CertUsage | None, str]:
        """Usage and role ("", "retired" or "new") from a CKA_LABEL this driver wrote."""
        words = label.removeprefix(f"{self._prefix}{self._card} ").split()
        if len(words) not in (2, 3) or words[-1] != "key":
            return None, ""
        try:
            usage = CertUsage(words[-2])
        except ValueError:
            return None, ""
        role = words[0] if len(words) == 3 else ""
        if role not in ("", "retired", "new"):
            return None, ""
        return usage, role

    def _promote(self, session: pkcs11.Session, usage: CertUsage) -> None:
        """A ``new`` key of ``usage`` with no current key beside it takes the current
        label, with its public key and certificate."""
        current = self._label(usage)
        if token_lib.find(
            session, {Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: current}
        ):
            return
        for obj in token_lib.find(session, {Attribute.LABEL: self._label(usage, role="new")}):
            obj[Attribute.LABEL] = current

    def _card_token(self, card_number: str) -> pkcs11.Token:
        """The personalised token (matching ``token_label``) carrying ``card_number``'s
        admin key or certificates."""
        prefix = f"{self._prefix}{card_number} "
        for attempt in (1, 2):
            for token in self._library.tokens():
                if not (
                    token.flags & TokenFlag.USER_PIN_INITIALIZED
                    and fnmatch.fnmatchcase(token.label, self.token_label)
                ):
                    continue
                with _closing(token_lib.open_session(token)) as session:
                    labels = [
                        str(o[Attribute.LABEL])
                        for o in token_lib.find(session, {Attribute.PRIVATE: False})
                    ]
                if any(label.startswith(prefix) for label in labels):
                    return token
            if attempt == 1:
                self._library.reinitialize()  # tokens made since the library loaded
        raise _fault(f"no token carries card {mask_card_number(card_number)}", _NO_BLANK)

    def _private(self, session: pkcs11.Session, key_id: bytes) -> pkcs11.PrivateKey:
        found = token_lib.find(
            session, {Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.ID: key_id}
        )
        if not found:
            raise _fault(f"no key with id {key_id.hex()}", _NO_KEY)
        return cast(pkcs11.PrivateKey, found[0])

    def _public(self, session: pkcs11.Session, key_id: bytes) -> token_lib.PublicKey:
        found = token_lib.find(
            session, {Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.ID: key_id}
        )
        if not found:
            raise _fault(f"no public key with id {key_id.hex()}", _NO_KEY)
        return token_lib.public_key_of(found[0])

    def _store_certificate(
        self,
        session: pkcs11.Session,
        cert: x509.Certificate,
        key_id: bytes,
        label: str,
        *,
        replace: bool = True,
    ) -> None:
        old = (
            token_lib.find(
                session,
                {
                    Attribute.CLASS: ObjectClass.CERTIFICATE,
                    Attribute.ID: key_id,
                    Attribute.LABEL: label,
                },
            )
            if replace
            else []
        )
        template = decode_x509_certificate(cert.public_bytes(serialization.Encoding.DER))
        template.update(
            {
                Attribute.ID: key_id,
                Attribute.LABEL: label,
                Attribute.TOKEN: True,
                Attribute.PRIVATE: False,
            }
        )
        session.create_object(template)
        _destroy(old)

    def _describe(self, session: pkcs11.Session, private: pkcs11.Object) -> TokenObject | None:
        """A key this driver wrote, as ``objects()`` lists it (None for anything else)."""
        key_id = bytes(private[Attribute.ID])
        label = str(private[Attribute.LABEL])
        usage, role = self._role_of(label)
        if usage is None:
            return None
        retired = role == "retired"
        public = self._public(session, key_id)
        certs = token_lib.find(
            session,
            {
                Attribute.CLASS: ObjectClass.CERTIFICATE,
                Attribute.ID: key_id,
                Attribute.LABEL: label,
            },
        )
        cert = x509.load_der_x509_certificate(bytes(certs[0][Attribute.VALUE])) if certs else None
        # CKA_LOCAL: generated on this token, as opposed to imported into it.
        origin = "recovered" if retired else "imported"
        if private[Attribute.LOCAL]:
            origin = "generated"
        return TokenObject(
            key_id=key_id.hex(),
            usage=usage,
            label=label,
            key_type=_key_type(public),
            origin=origin,
            public_key_pem=public.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ).decode(),
            cert_subject=cert.subject.rfc4514_string() if cert else None,
            cert_serial=f"{cert.serial_number:x}" if cert else None,
            fresh=role == "new",
        )


def _id_bytes(key_id: str) -> bytes:
    try:
        return bytes.fromhex(key_id)
    except ValueError:
        raise _fault(f"key id {key_id!r} is not hex", _NO_KEY) from None


def _destroy(objects: list[pkcs11.Object]) -> None:
    for obj in objects:
        obj.destroy()


@contextlib.contextmanager
def _closing(session: pkcs11.Session) -> Iterator[pkcs11.Session]:
    """Close (log out of) ``session`` after the block; a close failing after the block
    failed does not hide the block's error."""
    try:
        yield session
    except BaseException:
        with contextlib.suppress(p11.PKCS11Error):
            session.close()
        raise
    session.close()


class Pkcs11AdminKeyCard:
    """The card's side of a remote unblock, checked on the token (``AdminKeyCard``).

    The expected response is computed on the chip with the stored DES3 admin key
    (CKM_DES3_ECB), so the key never leaves it; the PIN is then reset as SO, which is
    why this needs the PUK: a SoftHSM2 token cannot unblock itself the way a minidriver
    card does. Note: the admin key object must be usable without a user login, so any
    process with a session on the token can encrypt with it, that is, answer any
    challenge. A real card computes and compares inside the chip; here the emulation
    proves the protocol and the arithmetic, not that protection.
    """

    def __init__(self, token: Pkcs11Token, *, puk: Secret) -> None:
        self._token = token
        self._puk = puk

    def challenge(self) -> str:
        return self._token.admin_challenge()

    def unblock_with_response(self, response_hex: str, new_pin: Secret) -> None:
        self._token.admin_unblock(response_hex, puk=self._puk, new_pin=new_pin)
