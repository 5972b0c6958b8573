"""One contract for every Printer: the simulator, the file printer and a CUPS queue.

The same assertions run against ``SimPrinter``, ``FilePrinter`` and ``CupsPrinter`` on
the private scheduler's cups-pdf queue (``tests.hw.cups``). Each rig says where a
printed card's faces end up; the real differences are spelled out there:

- ``SimPrinter`` copies the two PNGs (not the PDF) into its output dir, and a card sent
  to the reject bin keeps them there: it models counts, not the bin's contents.
- ``FilePrinter`` writes the PDF and both PNGs, and moves a rejected card's files into
  ``rejected/``.
- ``CupsPrinter`` prints the PDF only; cups-pdf names it after the job title. A rejected
  card's PDF stays where it is: what a printer printed cannot be taken back, and
  ``eject`` only keeps the books.
"""

from __future__ import annotations

import datetime
import uuid
from pathlib import Path
from typing import Protocol

import pytest

from schemas.errors import DeviceFault
from schemas.states import FaultKind
from stations.drivers import CardFaces
from stations.faces import render_faces
from stations.printers import NO_CARD, CupsPrinter, FilePrinter
from stations.sim import SimPrinter, make_sim_drivers
from tests.hw.cups import PrivateCups, session_cups


class Counted(Protocol):
    fed: int
    printed: int
    ejected: int
    rejected: int

    def feed(self) -> None: ...
    def print_faces(self, faces: CardFaces) -> None: ...
    def eject(self, *, reject: bool) -> None: ...


class Rig(Protocol):
    rejected_output_moves: bool

    @property
    def printer(self) -> Counted: ...

    def printed(self, faces: CardFaces) -> list[Path]:
        """Where this printer puts the faces of a printed card."""

    def rejected(self, faces: CardFaces) -> list[Path]:
        """Where those files are once the card went to the reject bin."""


class SimRig:
    rejected_output_moves = False

    def __init__(self, tmp_path: Path) -> None:
        self.out = tmp_path / "printed"
        printer, _, _ = make_sim_drivers(time_scale=0, fault_rate=0, seed=1, output_dir=self.out)
        self.printer: SimPrinter = printer

    def printed(self, faces: CardFaces) -> list[Path]:
        return [self.out / faces.front.name, self.out / faces.back.name]

    def rejected(self, faces: CardFaces) -> list[Path]:
        return self.printed(faces)


class FileRig:
    rejected_output_moves = True

    def __init__(self, tmp_path: Path) -> None:
        self.out = tmp_path / "printed"
        self.printer = FilePrinter(self.out)

    def printed(self, faces: CardFaces) -> list[Path]:
        assert faces.pdf is not None
        return [self.out / p.name for p in (faces.pdf, faces.front, faces.back)]

    def rejected(self, faces: CardFaces) -> list[Path]:
        return [self.out / "rejected" / p.name for p in self.printed(faces)]


class CupsRig:
    rejected_output_moves = False

    def __init__(self, stack: PrivateCups) -> None:
        self.stack = stack
        self.printer = CupsPrinter(stack.pdf_queue, server=stack.socket, poll_s=0.05)

    def printed(self, faces: CardFaces) -> list[Path]:
        assert faces.pdf is not None
        return [self.stack.output(faces.pdf.stem)]

    def rejected(self, faces: CardFaces) -> list[Path]:
        return self.printed(faces)


@pytest.fixture(scope="session")
def private_cups(tmp_path_factory):
    yield from session_cups(tmp_path_factory)


@pytest.fixture(params=["sim", "file", pytest.param("cups", marks=pytest.mark.hardware)])
def rig(request, tmp_path) -> Rig:
    if request.param == "sim":
        return SimRig(tmp_path)
    if request.param == "file":
        return FileRig(tmp_path)
    return CupsRig(request.getfixturevalue("private_cups"))


@pytest.fixture
def faces(tmp_path) -> CardFaces:
    # cups-pdf names its output after the job title: a card number per test keeps them apart.
    return render_faces(
        tmp_path / "faces",
        card_number=f"K-{uuid.uuid4().hex[:10]}",
        holder_name="Zoë Müller",
        organization="Acme Corporation",
        org_unit="Security Operations",
        title="Engineer",
        valid_until=datetime.date(2030, 6, 30),
        photo_path=None,
    )


def _books(printer: Counted) -> tuple[int, int, int, int]:
    return (printer.fed, printer.printed, printer.ejected, printer.rejected)


def test_a_fed_printed_and_ejected_card_leaves_its_faces_where_the_printer_puts_them(rig, faces):
    rig.printer.feed()
    rig.printer.print_faces(faces)
    rig.printer.eject(reject=False)
    assert _books(rig.printer) == (1, 1, 1, 0)
    for path in rig.printed(faces):
        assert path.is_file(), path
        assert path.stat().st_size > 0, path


def test_printing_without_a_fed_card_is_a_print_fault(rig, faces):
    with pytest.raises(DeviceFault) as fault:
        rig.printer.print_faces(faces)
    assert (fault.value.kind, fault.value.code) == (FaultKind.PRINT, NO_CARD)
    assert _books(rig.printer) == (0, 0, 0, 0)
    assert not any(p.exists() for p in rig.printed(faces))


def test_printing_after_the_card_left_is_a_print_fault(rig, faces):
    rig.printer.feed()
    rig.printer.eject(reject=False)
    with pytest.raises(DeviceFault) as fault:
        rig.printer.print_faces(faces)
    assert fault.value.code == NO_CARD
    assert _books(rig.printer) == (1, 0, 1, 0)


def test_a_rejected_card_goes_to_the_reject_bin_not_the_output_stack(rig, faces):
    rig.printer.feed()
    rig.printer.print_faces(faces)
    rig.printer.eject(reject=True)
    assert _books(rig.printer) == (1, 1, 0, 1)
    for path in rig.rejected(faces):
        assert path.is_file(), path
    if rig.rejected_output_moves:
        assert not any(p.exists() for p in rig.printed(faces))


def test_feeding_over_a_card_inside_sends_that_card_to_the_reject_bin(rig):
    rig.printer.feed()
    rig.printer.feed()
    rig.printer.eject(reject=False)
    fed, _, ejected, rejected = _books(rig.printer)
    assert (fed, ejected, rejected) == (2, 1, 1)
    assert fed == ejected + rejected


def test_ejecting_with_no_card_inside_changes_nothing(rig):
    rig.printer.eject(reject=False)
    rig.printer.eject(reject=True)
    assert _books(rig.printer) == (0, 0, 0, 0)


# Beyond the contract: how FilePrinter reports what goes wrong with its files.


def test_a_file_printer_whose_directory_cannot_be_made_faults_at_feed_with_the_errno(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the output directory should be")
    printer = FilePrinter(blocker / "printed")
    with pytest.raises(DeviceFault) as fault:
        printer.feed()
    assert (fault.value.kind, fault.value.code) == (FaultKind.PRINT, "ENOTDIR")
    assert printer.fed == 0


def test_a_file_printer_missing_a_face_faults_with_the_errno(tmp_path, faces):
    faces.back.unlink()
    printer = FilePrinter(tmp_path / "printed")
    printer.feed()
    with pytest.raises(DeviceFault) as fault:
        printer.print_faces(faces)
    assert (fault.value.kind, fault.value.code) == (FaultKind.PRINT, "ENOENT")
    assert printer.printed == 0
    printer.eject(reject=True)  # what was written goes to the reject bin with the card
    assert sorted(p.name for p in (tmp_path / "printed" / "rejected").iterdir()) == sorted(
        p.name for p in (faces.pdf, faces.front) if p is not None
    )
