"""pcscd and virtual cards for tests: the real PC/SC stack with cards we insert and remove.

pcscd runs once per machine, listening on ``/run/pcscd/pcscd.comm``. ``session_pcscd``
uses the one running when it answers; otherwise it starts ``pcscd -f`` (as root), waits
until it answers with both vpcd readers, and stops it when the session ends, never a
pcscd it did not start. Only a pcscd we started may be ``restart()``-ed by a test.

Cards are ``ops.vcard.VirtualCard`` card programs on a thread: ``CardSlots.insert`` puts
one with a chosen ATR and serial into "Virtual PCD 00 00" (port 35963) or "Virtual PCD
00 01" (35964) and waits until pcscd sees it; ``remove`` takes it out and waits until
pcscd has noticed. Every card still in when the test ends is removed, so each test
starts with empty readers.

A test module uses both through two small fixtures::

    @pytest.fixture(scope="session")
    def pcscd(tmp_path_factory):
        yield from session_pcscd(tmp_path_factory)

    @pytest.fixture
    def cards(pcscd):
        with CardSlots() as slots:
            yield slots
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import NoReturn

import pytest
from smartcard import scard

from ops.vcard import DEFAULT_ATR, SERIAL_TAG, VirtualCard

SOCKET = Path("/run/pcscd/pcscd.comm")
VPCD_DRIVER = Path("/usr/lib/pcsc/drivers/serial/libifdvpcd.so")
READER_0, READER_1 = "Virtual PCD 00 00", "Virtual PCD 00 01"
VPCD_PORTS = {READER_0: 35963, READER_1: 35964}
INSTALL = "`make test` installs pcscd and vsmartcard-vpcd (ops/system-deps.sh)"
START_S = 10.0  # pcscd is ready in ~0.1 s; generous for a loaded machine
DETECT_S = 5.0  # pcscd notices an insert or a removal in ~0.3-0.4 s


def _unavailable(message: str) -> NoReturn:
    """Skip (locally) or fail (CI=true): CI must never pass by skipping."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def _pcscd_binary() -> str | None:
    return shutil.which("pcscd") or shutil.which("pcscd", path="/usr/sbin:/sbin")


def readers() -> list[str] | None:
    """The readers pcscd lists, or None when pcscd does not answer."""
    hresult, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    if hresult != scard.SCARD_S_SUCCESS:
        return None
    try:
        hresult, names = scard.SCardListReaders(context, [])
        if hresult == scard.SCARD_E_NO_READERS_AVAILABLE:
            return []
        return list(names) if hresult == scard.SCARD_S_SUCCESS else None
    finally:
        scard.SCardReleaseContext(context)


def _vpcd_listed() -> bool:
    return set(VPCD_PORTS) <= set(readers() or ())


class Pcscd:
    """The machine's pcscd: ``proc`` is set when this session started it."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.users = 0

    @property
    def started(self) -> bool:
        """True when this session started pcscd (and may restart or stop it)."""
        return self.proc is not None

    def ensure(self) -> None:
        """Use the running pcscd, or start one; skip or fail when that cannot be."""
        binary = _pcscd_binary()
        if binary is None or not VPCD_DRIVER.exists():
            _unavailable(f"pcscd or the vpcd driver is missing: {INSTALL}")
        if readers() is not None:
            if not self._wait(_vpcd_listed):
                _unavailable(f"pcscd runs but lists no vpcd readers {sorted(VPCD_PORTS)}")
            return
        if os.geteuid() != 0:
            _unavailable(f"pcscd is not running and only root may start it ({SOCKET})")
        self._start(binary)

    def restart(self) -> None:
        """Stop and start again the pcscd this session started."""
        if not self.started:
            raise RuntimeError("only a pcscd this session started may be restarted")
        binary = _pcscd_binary()
        assert binary is not None
        self.stop()
        self._start(binary)

    @contextlib.contextmanager
    def down(self) -> Iterator[None]:
        """pcscd stopped for the block, started again after it (only one we started)."""
        if not self.started:
            raise RuntimeError("only a pcscd this session started may be stopped")
        binary = _pcscd_binary()
        assert binary is not None
        self.stop()
        try:
            yield
        finally:
            self._start(binary)

    def stop(self) -> None:
        """Stop pcscd if this session started it (by its PID); otherwise leave it be."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _start(self, binary: str) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([binary, "-f"], stdout=log, stderr=subprocess.STDOUT)
        if not self._wait(_vpcd_listed):
            self.stop()
            tail = self.log.read_text(errors="replace")[-2000:]
            pytest.fail(f"pcscd did not answer with the vpcd readers in {START_S} s:\n{tail}")

    def _wait(self, ready: Callable[[], bool]) -> bool:
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                return False
            if ready():
                return True
            time.sleep(0.02)
        return False


_shared: Pcscd | None = None


def session_pcscd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pcscd]:
    """pcscd for the session (see the module docstring): a generator for a session fixture.

    Several test modules may each have such a fixture: they share one ``Pcscd``, which
    is stopped (if we started it) when the last of them is torn down.
    """
    global _shared
    if _shared is None:
        daemon = Pcscd(tmp_path_factory.mktemp("pcscd") / "pcscd.log")
        daemon.ensure()
        _shared = daemon
    daemon = _shared
    daemon.users += 1
    try:
        yield daemon
    finally:
        daemon.users -= 1
        if daemon.users == 0:
            daemon.stop()
            _shared = None


def wait_for_card(reader: str, *, present: bool, timeout_s: float = DETECT_S) -> float:
    """Wait until pcscd sees a card in ``reader`` (or sees it empty); the seconds it took."""
    started = time.monotonic()
    hresult, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    assert hresult == scard.SCARD_S_SUCCESS, scard.SCardGetErrorMessage(hresult)
    try:
        state = scard.SCARD_STATE_UNAWARE
        while (waited := time.monotonic() - started) < timeout_s:
            hresult, states = scard.SCardGetStatusChange(context, 100, [(reader, state)])
            if hresult == scard.SCARD_S_SUCCESS:
                state = states[0][1]
                if bool(state & scard.SCARD_STATE_PRESENT) == present:
                    return waited
    finally:
        scard.SCardReleaseContext(context)
    pytest.fail(f"pcscd did not see {reader} {'with' if present else 'without'} a card")


class CardSlots:
    """Virtual cards inserted into the vpcd readers; those left in are removed at exit."""

    def __init__(self) -> None:
        self.cards: dict[VirtualCard, str] = {}  # card -> reader
        self.detect_s: list[float] = []  # how long pcscd took to see each insert/removal

    def insert(
        self,
        reader: str = READER_0,
        *,
        serial: str,
        atr: str = DEFAULT_ATR,
        serial_tag: int = SERIAL_TAG,
        wait: bool = True,
    ) -> VirtualCard:
        """Put a card into ``reader``; with ``wait``, return once pcscd sees it."""
        port = VPCD_PORTS[reader]
        card = VirtualCard(atr=atr, serial=serial, port=port, serial_tag=serial_tag).start()
        self.cards[card] = reader
        if wait:
            self.detect_s.append(wait_for_card(reader, present=True))
        return card

    def remove(self, card: VirtualCard, *, wait: bool = True) -> None:
        """Take ``card`` out; with ``wait``, return once pcscd has noticed."""
        reader = self.cards.pop(card)
        card.stop()
        if wait:
            self.detect_s.append(wait_for_card(reader, present=False))

    def __enter__(self) -> CardSlots:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        for card in list(self.cards):
            self.remove(card)
