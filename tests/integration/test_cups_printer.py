"""CupsPrinter on a private CUPS scheduler: cups-pdf output, stopped queues, dead printers.

What cups-pdf writes is read back with poppler (``pdfinfo``, ``pdftotext``), not with
our own code. The scheduler, its queues and the cups-pdf configuration are described
in ``tests.hw.cups``.
"""

from __future__ import annotations

import datetime
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from schemas.errors import DeviceFault
from schemas.states import FaultKind
from stations.drivers import CardFaces
from stations.faces import render_faces
from stations.printers import CupsPrinter, connect, job_code
from tests.hw.cups import PrivateCups, pdf_pages, pdf_text, require_poppler, session_cups

pytestmark = pytest.mark.hardware

CR80_MM = (85.6, 54.0)
HOLDER = "Zoë Müller"
WAIT_S = 10.0


@pytest.fixture(scope="session")
def private_cups(tmp_path_factory):
    yield from session_cups(tmp_path_factory)


@pytest.fixture
def stack(private_cups: PrivateCups) -> Iterator[PrivateCups]:
    """The scheduler, with both queues started and accepting again after each test."""
    yield private_cups
    for queue in (private_cups.pdf_queue, private_cups.dead_queue):
        private_cups.enable(queue)
        private_cups.accept(queue)


@pytest.fixture
def faces(tmp_path: Path) -> CardFaces:
    return render_faces(
        tmp_path,
        card_number=f"Z-{uuid.uuid4().hex[:10]}",
        holder_name=HOLDER,
        organization="Acme Corporation",
        org_unit="Security Operations",
        title="Engineer",
        valid_until=datetime.date(2030, 6, 30),
        photo_path=None,
    )


def _printer(stack: PrivateCups, queue: str | None = None, **kwargs) -> CupsPrinter:
    kwargs.setdefault("poll_s", 0.05)
    return CupsPrinter(queue or stack.pdf_queue, server=stack.socket, **kwargs)


def _wait_for_job_state(stack: PrivateCups, printer: CupsPrinter, state: int) -> int:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        job_id = printer.last_job_id
        if job_id is not None and stack.job(job_id)["job-state"] == state:
            return job_id
        time.sleep(0.02)
    raise AssertionError(f"no job reached state {state}:\n{stack.log_tail()}")


def test_a_card_printed_through_cups_pdf_is_two_cr80_pages_with_the_holders_name(
    stack, faces, record_property
):
    require_poppler()
    printer = _printer(stack)
    printer.feed()
    started = time.monotonic()
    printer.print_faces(faces)
    record_property("cups_pdf_job_s", round(time.monotonic() - started, 3))
    printer.eject(reject=False)
    assert faces.pdf is not None
    out = stack.output(faces.pdf.stem)
    pages = pdf_pages(out)
    assert len(pages) == 2
    for page in pages:
        # CUPS rounds the custom size to whole points (242 x 153 pt = 85.37 x 53.98 mm).
        assert page.size_mm == pytest.approx(CR80_MM, abs=0.5), page
    assert HOLDER in pdf_text(out, page=1)
    assert "If found, return to Acme Corporation" in pdf_text(out, page=2)
    assert stack.job(printer.last_job_id or 0)["job-state"] == 9


def test_a_stopped_queue_is_a_print_fault_at_feed_carrying_its_state(stack):
    stack.disable(stack.pdf_queue, "ribbon change")
    printer = _printer(stack)
    with pytest.raises(DeviceFault) as fault:
        printer.feed()
    assert fault.value.kind == FaultKind.PRINT
    assert "printer-state=5" in (fault.value.code or "")
    assert "paused" in (fault.value.code or "")
    assert "ribbon change" in fault.value.detail
    assert printer.fed == 0


def test_a_queue_refusing_jobs_is_a_print_fault_at_feed(stack):
    stack.reject(stack.pdf_queue)
    printer = _printer(stack)
    with pytest.raises(DeviceFault) as fault:
        printer.feed()
    assert "printer-is-accepting-jobs=false" in (fault.value.code or "")
    assert printer.fed == 0


def test_a_queue_that_does_not_exist_is_a_print_fault_with_the_ipp_status(stack):
    with pytest.raises(DeviceFault) as fault:
        _printer(stack, "NoSuchQueue").feed()
    assert (fault.value.kind, fault.value.code) == (FaultKind.PRINT, "ipp-status=0x0406")


def test_an_unreachable_scheduler_is_a_print_fault(tmp_path):
    printer = CupsPrinter("CardPrinter", server=str(tmp_path / "no-cupsd.sock"))
    with pytest.raises(DeviceFault) as fault:
        printer.feed()
    assert (fault.value.kind, fault.value.code) == (FaultKind.PRINT, "cups-unreachable")


def test_a_dead_socket_printer_becomes_a_print_fault_within_seconds(stack, faces, record_property):
    printer = _printer(stack, stack.dead_queue, job_timeout_s=60)
    printer.feed()  # the queue itself is idle and accepting: only printing shows it dead
    started = time.monotonic()
    with pytest.raises(DeviceFault) as fault:
        printer.print_faces(faces)
    elapsed = time.monotonic() - started
    record_property("dead_printer_fault_s", round(elapsed, 2))
    # Aborted by the error policy (contimeout=2; the socket backend retries after 5 s),
    # not given up on by our own timeout.
    assert (fault.value.code or "").startswith("job-state=8 ")
    assert "not responding" in fault.value.detail
    assert elapsed < 15, elapsed
    assert printer.printed == 0


def test_a_job_canceled_from_another_connection_is_a_fault_carrying_the_reason(stack, faces):
    # A held job waits until someone releases it; here someone cancels it instead.
    printer = _printer(stack, options={"job-hold-until": "indefinite"})
    printer.feed()
    with ThreadPoolExecutor(1) as pool:
        printing = pool.submit(printer.print_faces, faces)
        job_id = _wait_for_job_state(stack, printer, 4)
        connect(stack.socket).cancelJob(job_id)
        with pytest.raises(DeviceFault) as fault:
            printing.result(timeout=WAIT_S)
    attrs = stack.job(job_id)
    reasons = attrs["job-state-reasons"]
    reasons = (reasons,) if isinstance(reasons, str) else tuple(reasons)
    assert fault.value.kind == FaultKind.PRINT
    assert fault.value.code == job_code(7, reasons)
    assert "was canceled" in fault.value.detail
    assert printer.printed == 0


def test_a_job_on_a_queue_stopped_after_feed_is_a_fault_and_is_cancelled(stack, faces):
    printer = _printer(stack)
    printer.feed()
    stack.disable(stack.pdf_queue)
    started = time.monotonic()
    with pytest.raises(DeviceFault) as fault:
        printer.print_faces(faces)
    assert (fault.value.code or "").startswith("job-state=3 ")
    assert "printer-state=5" in (fault.value.code or "")
    assert time.monotonic() - started < WAIT_S
    # Cancelled, so starting the queue again cannot print it onto another card.
    assert stack.job(printer.last_job_id or 0)["job-state"] == 7


def test_a_job_that_does_not_complete_in_time_is_cancelled_and_a_fault(stack, faces):
    printer = _printer(stack, job_timeout_s=0.5, options={"job-hold-until": "indefinite"})
    printer.feed()
    with pytest.raises(DeviceFault) as fault:
        printer.print_faces(faces)
    assert (fault.value.code or "").startswith("timeout job-state=4 ")
    assert stack.job(printer.last_job_id or 0)["job-state"] == 7


def test_a_printed_card_can_be_followed_by_the_next_on_the_same_printer(stack, tmp_path):
    printer = _printer(stack)
    titles = []
    for n in range(3):
        card = render_faces(
            tmp_path / str(n),
            card_number=f"N-{uuid.uuid4().hex[:10]}",
            holder_name=f"Holder {n}",
            organization="Acme Corporation",
            org_unit=None,
            title=None,
            valid_until=datetime.date(2030, 6, 30),
            photo_path=None,
        )
        printer.feed()
        printer.print_faces(card)
        printer.eject(reject=False)
        assert card.pdf is not None
        titles.append(card.pdf.stem)
    assert (printer.fed, printer.printed, printer.ejected) == (3, 3, 3)
    assert all(stack.output(t).is_file() for t in titles)


def test_faces_without_a_pdf_are_a_caller_bug_not_a_device_fault(stack, faces):
    printer = _printer(stack)
    printer.feed()
    with pytest.raises(ValueError, match="PDF"):
        printer.print_faces(CardFaces(front=faces.front, back=faces.back))
