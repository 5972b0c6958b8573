"""PcscReader on the real PC/SC stack: pcscd, vsmartcard's vpcd readers and our card program.

Cards are inserted and removed at will (``tests.hw.pcsc``); what the card program is
configured with (ATR, serial, the tag it keeps the serial under) is what the reader must
report, and every way a chip goes wrong must be a CHIP fault keeping the raw code.
"""

from __future__ import annotations

import signal
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from smartcard.System import readers as pyscard_readers

from ops.vcard import CARD_MANAGER_AID
from schemas.errors import ConfigurationError, DeviceFault
from schemas.states import FaultKind
from stations.pcsc_reader import PcscReader
from tests.hw.pcsc import READER_0, READER_1, VPCD_PORTS, CardSlots, session_pcscd, wait_for_card

pytestmark = pytest.mark.hardware

ATR = "3B0A4341524444C1E7E07001"  # T=0, ten historical bytes ("CARDD" and a tail)
SERIAL = "04A1B2C3D4E5F6"


@pytest.fixture(scope="session")
def pcscd(tmp_path_factory):
    yield from session_pcscd(tmp_path_factory)


@pytest.fixture
def cards(pcscd):
    with CardSlots() as slots:
        yield slots


@pytest.fixture
def reader():
    station = PcscReader(READER_0)
    yield station
    station.close()


def _fault(call) -> DeviceFault:
    with pytest.raises(DeviceFault) as caught:
        call()
    assert caught.value.kind == FaultKind.CHIP
    return caught.value


# --- what the chip says ---------------------------------------------------------------


def test_the_reader_reports_the_atr_and_serial_the_card_program_has(cards, reader):
    cards.insert(READER_0, atr=ATR, serial=SERIAL)
    chip = reader.read_chip(5)
    assert (chip.atr, chip.serial) == (ATR, SERIAL)
    assert reader.reader_name == READER_0


def test_read_chip_waits_for_a_card_inserted_while_it_waits(cards, reader):
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(reader.read_chip, 5)
        time.sleep(0.3)
        assert not waiting.done()
        inserted = time.monotonic()
        cards.insert(READER_0, serial=SERIAL, wait=False)
        assert waiting.result(timeout=5).serial == SERIAL
    assert time.monotonic() - inserted < 2  # pcscd sees a vpcd card in ~0.4 s


@pytest.mark.parametrize(
    ("card_tag", "apdu", "sw"),
    [
        (0x0000, "80CA9F7F00", "6A88"),  # GET DATA of a tag the card does not have
        (0x9F7F, "FFCA000000", "6A88"),  # the default APDU, a card keeping its serial elsewhere
        (0x0000, "00B0000000", "6D00"),  # READ BINARY: an instruction the card does not know
    ],
)
def test_a_serial_apdu_the_card_refuses_is_a_chip_fault_with_its_status_word(
    cards, card_tag, apdu, sw
):
    cards.insert(READER_0, serial=SERIAL, serial_tag=card_tag)
    station = PcscReader(READER_0, serial_apdu=apdu)
    assert _fault(lambda: station.read_chip(5)).code == sw
    # The failed read let go of the card: nobody is locked out, the same answer again.
    assert _fault(lambda: PcscReader(READER_0, serial_apdu=apdu).read_chip(5)).code == sw
    assert _fault(lambda: station.read_chip(5)).code == sw


def test_a_configured_serial_apdu_reads_the_serial_where_the_chip_keeps_it(cards):
    cards.insert(READER_0, serial=SERIAL, serial_tag=0x9F7F)
    station = PcscReader(READER_0, serial_apdu="80CA9F7F00")
    try:
        assert station.read_chip(5).serial == SERIAL
    finally:
        station.close()


@pytest.mark.parametrize(
    ("pattern", "options"),
    [
        ("", {}),
        ("*", {"serial_apdu": "FFCA"}),
        ("*", {"serial_apdu": "not hex"}),
        ("*", {"poll_s": 0}),
    ],
)
def test_bad_reader_settings_are_refused_when_the_reader_is_made(pattern, options):
    with pytest.raises(ConfigurationError):
        PcscReader(pattern, **options)


# --- no card, no reader ----------------------------------------------------------------


def test_no_card_is_a_timeout_fault_after_about_the_timeout(cards, reader):
    started = time.monotonic()
    fault = _fault(lambda: reader.read_chip(0.5))
    elapsed = time.monotonic() - started
    assert fault.code == "SCARD_E_TIMEOUT"
    assert READER_0 in fault.detail
    assert 0.5 <= elapsed < 1.5


def test_the_reader_is_found_by_its_name_pattern_among_the_two_vpcd_readers(cards):
    in_0 = cards.insert(READER_0, serial="00000000A0")
    in_1 = cards.insert(READER_1, serial="00000000B1")
    second, first = PcscReader("Virtual PCD * 01"), PcscReader("Virtual PCD*")
    try:
        assert second.read_chip(5).serial == in_1.serial
        assert second.reader_name == READER_1
        # Several match: the first name in order, whatever order pcscd lists them in.
        assert first.read_chip(5).serial == in_0.serial
        assert first.reader_name == READER_0
    finally:
        second.close()
        first.close()


def test_no_reader_matching_the_pattern_is_a_fault_that_names_the_pattern(pcscd):
    started = time.monotonic()
    fault = _fault(lambda: PcscReader("Gemalto PC Twin*").read_chip(0.5))
    assert fault.code == "SCARD_E_UNKNOWN_READER"
    assert "'Gemalto PC Twin*'" in fault.detail
    assert READER_0 in fault.detail  # and the readers there are, for the operator
    assert time.monotonic() - started < 1.5


def test_no_pcscd_is_a_fault_saying_so_after_about_the_timeout(pcscd):
    if not pcscd.started:
        pytest.skip("pcscd ran before the tests: only a pcscd the tests started is stopped")
    with pcscd.down():
        started = time.monotonic()
        fault = _fault(lambda: PcscReader(READER_0).read_chip(0.5))
        elapsed = time.monotonic() - started
    assert fault.code == "SCARD_E_NO_SERVICE"
    assert "pcscd is not running" in fault.detail
    assert 0.5 <= elapsed < 1.5


# --- the card leaves ------------------------------------------------------------------


def test_a_card_removed_after_read_chip_makes_check_present_raise_a_chip_fault(cards, reader):
    card = cards.insert(READER_0, serial=SERIAL)
    reader.read_chip(5)
    reader.check_present()
    removed = time.monotonic()
    card.stop()
    fault = _until_fault(reader.check_present)
    assert fault.code == "SCARD_W_REMOVED_CARD"
    assert time.monotonic() - removed < 2  # pcscd notices a removal in ~0.3 s


def test_a_card_replaced_after_read_chip_makes_check_present_raise(cards, reader):
    old = cards.insert(READER_0, serial="01D0000001")
    reader.read_chip(5)
    cards.remove(old, wait=False)
    new = cards.insert(READER_0, serial="0E50000002", wait=False)
    assert _until_fault(reader.check_present).code == "SCARD_W_REMOVED_CARD"
    wait_for_card(READER_0, present=True)
    assert reader.read_chip(5).serial == new.serial
    reader.check_present()


def test_check_present_before_any_read_chip_is_a_chip_fault():
    assert _fault(PcscReader(READER_0).check_present).code == "SCARD_E_NO_SMARTCARD"


def _until_fault(check, within_s: float = 5.0) -> DeviceFault:
    """The fault ``check`` raises once pcscd has noticed; fails after ``within_s``."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            check()
        except DeviceFault as raised:
            fault = raised
            break
        time.sleep(0.01)
    else:
        pytest.fail(f"no fault within {within_s} s")
    assert fault.kind == FaultKind.CHIP
    return fault


# --- found again ----------------------------------------------------------------------


def test_a_card_program_that_reconnects_is_read_again_by_the_same_reader(cards, reader):
    card = cards.insert(READER_0, serial=SERIAL)
    assert reader.read_chip(5).serial == SERIAL
    card.stop()
    wait_for_card(READER_0, present=False)
    card.start()  # the same card program, connecting to vpcd again
    assert reader.read_chip(5).serial == SERIAL
    assert card.connections >= 2


def test_a_restarted_pcscd_is_found_again_and_the_card_read(pcscd, cards, reader):
    if not pcscd.started:
        pytest.skip("pcscd ran before the tests: only a pcscd the tests started is restarted")
    card = cards.insert(READER_0, serial=SERIAL)
    assert reader.read_chip(5).serial == SERIAL
    pcscd.restart()
    # The connection died with the old pcscd: the card cannot be vouched for any more.
    assert _fault(reader.check_present).code in {"SCARD_E_NO_SERVICE", "SCARD_E_INVALID_HANDLE"}
    # The card program connects to the new vpcd by itself; the reader finds both again.
    assert reader.read_chip(10).serial == SERIAL
    assert card.connections >= 2


def test_a_read_waiting_through_a_pcscd_restart_gets_the_card_inserted_after(pcscd, cards, reader):
    if not pcscd.started:
        pytest.skip("pcscd ran before the tests: only a pcscd the tests started is restarted")
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(reader.read_chip, 10)
        time.sleep(0.3)
        pcscd.restart()
        cards.insert(READER_0, serial=SERIAL)
        assert waiting.result(timeout=10).serial == SERIAL


# --- who owns the card -----------------------------------------------------------------


def test_an_exclusive_connection_makes_a_second_connect_fail_with_a_sharing_violation(
    cards, reader
):
    cards.insert(READER_0, serial=SERIAL)
    reader.read_chip(5)
    for other in (PcscReader(READER_0), PcscReader(READER_0, exclusive=False)):
        assert _fault(lambda other=other: other.read_chip(2)).code == "SCARD_E_SHARING_VIOLATION"
    reader.check_present()  # the station's own connection is untouched
    reader.close()
    after = PcscReader(READER_0)
    try:
        assert after.read_chip(5).serial == SERIAL  # close let go of the card
    finally:
        after.close()


def test_shared_connections_let_two_readers_read_the_same_card(cards):
    cards.insert(READER_0, serial=SERIAL)
    one, two = PcscReader(READER_0, exclusive=False), PcscReader(READER_0, exclusive=False)
    try:
        assert one.read_chip(5).serial == two.read_chip(5).serial == SERIAL
    finally:
        one.close()
        two.close()


def test_close_can_be_called_again_and_after_the_card_is_gone(cards, reader):
    card = cards.insert(READER_0, serial=SERIAL)
    reader.read_chip(5)
    cards.remove(card)
    reader.close()
    reader.close()
    assert reader.reader_name is None


# --- the card program itself, checked with pyscard's own high-level API -----------------


@pytest.fixture
def pyscard_connection(cards):
    """A shared connection made by pyscard's ``smartcard.System`` API, not by our code."""
    cards.insert(READER_0, atr=ATR, serial=SERIAL)
    [found] = [r for r in pyscard_readers() if str(r) == READER_0]
    connection = found.createConnection()
    connection.connect()
    yield connection
    connection.disconnect()
    connection.release()


def test_the_card_program_answers_select_by_aid(pyscard_connection):
    aid = list(bytes.fromhex(CARD_MANAGER_AID))
    select = [0x00, 0xA4, 0x04, 0x00, len(aid), *aid]
    assert pyscard_connection.transmit(select) == ([], 0x90, 0x00)
    unknown = [0x00, 0xA4, 0x04, 0x00, 5, 0xA0, 0, 0, 0, 0x99]
    assert pyscard_connection.transmit(unknown) == ([], 0x6A, 0x82)
    assert bytes(pyscard_connection.getATR()).hex().upper() == ATR


def test_an_apdu_round_trip_takes_well_under_a_delayed_ack(pyscard_connection):
    # Without TCP_QUICKACK on the card side each APDU waits ~40 ms for a delayed ACK.
    get_serial = [0xFF, 0xCA, 0x00, 0x00, 0x00]
    times = []
    for _ in range(50):
        started = time.perf_counter()
        data, sw1, sw2 = pyscard_connection.transmit(get_serial)
        times.append(time.perf_counter() - started)
        assert (bytes(data).hex().upper(), sw1, sw2) == (SERIAL, 0x90, 0x00)
    assert statistics.median(times) < 0.01


def test_the_vcard_command_is_a_card_until_sigterm(pcscd):
    program = subprocess.Popen(
        [
            *(sys.executable, "-m", "ops.vcard", "--port", str(VPCD_PORTS[READER_1])),
            *("--atr", ATR, "--serial", SERIAL),
        ],
        stderr=subprocess.PIPE,
    )
    station = PcscReader(READER_1)
    try:
        chip = station.read_chip(10)
        assert (chip.atr, chip.serial) == (ATR, SERIAL)
        program.send_signal(signal.SIGTERM)  # the card is pulled out
        assert program.wait(timeout=5) == 0
        assert _until_fault(station.check_present).code == "SCARD_W_REMOVED_CARD"
    finally:
        station.close()
        if program.poll() is None:
            program.kill()
            program.wait()
