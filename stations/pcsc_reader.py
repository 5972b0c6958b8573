"""The real reader: a contact encoder behind pcscd, through pyscard.

``PcscReader`` implements ``stations.drivers.Reader``. It looks the reader up by a name
glob on every ``read_chip`` (in a fresh PC/SC context), so a reader unplugged and plugged
back, or a restarted pcscd, is found again; it never keeps a reader object between cards.
It connects to the card exclusively by default (the station owns the chip while it
encodes), reads the ATR, and sends one APDU whose response data is the chip serial.

The serial APDU defaults to ``FF CA 00 00 00``: PC/SC part 3's GET DATA with P1 = 00,
"the card's serial number (UID)", with Le = 00 (all of it). The response data, as
upper-case hex, is the serial; any status word other than 9000 is a fault carrying it.
Chips that do not answer it take another APDU (``serial_apdu``), e.g. GlobalPlatform's
GET DATA for the CPLC, ``80 CA 9F 7F 00``, whose whole answer then serves as the serial.
No 61XX / 6CXX handling is done (T=0 GET RESPONSE): such an answer is a fault with its SW.

pyscard is used at its ``smartcard.scard`` level, the PC/SC API itself, because every
call returns the raw result code that our faults keep: ``SCardEstablishContext`` and
``SCardReleaseContext``, ``SCardListReaders``, ``SCardGetStatusChange`` (wait for a card,
in slices of ``poll_s``), ``SCardConnect``, ``SCardStatus`` (the ATR, and later whether
the card is still the one connected), ``SCardTransmit`` and ``SCardDisconnect``.

A reader is used by one station thread at a time; it is not thread-safe.
"""

from __future__ import annotations

import enum
import fnmatch
import time
from dataclasses import dataclass

from schemas.errors import ConfigurationError, DeviceFault
from schemas.states import FaultKind
from stations.drivers import ChipInfo

# pyscard is the ``pcsc`` extra (it builds with swig and libpcsclite-dev): only a station
# with a real reader needs it, and only stations.setup imports this module, for one.
try:
    from smartcard import scard
except ModuleNotFoundError as exc:
    raise ConfigurationError(
        "the pcsc reader driver needs pyscard: pip install 'cardline[pcsc]' "
        "(it builds with swig, gcc and libpcsclite-dev)"
    ) from exc

SERIAL_APDU = "FFCA000000"  # PC/SC part 3 GET DATA (UID): the card's serial number


class _Then(enum.Enum):
    """What ``read_chip`` does when a PC/SC call fails with a code, before its deadline."""

    RECONNECT = "reconnect"  # pcscd is gone or restarted: new context, find the reader again
    FIND_READER = "find_reader"  # the reader went away: look it up by name again
    WAIT = "wait"  # no card (yet): keep waiting for one
    FAIL = "fail"  # a fault now


# PC/SC result codes: what they mean to an operator, and how ``read_chip`` reacts.
_PCSC_CODES: dict[str, tuple[str, _Then]] = {
    "SCARD_E_TIMEOUT": ("no card came into the reader in time", _Then.WAIT),
    "SCARD_E_NO_SMARTCARD": ("no card in the reader", _Then.WAIT),
    "SCARD_W_REMOVED_CARD": ("the card was removed", _Then.WAIT),
    "SCARD_W_RESET_CARD": ("the card was reset by another application", _Then.FAIL),
    "SCARD_W_UNRESPONSIVE_CARD": ("the card does not answer the reset", _Then.FAIL),
    "SCARD_W_UNPOWERED_CARD": ("the card is not powered", _Then.FAIL),
    "SCARD_W_UNSUPPORTED_CARD": ("the card's ATR is not supported", _Then.FAIL),
    "SCARD_E_PROTO_MISMATCH": ("the card speaks neither T=0 nor T=1", _Then.FAIL),
    "SCARD_E_SHARING_VIOLATION": ("another application holds the card", _Then.FAIL),
    "SCARD_E_NOT_TRANSACTED": ("the APDU could not be transmitted", _Then.FAIL),
    "SCARD_E_COMM_DATA_LOST": ("the card's answer was lost", _Then.FAIL),
    "SCARD_E_UNKNOWN_READER": ("the reader is not there", _Then.FIND_READER),
    "SCARD_E_READER_UNAVAILABLE": ("the reader is unavailable", _Then.FIND_READER),
    "SCARD_E_NO_READERS_AVAILABLE": ("pcscd has no readers", _Then.FIND_READER),
    "SCARD_E_NO_SERVICE": ("pcscd is not running", _Then.RECONNECT),
    "SCARD_E_SERVICE_STOPPED": ("pcscd stopped", _Then.RECONNECT),
    "SCARD_E_INVALID_HANDLE": ("the PC/SC context is gone", _Then.RECONNECT),
    "SCARD_F_COMM_ERROR": ("lost the connection to pcscd", _Then.RECONNECT),
}
_CODE_NAMES: dict[int, str] = {getattr(scard, name): name for name in _PCSC_CODES}

# Status words the serial APDU may get, as ISO 7816-4 names them.
_SW_MEANINGS: dict[str, str] = {
    "6700": "wrong length",
    "6982": "security status not satisfied",
    "6985": "conditions of use not satisfied",
    "6A81": "function not supported",
    "6A82": "file or application not found",
    "6A86": "incorrect P1 P2",
    "6A88": "referenced data not found",
    "6D00": "instruction not supported",
    "6E00": "class not supported",
    "6F00": "technical error, no precise diagnosis",
}

_PROTOCOLS = scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1
_PCI = {scard.SCARD_PROTOCOL_T0: scard.SCARD_PCI_T0, scard.SCARD_PROTOCOL_T1: scard.SCARD_PCI_T1}
_GONE_STATES: int = scard.SCARD_STATE_UNKNOWN | scard.SCARD_STATE_UNAVAILABLE
_PRESENT: int = scard.SCARD_STATE_PRESENT
_MUTE: int = scard.SCARD_STATE_MUTE


def _code_name(hresult: int) -> str:
    """The PC/SC name of a result code (``SCARD_E_TIMEOUT``), or its hex value."""
    return _CODE_NAMES.get(hresult) or f"0x{hresult & 0xFFFFFFFF:08X}"


def _fault(hresult: int, doing: str) -> DeviceFault:
    """A CHIP fault for a failed PC/SC call, keeping the code's PC/SC name."""
    code = _code_name(hresult)
    meaning = _PCSC_CODES.get(code, (str(scard.SCardGetErrorMessage(hresult)), _Then.FAIL))[0]
    return DeviceFault(FaultKind.CHIP, f"{doing}: {meaning}", code=code)


def _reaction(hresult: int) -> _Then:
    return _PCSC_CODES.get(_code_name(hresult), ("", _Then.FAIL))[1]


def _parse_apdu(apdu: str) -> bytes:
    try:
        raw = bytes.fromhex(apdu)
    except ValueError:
        raw = b""
    if len(raw) < 4:
        raise ConfigurationError(f"serial_apdu {apdu!r}: an APDU in hex, at least CLA INS P1 P2")
    return raw


@dataclass(frozen=True)
class _Connection:
    """The card ``read_chip`` connected to, in the context it was found in."""

    context: int
    card: int
    protocol: int
    reader: str


class PcscReader:
    """The first PC/SC reader whose name matches the glob ``name_pattern``.

    ``serial_apdu`` (hex) is sent to read the chip serial; ``exclusive`` connects with
    SCARD_SHARE_EXCLUSIVE, so no other application can talk to the card while the
    station encodes it; ``poll_s`` is how often a wait for a card looks again for the
    reader and pcscd (a wait for a card itself ends as soon as one is inserted).
    """

    def __init__(
        self,
        name_pattern: str,
        *,
        serial_apdu: str = SERIAL_APDU,
        exclusive: bool = True,
        poll_s: float = 0.1,
    ) -> None:
        if not name_pattern:
            raise ConfigurationError("the reader's name pattern is empty")
        if poll_s <= 0:
            raise ConfigurationError(f"poll_s must be > 0, got {poll_s}")
        self.name_pattern = name_pattern
        self.serial_apdu = _parse_apdu(serial_apdu)
        self.share = scard.SCARD_SHARE_EXCLUSIVE if exclusive else scard.SCARD_SHARE_SHARED
        self.poll_s = poll_s
        self._connection: _Connection | None = None

    @property
    def reader_name(self) -> str | None:
        """The reader the current card was read in (None before ``read_chip``)."""
        return self._connection.reader if self._connection else None

    def read_chip(self, timeout_s: float) -> ChipInfo:
        """Wait up to ``timeout_s`` for a card, connect to it and read its ATR and serial.

        The connection is kept (``check_present`` asks about it) until ``close`` or the
        next ``read_chip``, which first lets the previous card go.
        """
        self.close()
        self._connection = _Wait(self, timeout_s).connect()
        try:
            return ChipInfo(atr=self._atr(), serial=self._serial())
        except BaseException:
            self.close()
            raise

    def read_inserted(self, timeout_s: float) -> ChipInfo:
        """A card in the reader while no print job fed one: put in by hand (a holder's
        card brought back for its updates)."""
        return self.read_chip(timeout_s)

    def check_present(self) -> None:
        """Raise a CHIP fault unless the card ``read_chip`` connected to is still in.

        A card removed since (or removed and another inserted) leaves the connection
        invalid, and pcscd says so (SCARD_W_REMOVED_CARD) 0.3-0.4 s after the removal. No
        APDU is sent: the chip's state (selected application, verified PIN) is untouched.
        """
        if self._connection is None:
            raise DeviceFault(FaultKind.CHIP, "no card has been read", code="SCARD_E_NO_SMARTCARD")
        hresult = scard.SCardStatus(self._connection.card)[0]
        if hresult != scard.SCARD_S_SUCCESS:
            raise _fault(hresult, f"the card in {self._connection.reader} is gone")

    def close(self) -> None:
        """Disconnect from the card, leaving it as it is, and release the context.

        Never raises: the card may be gone or pcscd restarted, leaving nothing to release.
        """
        connection, self._connection = self._connection, None
        if connection is not None:
            # Never SCARD_RESET_CARD: a reset reaches whatever card is in the slot now.
            # By the next read_chip the printer has ejected ours and fed a blank, and
            # pcscd 1.9.9 then resets that blank behind its own event thread, which from
            # then on never reports the blank's removal. The token's close logs out, and
            # pcscd powers an unused card down after its grace period.
            scard.SCardDisconnect(connection.card, scard.SCARD_LEAVE_CARD)
            scard.SCardReleaseContext(connection.context)

    def _atr(self) -> str:
        assert self._connection is not None
        hresult, _reader, _state, _protocol, atr = scard.SCardStatus(self._connection.card)
        if hresult != scard.SCARD_S_SUCCESS:
            raise _fault(hresult, f"reading the ATR in {self._connection.reader}")
        return bytes(atr).hex().upper()

    def _serial(self) -> str:
        connection = self._connection
        assert connection is not None
        apdu = self.serial_apdu.hex().upper()
        hresult, response = scard.SCardTransmit(
            connection.card, _PCI[connection.protocol], list(self.serial_apdu)
        )
        if hresult != scard.SCARD_S_SUCCESS:
            raise _fault(hresult, f"sending the serial APDU {apdu}")
        if len(response) < 2:
            got = bytes(response).hex().upper() or "nothing"
            raise DeviceFault(FaultKind.CHIP, f"the card answered {apdu} with {got}, no SW")
        data, sw = bytes(response[:-2]), bytes(response[-2:]).hex().upper()
        if sw != "9000":
            meaning = _SW_MEANINGS.get(sw, "refused")
            raise DeviceFault(FaultKind.CHIP, f"the card answered {apdu}: {meaning}", code=sw)
        if not data:
            raise DeviceFault(FaultKind.CHIP, f"the card answered {apdu} without a serial", code=sw)
        return data.hex().upper()


class _Wait:
    """One wait for a card, up to ``deadline``: through pcscd restarts and replugged readers.

    ``pending`` is the fault raised when the deadline passes: what was missing last.
    """

    def __init__(self, reader: PcscReader, timeout_s: float) -> None:
        self.reader, self.timeout_s = reader, timeout_s
        self.deadline = time.monotonic() + timeout_s
        self.context: int | None = None
        self.name: str | None = None
        self.state: int = scard.SCARD_STATE_UNAWARE
        self.pending = _fault(scard.SCARD_E_TIMEOUT, f"waiting {timeout_s:g} s for a card")

    def connect(self) -> _Connection:
        """A connection to the card in the reader; a fault when none is made in time."""
        try:
            while True:
                connection = self._step()
                if connection is not None:
                    return connection
                if time.monotonic() >= self.deadline:
                    raise self.pending
        except BaseException:
            self._release()
            raise

    def _step(self) -> _Connection | None:
        if self.context is None:
            self._establish()
        elif self.name is None:
            self._find(self.context)
        elif self._card_in(self.context, self.name):
            return self._connect(self.context, self.name)
        return None

    def _establish(self) -> None:
        hresult, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
        if hresult == scard.SCARD_S_SUCCESS:
            self.context = context
        else:
            self._failed(hresult, "connecting to pcscd")

    def _find(self, context: int) -> None:
        hresult, names = scard.SCardListReaders(context, [])
        if hresult != scard.SCARD_S_SUCCESS and _reaction(hresult) != _Then.FIND_READER:
            self._failed(hresult, "listing the readers")
            return
        matches = sorted(n for n in names or () if fnmatch.fnmatchcase(n, self.reader.name_pattern))
        if matches:
            self.name, self.state = matches[0], scard.SCARD_STATE_UNAWARE
            self.pending = _fault(
                scard.SCARD_E_TIMEOUT, f"waiting {self.timeout_s:g} s for a card in {self.name}"
            )
            return
        seen = ", ".join(sorted(names or ())) or "none"
        self.pending = DeviceFault(
            FaultKind.CHIP,
            f"no PC/SC reader matches {self.reader.name_pattern!r} (readers: {seen})",
            code="SCARD_E_UNKNOWN_READER",
        )
        self._pause()

    def _card_in(self, context: int, name: str) -> bool:
        """Wait up to ``poll_s`` for a card in the reader; True when one answers."""
        wait_s = min(self.reader.poll_s, max(0.0, self.deadline - time.monotonic()))
        hresult, states = scard.SCardGetStatusChange(
            context, int(wait_s * 1000), [(name, self.state)]
        )
        if hresult == scard.SCARD_E_TIMEOUT:
            return False
        if hresult != scard.SCARD_S_SUCCESS:
            self._failed(hresult, f"watching {name}")
            return False
        self.state = states[0][1]
        if self.state & _GONE_STATES:
            self._failed(scard.SCARD_E_UNKNOWN_READER, f"watching {name}")
            return False
        if self.state & _MUTE:
            self.pending = _fault(scard.SCARD_W_UNRESPONSIVE_CARD, f"the card in {name}")
            return False
        return bool(self.state & _PRESENT)

    def _connect(self, context: int, name: str) -> _Connection | None:
        hresult, card, protocol = scard.SCardConnect(context, name, self.reader.share, _PROTOCOLS)
        if hresult != scard.SCARD_S_SUCCESS:
            self._failed(hresult, f"connecting to the card in {name}")
            return None
        self.context = None  # the connection owns the context now
        return _Connection(context, card, protocol, name)

    def _failed(self, hresult: int, doing: str) -> None:
        """React to a failed call as ``_PCSC_CODES`` says: FAIL raises at once; the others
        note what is missing (for ``pending``) and look again after ``poll_s``."""
        reaction = _reaction(hresult)
        if reaction == _Then.FAIL:
            raise _fault(hresult, doing)
        if reaction == _Then.RECONNECT:
            self._release()
        if reaction in (_Then.RECONNECT, _Then.FIND_READER):
            self.name = None
            self.pending = _fault(hresult, doing)
        self.state = scard.SCARD_STATE_UNAWARE  # ask afresh, not "tell me when it changes"
        self._pause()

    def _pause(self) -> None:
        time.sleep(min(self.reader.poll_s, max(0.0, self.deadline - time.monotonic())))

    def _release(self) -> None:
        if self.context is not None:
            scard.SCardReleaseContext(self.context)
            self.context = None
