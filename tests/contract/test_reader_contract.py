"""One contract for every Reader: the simulated encoder and a PC/SC reader with our card.

The same assertions run against ``SimReader`` and against ``PcscReader`` on pcscd with
vsmartcard's vpcd and our card program (``ops.vcard``). A rig puts the cards in: for the
simulator every ``read_chip`` is already a new blank, for PC/SC the rig removes the last
virtual card and inserts a new one with another ATR and serial.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest

from schemas.errors import DeviceFault
from schemas.states import FaultKind
from stations.drivers import Reader
from stations.pcsc_reader import PcscReader
from stations.sim import make_sim_drivers
from tests.hw.pcsc import READER_0, CardSlots, session_pcscd


class Rig(Protocol):
    reader: Reader
    timeout_s: float

    def new_card(self) -> None:
        """Put a fresh blank, another chip than the last one, into the reader."""

    def no_card(self) -> None:
        """Leave the reader with nothing that answers."""

    def settle(self) -> None:
        """Give the reader time to notice anything that changed."""


class SimRig:
    def __init__(self, tmp_path: Path) -> None:
        _, reader, _ = make_sim_drivers(
            time_scale=0, fault_rate=0, seed=1, output_dir=tmp_path / "printed"
        )
        self.reader: Reader = reader
        self.timeout_s = 5.0

    def new_card(self) -> None:
        """Every read of the simulated encoder is a new blank already."""

    def no_card(self) -> None:
        # The simulator has no empty reader; a chip slower than the timeout is its analog.
        self.timeout_s = 0.01

    def settle(self) -> None:
        """Nothing changes in the simulator behind the station's back."""


class PcscRig:
    def __init__(self, cards: CardSlots) -> None:
        self.cards = cards
        self.pcsc = PcscReader(READER_0)
        self.reader: Reader = self.pcsc
        self.timeout_s = 5.0
        self._count = 0

    def new_card(self) -> None:
        for card in list(self.cards.cards):
            self.cards.remove(card)
        self._count += 1
        self.cards.insert(
            READER_0, atr=f"3B04C0DE{self._count:04X}", serial=os.urandom(8).hex().upper()
        )

    def no_card(self) -> None:
        for card in list(self.cards.cards):
            self.cards.remove(card)
        self.timeout_s = 0.3

    def settle(self) -> None:
        # pcscd looks at a vpcd reader every ~0.4 s: after longer than that, "still
        # present" is pcscd's fresh word, not a leftover.
        time.sleep(0.5)


@pytest.fixture(scope="session")
def pcscd(tmp_path_factory):
    yield from session_pcscd(tmp_path_factory)


@pytest.fixture
def cards(pcscd):
    with CardSlots() as slots:
        yield slots


@pytest.fixture(params=["sim", pytest.param("pcsc", marks=pytest.mark.hardware)])
def rig(request, tmp_path) -> Iterator[Rig]:
    if request.param == "sim":
        yield SimRig(tmp_path)
        return
    rig = PcscRig(request.getfixturevalue("cards"))
    yield rig
    rig.pcsc.close()


def test_read_chip_returns_the_atr_as_hex_and_a_non_empty_serial(rig):
    rig.new_card()
    chip = rig.reader.read_chip(rig.timeout_s)
    assert len(bytes.fromhex(chip.atr)) >= 2
    assert chip.atr[0:2] in {"3B", "3F"}  # TS: direct or inverse convention
    assert chip.serial
    assert chip.serial == chip.serial.strip()


def test_two_different_cards_give_different_serials(rig):
    rig.new_card()
    first = rig.reader.read_chip(rig.timeout_s)
    rig.new_card()
    second = rig.reader.read_chip(rig.timeout_s)
    assert first.serial != second.serial


def test_check_present_passes_while_the_card_stays(rig):
    rig.new_card()
    rig.reader.read_chip(rig.timeout_s)
    rig.reader.check_present()
    rig.settle()
    rig.reader.check_present()


def test_nothing_answering_within_the_timeout_is_a_chip_timeout_fault(rig):
    rig.no_card()
    with pytest.raises(DeviceFault) as caught:
        rig.reader.read_chip(rig.timeout_s)
    assert (caught.value.kind, caught.value.code) == (FaultKind.CHIP, "SCARD_E_TIMEOUT")


# Removal is tested on the real stack only: the simulated encoder never loses a card
# (SimReader.check_present is a no-op by design; its chip faults come from read_chip
# and the token), so there is nothing there to remove.
@pytest.mark.hardware
def test_a_card_removed_after_read_chip_fails_check_present_with_a_chip_fault(cards):
    reader = PcscReader(READER_0)
    card = cards.insert(READER_0, serial="C0FFEE0001")
    try:
        reader.read_chip(5)
        cards.remove(card)
        with pytest.raises(DeviceFault) as caught:
            reader.check_present()
        assert (caught.value.kind, caught.value.code) == (FaultKind.CHIP, "SCARD_W_REMOVED_CARD")
    finally:
        reader.close()
