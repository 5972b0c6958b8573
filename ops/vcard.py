"""A virtual contact card for vsmartcard's vpcd reader driver, for tests and demos.

pcscd loads vpcd (``/etc/reader.conf.d/vpcd``) as two readers, "Virtual PCD 00 00" and
"Virtual PCD 00 01", which wait for a card program on TCP ports 35963 and 35964. While a
card program is connected the card is in the reader; when it disconnects (stops, or gets
SIGTERM) the card has been removed. Run one from a shell::

    python -m ops.vcard --port 35963 --atr 3B0443415244 --serial 04A1B2C3D4E5F6

or in-process, where tests insert and remove cards at will::

    with VirtualCard(atr="3B0443415244", serial="04A1B2C3D4E5F6"):
        ...  # the card is in "Virtual PCD 00 00" until the block ends

The vpcd protocol: every message, either way, is a 2-byte big-endian length and then the
payload. A 1-byte payload from vpcd is a control code: 0 power off, 1 power on, 2 reset
(none of them answered) and 4 ATR request (answered with the ATR). A longer payload is a
command APDU, answered with the response data and SW1SW2.

The card answers three commands, whatever the class byte:

- SELECT by AID (``00 A4 04 00 Lc AID``): 9000 when the AID is one of ``aids``, else 6A82;
- GET DATA (``INS CA``, P1P2 = the tag): the serial for ``serial_tag`` and 6A88 for any
  other tag. The default tag 0000 makes the PC/SC GET DATA (UID) command ``FF CA 00 00
  00`` (PC/SC part 3) return the serial, which is what ``stations.pcsc_reader`` sends;
- anything else: 6D00 (instruction not supported).

This is ``ops`` tooling: it speaks only the wire protocol and imports nothing of Cardline.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 35963  # "Virtual PCD 00 00"; 35964 is "Virtual PCD 00 01"
# The ATR of an NXP JCOP 2.4.1 Java Card (T=1); any contact card's ATR would do.
DEFAULT_ATR = "3BF81300008131FE454A434F5076323431B7"
SERIAL_TAG = 0x0000  # GET DATA P1P2: PC/SC's "GET DATA (UID)" is FF CA 00 00 00
CARD_MANAGER_AID = "A000000151000000"  # the GlobalPlatform card manager (ISD)

_POWER_OFF, _POWER_ON, _RESET, _ATR_REQUEST = 0, 1, 2, 4
_SW_OK = b"\x90\x00"
_SW_WRONG_LENGTH = b"\x67\x00"
_SW_NOT_FOUND = b"\x6a\x82"  # SELECT: no such application
_SW_WRONG_P1P2 = b"\x6a\x86"
_SW_NO_DATA = b"\x6a\x88"  # GET DATA: referenced data not found
_SW_NO_INSTRUCTION = b"\x6d\x00"


@dataclass(frozen=True)
class CardProfile:
    """What the card answers: its ATR, its serial and the applications it has."""

    atr: bytes
    serial: bytes
    serial_tag: int = SERIAL_TAG
    aids: tuple[bytes, ...] = (bytes.fromhex(CARD_MANAGER_AID),)

    def answer(self, apdu: bytes) -> bytes:
        """The response APDU (data + SW1SW2) to the command ``apdu``."""
        if len(apdu) < 4:
            return _SW_WRONG_LENGTH
        handler = _INSTRUCTIONS.get(apdu[1])
        return handler(self, apdu) if handler else _SW_NO_INSTRUCTION

    def _select(self, apdu: bytes) -> bytes:
        if apdu[2] != 0x04:  # only selection by DF name (AID)
            return _SW_WRONG_P1P2
        if len(apdu) < 5 or len(apdu) < 5 + apdu[4]:
            return _SW_WRONG_LENGTH
        aid = apdu[5 : 5 + apdu[4]]
        return _SW_OK if aid in self.aids else _SW_NOT_FOUND

    def _get_data(self, apdu: bytes) -> bytes:
        tag = apdu[2] << 8 | apdu[3]
        return self.serial + _SW_OK if tag == self.serial_tag else _SW_NO_DATA


_INSTRUCTIONS: dict[int, Callable[[CardProfile, bytes], bytes]] = {
    0xA4: CardProfile._select,
    0xCA: CardProfile._get_data,
}


def _quickack(sock: socket.socket) -> None:
    # Without it every APDU costs ~44 ms instead of ~0.1 ms (measured through pcscd): our
    # delayed ACK meets Nagle's algorithm on vpcd's side. Linux clears QUICKACK again as
    # it pleases, so it is set before every recv.
    option = getattr(socket, "TCP_QUICKACK", None)
    if option is not None:
        sock.setsockopt(socket.IPPROTO_TCP, option, 1)


def _recv_exact(sock: socket.socket, size: int, stop: threading.Event) -> bytes | None:
    """``size`` bytes from ``sock``; None when the peer closed or ``stop`` was set."""
    data = b""
    while len(data) < size:
        if stop.is_set():
            return None
        _quickack(sock)
        try:
            chunk = sock.recv(size - len(data))
        except TimeoutError:
            continue  # the socket timeout only lets us look at ``stop``
        if not chunk:
            return None
        data += chunk
    return data


def _send(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(len(payload).to_bytes(2, "big") + payload)


class VirtualCard:
    """A card in a vpcd reader while ``start()``-ed, removed by ``stop()``.

    The card program runs on a thread. It connects to vpcd (retrying until vpcd listens,
    so it may start before pcscd) and connects again whenever vpcd drops it (pcscd was
    restarted): the card stays in the reader until ``stop()``.
    """

    def __init__(
        self,
        *,
        atr: str = DEFAULT_ATR,
        serial: str,
        port: int = DEFAULT_PORT,
        host: str = DEFAULT_HOST,
        serial_tag: int = SERIAL_TAG,
        aids: Sequence[str] = (CARD_MANAGER_AID,),
        retry_s: float = 0.1,
    ) -> None:
        self.profile = CardProfile(
            atr=bytes.fromhex(atr),
            serial=bytes.fromhex(serial),
            serial_tag=serial_tag,
            aids=tuple(bytes.fromhex(aid) for aid in aids),
        )
        self.host, self.port, self.retry_s = host, port, retry_s
        self.connected = threading.Event()  # set while vpcd has the card
        self.connections = 0  # how often the card connected to vpcd
        self.apdus = 0  # command APDUs answered
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def atr(self) -> str:
        return self.profile.atr.hex().upper()

    @property
    def serial(self) -> str:
        return self.profile.serial.hex().upper()

    def start(self) -> VirtualCard:
        """Insert the card: connect to vpcd on a thread (see ``connected``)."""
        if self._thread is not None:
            raise RuntimeError("this card is already started")
        self._stop.clear()
        self._thread = threading.Thread(
            target=self.run, args=(self._stop,), daemon=True, name=f"vcard-{self.port}"
        )
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Remove the card: disconnect from vpcd and end the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def __enter__(self) -> VirtualCard:
        return self.start()

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.stop()

    def run(self, stop: threading.Event) -> None:
        """Be the card until ``stop`` is set, connecting to vpcd as often as needed."""
        while not stop.is_set():
            try:
                sock = socket.create_connection((self.host, self.port), timeout=1.0)
            except OSError:
                stop.wait(self.retry_s)  # vpcd is not listening (yet): pcscd is not up
                continue
            with sock:
                self.connections += 1
                self.connected.set()
                with contextlib.suppress(OSError):  # vpcd went away: connect again
                    self._serve(sock, stop)
                self.connected.clear()

    def _serve(self, sock: socket.socket, stop: threading.Event) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(0.1)  # how quickly the card notices ``stop``
        while True:
            header = _recv_exact(sock, 2, stop)
            payload = None if header is None else _recv_exact(sock, int.from_bytes(header), stop)
            if payload is None:
                return
            if len(payload) == 1:
                if payload[0] == _ATR_REQUEST:
                    _send(sock, self.profile.atr)
                continue  # power off, power on and reset are not answered
            self.apdus += 1
            _send(sock, self.profile.answer(payload))


def _hex(value: str) -> str:
    try:
        if bytes.fromhex(value):
            return value
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"not hex bytes: {value!r}")


def _tag(value: str) -> int:
    try:
        tag = int(value, 16)
    except ValueError:
        tag = -1
    if not 0 <= tag <= 0xFFFF:
        raise argparse.ArgumentTypeError(f"not a 2-byte hex tag: {value!r}")
    return tag


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ops.vcard",
        description="A virtual card in a vpcd reader until SIGTERM (card removed).",
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="vpcd port (35963, 35964)")
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--atr", type=_hex, default=DEFAULT_ATR, help="the ATR, hex")
    parser.add_argument("--serial", type=_hex, required=True, help="the chip serial, hex")
    parser.add_argument(
        "--serial-tag",
        type=_tag,
        default=SERIAL_TAG,
        help="GET DATA P1P2 that returns the serial, hex (default 0000)",
    )
    parser.add_argument(
        "--aid", type=_hex, action="append", help="an application SELECT finds (repeatable)"
    )
    args = parser.parse_args(argv)
    card = VirtualCard(
        atr=args.atr,
        serial=args.serial,
        port=args.port,
        host=args.host,
        serial_tag=args.serial_tag,
        aids=args.aid or (CARD_MANAGER_AID,),
    )
    stop = threading.Event()

    def _removed(_signum: int, _frame: object) -> None:
        stop.set()  # SIGTERM is "card removed": disconnect from vpcd and exit

    signal.signal(signal.SIGTERM, _removed)
    signal.signal(signal.SIGINT, _removed)
    print(f"card {card.serial} for vpcd at {card.host}:{card.port}", file=sys.stderr)
    card.run(stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
