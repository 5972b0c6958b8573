"""Simulated station devices: a retransfer card printer, its contact encoder and the chip.

They implement the protocols in ``stations.drivers`` with realistic step timings
(``SimTimings``) and injected faults (``SimFaults``), for demos, tests and capacity
planning. Every random choice comes from the ``random.Random`` a driver is given, so a
seed reproduces the same fault sequence and chip serials. The token does real
cryptography in software: its keys, CSRs and certificate checks are genuine, only the
key material is not reproducible from the seed.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import NameOID

from db.files import atomic_write
from db.secrets import Secret
from schemas.errors import ConfigurationError, DeviceFault
from schemas.states import CertUsage, FaultKind
from stations.chips import SimChipStore
from stations.drivers import CardFaces, ChipInfo


@dataclass(frozen=True)
class SimTimings:
    """Seconds each device step takes on a desktop retransfer printer with a contact encoder.

    ``keygen`` is per key generated on the chip, ``csr_sign`` per CSR, ``write_cert`` per
    certificate (an imported key's certificate included), ``import_key`` per escrowed
    key. ``set_pin`` is spent inside ``initialise``, which sets the PIN as it goes.
    """

    feed: float = 1.5
    chip_read: float = 0.5
    token_init: float = 1.5
    keygen: float = 3.5  # on-card RSA/EC key generation is the slow part of encoding
    csr_sign: float = 0.4
    write_cert: float = 0.5
    import_key: float = 1.2
    set_pin: float = 0.5
    print_front: float = 5.5  # colour YMC pass plus the retransfer of the film
    print_back: float = 3.0  # monochrome
    eject: float = 1.0

    # A typical card: 2 keys generated (authentication, signature), 1 escrowed
    # encryption key imported, 3 certificates written, both faces printed:
    # 1.5 + 0.5 + 1.5 + 0.5 + 2*3.5 + 2*0.4 + 3*0.5 + 1.2 + 5.5 + 3.0 + 1.0 = 24.0 s.
    TYPICAL_CARD_S: ClassVar[float] = 24.0

    def __post_init__(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) < 0:
                raise ConfigurationError(f"SimTimings.{f.name} must be >= 0")

    def total_for(self, n_keys: int, n_certs: int, *, n_imports: int = 0) -> float:
        """Device seconds for one card: ``n_keys`` generated on the chip (each with a CSR),
        ``n_certs`` certificates written and ``n_imports`` escrowed keys imported."""
        fixed = (
            self.feed
            + self.chip_read
            + self.token_init
            + self.set_pin
            + self.print_front
            + self.print_back
            + self.eject
        )
        return (
            fixed
            + n_keys * (self.keygen + self.csr_sign)
            + n_certs * self.write_cert
            + n_imports * self.import_key
        )


_JAM_SHARE, _CHIP_SHARE, _PRINT_SHARE = 0.2, 0.4, 0.4


def _check_probability(name: str, value: float | None) -> None:
    if value is not None and not 0.0 <= value <= 1.0:
        raise ConfigurationError(f"SimFaults.{name} must be within [0, 1], got {value}")


@dataclass(frozen=True)
class SimFaults:
    """How often a simulated production attempt fails, and where.

    ``fault_rate`` is the probability that one attempt (feed to eject) hits a fault. The
    faults split 20 % jams at feed, 40 % chip failures (half at chip read, half in token
    work) and 40 % print failures. ``jam_rate``, ``chip_rate`` and ``print_rate``, when
    given, replace the derived value for their stage: the probability that an attempt
    which reaches that stage fails there.
    """

    fault_rate: float = 0.0
    jam_rate: float | None = None
    chip_rate: float | None = None
    print_rate: float | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            _check_probability(f.name, getattr(self, f.name))

    @property
    def jam_p(self) -> float:
        """Probability that a feed jams."""
        return self.jam_rate if self.jam_rate is not None else _JAM_SHARE * self.fault_rate

    @property
    def chip_p(self) -> float:
        """Probability that a fed card's chip fails (at read or in token work)."""
        if self.chip_rate is not None:
            return self.chip_rate
        # Conditional on getting past the feed, so that the per-attempt share is exact.
        return _CHIP_SHARE * self.fault_rate / (1.0 - _JAM_SHARE * self.fault_rate)

    @property
    def print_p(self) -> float:
        """Probability that printing a card with a working chip fails."""
        if self.print_rate is not None:
            return self.print_rate
        reached = 1.0 - (_JAM_SHARE + _CHIP_SHARE) * self.fault_rate
        return _PRINT_SHARE * self.fault_rate / reached

    @property
    def chip_read_p(self) -> float:
        """Probability that the chip does not answer the reader."""
        return self.chip_p / 2.0

    @property
    def token_p(self) -> float:
        """Probability that a chip which answered fails during token work."""
        return (self.chip_p / 2.0) / (1.0 - self.chip_p / 2.0)


def _roll(rng: random.Random, probability: float) -> bool:
    """True with ``probability``; always draws once, so the sequence stays reproducible."""
    return rng.random() < probability


class SimClock:
    """Waits out simulated device steps at ``time_scale`` and keeps their unscaled total.

    ``time_scale`` 1 is real time, 0.01 is a hundred times faster, 0 never sleeps. When
    ``stop`` is set, waits end at once, so a stopping station is not held up by its
    simulated devices.
    """

    def __init__(self, time_scale: float = 1.0, stop: threading.Event | None = None) -> None:
        if time_scale < 0:
            raise ConfigurationError(f"time_scale must be >= 0, got {time_scale}")
        self.time_scale = time_scale
        self._stop = stop
        self._lock = threading.Lock()
        self._simulated_s = 0.0

    @property
    def simulated_s(self) -> float:
        """Device seconds simulated so far (before scaling)."""
        with self._lock:
            return self._simulated_s

    def sleep(self, seconds: float) -> bool:
        """Account ``seconds`` of device time and wait ``seconds * time_scale``.

        Returns False when the stop event ended (or prevented) the wait, True otherwise.
        """
        with self._lock:
            self._simulated_s += seconds
        wait = seconds * self.time_scale
        if self._stop is None:
            if wait > 0:
                time.sleep(wait)
            return True
        if self._stop.is_set():
            return False
        return wait <= 0 or not self._stop.wait(wait)


# Print fault codes as a desktop retransfer printer reports them.
_PRINT_FAULTS: dict[str, str] = {
    "E-RIBBON": "ribbon out or broken",
    "E-FILM": "retransfer film broken",
    "E-HEAD": "printhead over temperature",
}


def _copy_atomic(src: Path, dest_dir: Path) -> Path:
    """Copy ``src`` into ``dest_dir`` under its own name; readers never see half a file."""
    dest_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    dest = dest_dir / src.name
    atomic_write(dest, src.read_bytes())
    return dest


class SimPrinter:
    """A card printer that "prints" by copying the face images into ``output_dir``.

    Counters: ``fed`` blanks taken from the hopper (jammed ones included), ``printed``
    cards printed, ``ejected`` cards sent to the output stack, ``rejected`` cards sent to
    the reject bin. Once every card is ejected, ``fed == ejected + rejected``.
    """

    def __init__(
        self,
        timings: SimTimings,
        faults: SimFaults,
        clock: SimClock,
        rng: random.Random,
        output_dir: Path,
    ) -> None:
        self._timings = timings
        self._faults = faults
        self.clock = clock
        self._rng = rng
        self.output_dir = output_dir
        self._card_present = False
        self.fed = 0
        self.printed = 0
        self.ejected = 0
        self.rejected = 0

    def feed(self) -> None:
        """Take a blank to the encoder; a card still inside is purged to the reject bin."""
        if self._card_present:
            self._to_reject_bin()
        self.clock.sleep(self._timings.feed)
        self.fed += 1
        self._card_present = True
        if _roll(self._rng, self._faults.jam_p):
            raise DeviceFault(FaultKind.JAM, "card jammed between hopper and encoder", code="E-JAM")

    def print_faces(self, faces: CardFaces) -> None:
        """Print both faces; on success the face files appear in ``output_dir``."""
        if not self._card_present:
            raise DeviceFault(FaultKind.PRINT, "no card in the printer", code="E-NOCARD")
        self.clock.sleep(self._timings.print_front)
        if _roll(self._rng, self._faults.print_p):
            code = self._rng.choice(tuple(_PRINT_FAULTS))
            raise DeviceFault(FaultKind.PRINT, _PRINT_FAULTS[code], code=code)
        self.clock.sleep(self._timings.print_back)
        _copy_atomic(faces.front, self.output_dir)
        _copy_atomic(faces.back, self.output_dir)
        self.printed += 1

    def eject(self, *, reject: bool) -> None:
        """Send the card out (or to the reject bin); with no card inside, nothing happens."""
        self.clock.sleep(self._timings.eject)
        if not self._card_present:
            return
        if reject:
            self._to_reject_bin()
        else:
            self._card_present = False
            self.ejected += 1

    def _to_reject_bin(self) -> None:
        self._card_present = False
        self.rejected += 1


# The ATR of an NXP JCOP 2.4.1 Java Card; any contact card's ATR would do.
SIM_ATR = "3BF81300008131FE454A434F5076323431B7"


class SimSlot:
    """The card in a simulated reader, as its token sees it: the reader sets the chip
    serial it read, the token keeps that chip's content under it (``SimChipStore``)."""

    def __init__(self) -> None:
        self.serial: str | None = None


class SimReader:
    """The contact encoder: each ``read_chip`` answers for a new blank with a new serial."""

    def __init__(
        self,
        timings: SimTimings,
        faults: SimFaults,
        clock: SimClock,
        rng: random.Random,
        slot: SimSlot | None = None,
        chips: SimChipStore | None = None,
    ) -> None:
        self._timings = timings
        self._faults = faults
        self.clock = clock
        self._rng = rng
        self._serials: set[str] = set()
        self.slot = slot or SimSlot()
        self.chips = chips
        self._manual: list[str] = []
        self._manual_lock = threading.Lock()

    def insert(self, serial: str) -> None:
        """A holder puts the produced card ``serial`` in the encoder by hand."""
        with self._manual_lock:
            self._manual.append(serial)

    def read_inserted(self, timeout_s: float) -> ChipInfo:
        """The card put in by hand (``insert``), if any; else a CHIP fault at once."""
        with self._manual_lock:
            serial = self._manual.pop(0) if self._manual else None
        if serial is None:
            raise DeviceFault(FaultKind.CHIP, "no card put in by hand", code="SCARD_E_TIMEOUT")
        self.clock.sleep(min(self._timings.chip_read, timeout_s))
        self.slot.serial = serial
        return ChipInfo(atr=SIM_ATR, serial=serial)

    def read_chip(self, timeout_s: float) -> ChipInfo:
        """The chip's ATR and a 16-hex-digit serial never returned before by this reader."""
        self.clock.sleep(max(0.0, min(self._timings.chip_read, timeout_s)))
        if timeout_s < self._timings.chip_read:
            raise DeviceFault(
                FaultKind.CHIP, f"chip did not answer within {timeout_s} s", code="SCARD_E_TIMEOUT"
            )
        if _roll(self._rng, self._faults.chip_read_p):
            raise DeviceFault(FaultKind.CHIP, "chip reported a technical error", code="6F00")
        serial = self._new_serial()
        self.slot.serial = serial
        return ChipInfo(atr=SIM_ATR, serial=serial)

    def check_present(self) -> None:
        """The simulated encoder never loses a card (its faults are the chip's own)."""

    def _new_serial(self) -> str:
        # A seed gives the same serials again; a card an earlier run made (its chip kept
        # in ``chips``) keeps its own.
        while True:
            serial = f"{self._rng.getrandbits(64):016X}"
            if serial not in self._serials and not (self.chips and self.chips.exists(serial)):
                self._serials.add(serial)
                return serial


_PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

_KEY_GENERATORS: dict[str, Callable[[], _PrivateKey]] = {
    "ec-p256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "rsa-2048": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
}

MAX_PIN_TRIES = 3
MAX_PUK_TRIES = 3


@dataclass(frozen=True)
class TokenObject:
    """What a listing of the chip shows about one key (never the private key itself)."""

    key_id: str
    usage: CertUsage
    label: str
    key_type: str
    origin: str  # "generated" on the chip, "imported" from escrow, or "recovered" (retired)
    public_key_pem: str
    cert_subject: str | None  # RFC 4514 subject of the stored certificate, if any
    cert_serial: str | None = None  # the stored certificate's serial (lower-case hex)
    # Generated beside the current key of its usage (a renewal under way): it becomes the
    # current key when the old one is deleted.
    fresh: bool = False


@dataclass(repr=False)  # A repr would be the easiest way for a private key to leak.
class _KeySlot:
    key_id: str
    usage: CertUsage
    key_type: str
    origin: str
    private_key: _PrivateKey
    cert: x509.Certificate | None = None


def _spki(key: CertificatePublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _key_id(key: CertificatePublicKeyTypes) -> str:
    """CKA_ID as most issuing tools set it: the certificate's subject key identifier."""
    return x509.SubjectKeyIdentifier.from_public_key(key).digest.hex()


def _key_type(key: _PrivateKey) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        return f"rsa-{key.key_size}"
    return "ec-p256" if isinstance(key.curve, ec.SECP256R1) else f"ec-{key.curve.name}"


def _bad_data(detail: str) -> DeviceFault:
    return DeviceFault(FaultKind.CHIP, detail, code="6A80")


def _parse_certificate(cert_pem: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(cert_pem.encode())
    except ValueError:
        raise _bad_data("certificate is not a readable PEM X.509 certificate") from None


def _load_escrowed_key(key_pem: Secret) -> _PrivateKey:
    """The private key in ``key_pem``; errors never quote the key or the parser's message."""
    try:
        key = serialization.load_pem_private_key(key_pem.reveal().encode(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise _bad_data("escrowed key is not a readable unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise _bad_data("escrowed key is neither RSA nor EC")
    return key


def _check_cert_matches(cert: x509.Certificate, key: _PrivateKey) -> None:
    if _spki(cert.public_key()) != _spki(key.public_key()):
        raise _bad_data("certificate does not belong to the key")


class SimToken:
    """The chip currently in the encoder, seen through PKCS#11.

    ``initialise`` turns it into a fresh blank (a station encodes many cards with one
    token driver), personalises it and opens a session; every other operation needs that
    session (else SW 6982). Keys are real ``cryptography`` keys that never leave the
    object. ``verify_pin``/``unblock`` model the PIN and PUK retry counters.
    """

    def __init__(
        self,
        timings: SimTimings,
        faults: SimFaults,
        clock: SimClock,
        rng: random.Random,
        *,
        slot: SimSlot | None = None,
        chips: SimChipStore | None = None,
    ) -> None:
        self._timings = timings
        self._faults = faults
        self.clock = clock
        self._rng = rng
        # With ``chips``, each card's content is kept under the serial of ``slot`` (set
        # by the reader): saved when a station closes the card, after every change at a
        # desk (``open_card``), so the card can be inserted again later.
        self.slot = slot or SimSlot()
        self.chips = chips
        self._serial: str | None = None
        self._write_through = False
        # At a desk every change is kept as it is made, a card personalised there too.
        self.keep_every_write = False
        self._blank()

    def _blank(self) -> None:
        self._label: str | None = None
        self._so_pin: Secret | None = None
        self._pin: Secret | None = None
        self._pin_tries = MAX_PIN_TRIES
        self._puk_tries = MAX_PUK_TRIES
        self._session = False
        # By usage for the current keys, by "retired:<CKA_ID>" for recovered older ones.
        self._slots: dict[str, _KeySlot] = {}
        self._fault_armed = False
        self._broken = False

    @property
    def label(self) -> str | None:
        """The token label set by ``initialise`` (None on a blank)."""
        return self._label

    @property
    def pin_tries_left(self) -> int:
        return self._pin_tries

    def initialise(self, *, label: str, so_pin: Secret, pin: Secret) -> None:
        """Wipe the chip to a fresh blank, label it, set SO PIN and PIN, open a session."""
        self.clock.sleep(self._timings.token_init + self._timings.set_pin)
        self._blank()
        self._serial, self._write_through = self.slot.serial, self.keep_every_write
        self._label, self._so_pin, self._pin = label, so_pin, pin
        self._session = True
        # The chip's fate for this card is decided here; it shows at the first key operation.
        self._fault_armed = _roll(self._rng, self._faults.token_p)

    def generate_key(self, usage: CertUsage, key_type: str, *, keep_old: bool = False) -> str:
        """Generate a key pair for ``usage`` (replacing that usage's key); return its CKA_ID.

        ``keep_old`` (a renewal) keeps the current key beside the new one, which is
        listed ``fresh`` and becomes the current key once the old is deleted.
        ``key_type`` is "ec-p256" or "rsa-2048"; anything else is a caller bug (ValueError).
        """
        generate = _KEY_GENERATORS.get(key_type)
        if generate is None:
            raise ValueError(
                f"unsupported key type {key_type!r}; use one of {sorted(_KEY_GENERATORS)}"
            )
        self._require_session()
        self.clock.sleep(self._timings.keygen)
        self._fire_armed_fault()
        key = generate()
        if keep_old and usage.value in self._slots:
            key_id = _key_id(key.public_key())
            self._slots[f"new:{key_id}"] = _KeySlot(key_id, usage, key_type, "generated", key)
            self._saved()
            return key_id
        key_id = self._store(usage, key_type, "generated", key)
        self._saved()
        return key_id

    def make_csr(self, key_id: str, common_name: str) -> str:
        """A PEM PKCS#10 request with subject CN=``common_name``, signed by the key."""
        slot = self._slot(key_id)
        self.clock.sleep(self._timings.csr_sign)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        csr = x509.CertificateSigningRequestBuilder().subject_name(subject)
        signed = csr.sign(slot.private_key, hashes.SHA256())
        return signed.public_bytes(serialization.Encoding.PEM).decode()

    def write_certificate(self, key_id: str, usage: CertUsage, cert_pem: str) -> None:
        """Store the certificate beside its key; a certificate for another key is SW 6A80."""
        slot = self._slot(key_id)
        self.clock.sleep(self._timings.write_cert)
        cert = _parse_certificate(cert_pem)
        if slot.usage != usage:
            raise _bad_data(f"key {key_id} is the {slot.usage} key, not {usage}")
        _check_cert_matches(cert, slot.private_key)
        slot.cert = cert
        self._saved()

    def delete_key(self, key_id: str) -> None:
        """Delete the key ``key_id`` and its certificate from the chip. A ``fresh`` key of
        the same usage becomes that usage's current key. An unknown id is SW 6A88."""
        self._require_session()
        self.clock.sleep(self._timings.write_cert)
        for name, slot in list(self._slots.items()):
            if slot.key_id == key_id:
                del self._slots[name]
                if name == slot.usage.value:
                    self._promote(slot.usage)
                self._saved()
                return
        raise DeviceFault(FaultKind.CHIP, f"no key with id {key_id}", code="6A88")

    def _promote(self, usage: CertUsage) -> None:
        for name, slot in list(self._slots.items()):
            if name.startswith("new:") and slot.usage == usage:
                del self._slots[name]
                self._slots[usage.value] = slot
                return

    def open_card(self, serial: str, pin: Secret, *, card_number: str | None = None) -> None:
        """Take the produced card with chip serial ``serial`` (the one in the reader) and
        log in with ``pin``: what an update desk does (``card_number`` is what a real
        token driver needs to find the card; the reader's serial is enough here). Its
        content comes from ``chips``; from here on every change is saved as it is made.
        An unknown card is a CHIP fault; a wrong PIN too."""
        content = self.chips.load(serial) if self.chips and serial else None
        if content is None:
            raise DeviceFault(FaultKind.CHIP, "no personalised card in the reader", code="6982")
        self._restore(content)
        self._serial, self._write_through = serial, True
        if not self.verify_pin(pin):
            raise DeviceFault(FaultKind.CHIP, "the card refused its PIN", code="63C2")

    def _saved(self) -> None:
        """Keep the chip's content after a change, at a desk (as a chip keeps a write)."""
        if self._write_through:
            self._save()

    def _save(self) -> None:
        if self.chips is not None and self._serial is not None and self._pin is not None:
            self.chips.save(self._serial, self._content())

    def _content(self) -> dict[str, Any]:
        assert self._pin is not None
        assert self._so_pin is not None
        return {
            "label": self._label,
            "pin": self._pin.reveal(),
            "so_pin": self._so_pin.reveal(),
            "pin_tries": self._pin_tries,
            "puk_tries": self._puk_tries,
            "slots": [
                {
                    "name": name,
                    "key_id": slot.key_id,
                    "usage": slot.usage.value,
                    "key_type": slot.key_type,
                    "origin": slot.origin,
                    "key": slot.private_key.private_bytes(
                        serialization.Encoding.PEM,
                        serialization.PrivateFormat.PKCS8,
                        serialization.NoEncryption(),
                    ).decode(),
                    "cert": slot.cert.public_bytes(serialization.Encoding.PEM).decode()
                    if slot.cert
                    else None,
                }
                for name, slot in self._slots.items()
            ],
        }

    def _restore(self, content: dict[str, Any]) -> None:
        self._blank()
        self._label = content["label"]
        self._pin, self._so_pin = Secret(content["pin"]), Secret(content["so_pin"])
        self._pin_tries, self._puk_tries = content["pin_tries"], content["puk_tries"]
        for item in content["slots"]:
            key = serialization.load_pem_private_key(item["key"].encode(), password=None)
            assert isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey)
            cert = _parse_certificate(item["cert"]) if item["cert"] else None
            self._slots[item["name"]] = _KeySlot(
                item["key_id"],
                CertUsage(item["usage"]),
                item["key_type"],
                item["origin"],
                key,
                cert,
            )

    def import_key(
        self, usage: CertUsage, key_pem: Secret, cert_pem: str, *, retired: bool = False
    ) -> str:
        """Import an escrowed key with its certificate (they must match); return its CKA_ID.

        A ``retired`` key (recovered from an earlier card) is kept beside the current one.
        """
        self._require_session()
        self.clock.sleep(self._timings.import_key + self._timings.write_cert)
        self._fire_armed_fault()
        key = _load_escrowed_key(key_pem)
        cert = _parse_certificate(cert_pem)
        _check_cert_matches(cert, key)
        key_id = self._store(usage, _key_type(key), "recovered" if retired else "imported", key)
        self._slot(key_id).cert = cert
        self._saved()
        return key_id

    def close(self) -> None:
        """Log out; the chip keeps its objects, but key operations need a new session.
        With ``chips``, the card's content is kept for its next insertion."""
        if not self._broken:
            self._save()
        self._session = False
        self._write_through = False

    def verify_pin(self, pin: Secret) -> bool:
        """Log in with the PIN: True opens a session; False costs one of the remaining tries.

        Once the tries are used up the PIN is blocked and this raises SW 6983.
        """
        self._require_personalised()
        if self._pin_tries == 0:
            raise DeviceFault(FaultKind.CHIP, "PIN is blocked", code="6983")
        if pin != self._pin:
            self._pin_tries -= 1
            self._session = False
            self._saved()
            return False
        self._pin_tries = MAX_PIN_TRIES
        self._session = True
        self._saved()
        return True

    def unblock(self, puk: Secret, new_pin: Secret) -> None:
        """Reset the PIN with the PUK (the SO PIN); a wrong PUK raises SW 63Cx (x tries left)."""
        self._check_puk(puk)
        self._pin = new_pin
        self._pin_tries = MAX_PIN_TRIES
        self._saved()

    def change_puk(self, puk: Secret, new_puk: Secret) -> None:
        """Set a new PUK (the SO PIN) with the current one; a wrong PUK raises SW 63Cx."""
        self._check_puk(puk)
        self._so_pin = new_puk
        self._saved()

    def _check_puk(self, puk: Secret) -> None:
        self._require_personalised()
        if self._puk_tries == 0:
            raise DeviceFault(FaultKind.CHIP, "PUK is blocked", code="6983")
        self.clock.sleep(self._timings.set_pin)
        if puk != self._so_pin:
            self._puk_tries -= 1
            self._saved()
            raise DeviceFault(FaultKind.CHIP, "wrong PUK", code=f"63C{self._puk_tries:X}")
        self._puk_tries = MAX_PUK_TRIES

    def objects(self) -> tuple[TokenObject, ...]:
        """The keys on the chip with their usage, label and certificate subject."""
        return tuple(
            _describe(slot, fresh=name.startswith("new:")) for name, slot in self._slots.items()
        )

    def _store(self, usage: CertUsage, key_type: str, origin: str, key: _PrivateKey) -> str:
        key_id = _key_id(key.public_key())
        slot = _KeySlot(key_id, usage, key_type, origin, key)
        self._slots[f"retired:{key_id}" if origin == "recovered" else usage.value] = slot
        return key_id

    def _slot(self, key_id: str) -> _KeySlot:
        self._require_session()
        for slot in self._slots.values():
            if slot.key_id == key_id:
                return slot
        raise DeviceFault(FaultKind.CHIP, f"no key with id {key_id}", code="6A88")

    def _require_personalised(self) -> None:
        if self._pin is None:
            raise DeviceFault(FaultKind.CHIP, "chip is not initialised", code="6982")

    def _require_session(self) -> None:
        self._require_personalised()
        if self._broken:
            raise DeviceFault(FaultKind.CHIP, "chip stopped answering", code="6F00")
        if not self._session:
            raise DeviceFault(FaultKind.CHIP, "no open session: log in first", code="6982")

    def _fire_armed_fault(self) -> None:
        if self._fault_armed:
            self._fault_armed = False
            self._broken = True  # A chip that failed once stays failed until the next blank.
            raise DeviceFault(FaultKind.CHIP, "chip failed during key operation", code="6F00")


def _describe(slot: _KeySlot, *, fresh: bool = False) -> TokenObject:
    public_pem = slot.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return TokenObject(
        key_id=slot.key_id,
        usage=slot.usage,
        label=f"retired {slot.usage.value} key"
        if slot.origin == "recovered"
        else f"{slot.usage.value} key",
        key_type=slot.key_type,
        origin=slot.origin,
        public_key_pem=public_pem.decode(),
        cert_subject=slot.cert.subject.rfc4514_string() if slot.cert else None,
        cert_serial=f"{slot.cert.serial_number:x}" if slot.cert else None,
        fresh=fresh,
    )


def make_sim_drivers(
    *,
    time_scale: float,
    fault_rate: float,
    seed: int | None,
    output_dir: Path,
    timings: SimTimings | None = None,
    stop: threading.Event | None = None,
    chips: SimChipStore | None = None,
) -> tuple[SimPrinter, SimReader, SimToken]:
    """One station's simulated printer, reader and token sharing one clock (and, with
    ``chips``, keeping each card's chip for later insertion at a desk).

    Each driver draws from its own generator seeded from ``seed``, so a driver's fault
    sequence does not depend on how often the others were called.
    """
    timings = timings or SimTimings()
    faults = SimFaults(fault_rate=fault_rate)
    clock = SimClock(time_scale, stop)
    master = random.Random(seed)
    rngs = [random.Random(master.getrandbits(64)) for _ in range(3)]
    slot = SimSlot()
    return (
        SimPrinter(timings, faults, clock, rngs[0], output_dir),
        SimReader(timings, faults, clock, rngs[1], slot, chips),
        SimToken(timings, faults, clock, rngs[2], slot=slot, chips=chips),
    )


class SimDeskReader:
    """The reader of a simulated update desk: holders insert their cards (``insert``,
    by chip serial) and ``read_chip`` answers for the next one inserted."""

    def __init__(self, timings: SimTimings, clock: SimClock, slot: SimSlot) -> None:
        self._timings = timings
        self.clock = clock
        self.slot = slot
        self._inserted: list[str] = []
        self._ready = threading.Condition()

    def insert(self, serial: str) -> None:
        with self._ready:
            self._inserted.append(serial)
            self._ready.notify()

    def read_chip(self, timeout_s: float) -> ChipInfo:
        with self._ready:
            if not self._ready.wait_for(lambda: self._inserted, timeout=timeout_s):
                raise DeviceFault(FaultKind.CHIP, "no card inserted", code="SCARD_E_TIMEOUT")
            serial = self._inserted.pop(0)
        self.clock.sleep(self._timings.chip_read)
        self.slot.serial = serial
        return ChipInfo(atr=SIM_ATR, serial=serial)

    def check_present(self) -> None:
        """A simulated holder takes the card back as soon as the desk is done with it."""
        raise DeviceFault(
            FaultKind.CHIP, "the holder took the card back", code="SCARD_W_REMOVED_CARD"
        )


def make_sim_desk(
    *,
    time_scale: float,
    seed: int | None,
    chips: SimChipStore,
    timings: SimTimings | None = None,
    stop: threading.Event | None = None,
) -> tuple[SimDeskReader, SimToken]:
    """An update desk's simulated reader and token: no printer, no faults of its own."""
    timings = timings or SimTimings()
    clock = SimClock(time_scale, stop)
    slot = SimSlot()
    token = SimToken(
        timings, SimFaults(fault_rate=0.0), clock, random.Random(seed), slot=slot, chips=chips
    )
    token.keep_every_write = True
    return SimDeskReader(timings, clock, slot), token
