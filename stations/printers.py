"""Real printer drivers beside the simulated one: a file printer and a CUPS printer.

Both implement ``stations.drivers.Printer`` and keep the books the way ``SimPrinter``
does: ``fed`` blanks taken (a blank still inside when the next is fed goes to the
reject bin), ``printed`` cards printed, ``ejected`` cards sent to the output stack and
``rejected`` cards sent to the reject bin; once every card is out,
``fed == ejected + rejected``. Printing with no card inside is a PRINT fault
(``E-NOCARD``), as on the simulator. Every device failure is a ``DeviceFault`` keeping
the raw code (an errno name, a CUPS job or printer state with its reasons, an IPP
status); anything else escaping a method is a bug.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from db.files import atomic_write
from schemas.errors import ConfigurationError, DeviceFault
from schemas.states import FaultKind
from stations.drivers import CardFaces

log = structlog.get_logger(__name__)

NO_CARD = "E-NOCARD"


class _BookedPrinter:
    """Where the card is (in the printer or not) and the four counters of ``SimPrinter``."""

    def __init__(self) -> None:
        self._card_present = False
        self.fed = 0
        self.printed = 0
        self.ejected = 0
        self.rejected = 0

    def _take_blank(self) -> None:
        self.fed += 1
        self._card_present = True

    def _require_card(self) -> None:
        if not self._card_present:
            raise DeviceFault(FaultKind.PRINT, "no card in the printer", code=NO_CARD)

    def _card_out(self, *, reject: bool) -> None:
        self._card_present = False
        if reject:
            self.rejected += 1
        else:
            self.ejected += 1


def _errno_code(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, "EIO")


class FilePrinter(_BookedPrinter):
    """A printer that "prints" a card by writing its faces into ``directory``.

    Each printed card leaves its PDF (when the faces have one) and both PNGs there, each
    written atomically under its own name; a card sent to the reject bin has its files
    moved to ``directory/rejected/``. A file that cannot be written is a PRINT fault
    carrying the errno name (``ENOSPC``, ``EACCES``, ...).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.reject_dir = directory / "rejected"
        super().__init__()
        self._outputs: list[Path] = []  # the files printed onto the card inside

    def feed(self) -> None:
        """Take a blank; a card still inside goes to the reject bin first."""
        if self._card_present:
            self._to_reject_bin()
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise DeviceFault(
                FaultKind.PRINT, f"output {self.directory} unusable", code=_errno_code(exc)
            ) from exc
        self._take_blank()

    def print_faces(self, faces: CardFaces) -> None:
        """Write the faces' PDF and PNGs into ``directory``."""
        self._require_card()
        sources = [p for p in (faces.pdf, faces.front, faces.back) if p is not None]
        for src in sources:
            dest = self.directory / src.name
            try:
                atomic_write(dest, src.read_bytes())
            except OSError as exc:
                raise DeviceFault(
                    FaultKind.PRINT, f"cannot write {dest}", code=_errno_code(exc)
                ) from exc
            if dest not in self._outputs:
                self._outputs.append(dest)
        self.printed += 1

    def eject(self, *, reject: bool) -> None:
        """Send the card out, or to the reject bin with its files; no card, nothing."""
        if not self._card_present:
            return
        if reject:
            self._to_reject_bin()
        else:
            self._outputs.clear()
            self._card_out(reject=False)

    def _to_reject_bin(self) -> None:
        self._card_out(reject=True)
        outputs, self._outputs = self._outputs, []
        try:
            self.reject_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            for path in outputs:
                os.replace(path, self.reject_dir / path.name)
        except OSError as exc:
            raise DeviceFault(
                FaultKind.PRINT,
                f"cannot move a rejected card's files to {self.reject_dir}",
                code=_errno_code(exc),
            ) from exc


# IPP job-state (RFC 8011 5.3.7) and printer-state (5.4.12) values.
JOB_STATES: dict[int, str] = {
    3: "pending",
    4: "held",
    5: "processing",
    6: "stopped",
    7: "canceled",
    8: "aborted",
    9: "completed",
}
_PRINTER_STOPPED = 5  # printer-state: 3 idle, 4 processing, 5 stopped
_PENDING, _COMPLETED = 3, 9
_FINISHED = frozenset({7, 8, 9})  # canceled, aborted, completed: nothing left to cancel
# Job states that end a card's print as a fault, and what they mean for the card. A
# stopped job (6) would resume on its own once the queue is started again, printing
# onto whatever card is then in the printer, so it is cancelled like a timed-out one.
_JOB_FAULTS: dict[int, str] = {
    6: "stopped",
    7: "was canceled",
    8: "was aborted",
}

CR80_MEDIA = "Custom.85.6x54mm"
DEFAULT_OPTIONS: Mapping[str, str] = {"media": CR80_MEDIA, "sides": "two-sided-long-edge"}

# pycups keeps the server to talk to in libcups' global state, which every connection
# made afterwards uses: set it and connect under one lock.
_SERVER_LOCK = threading.Lock()


def _cups() -> Any:
    """pycups, which only a station printing through CUPS needs: it is the ``cups`` extra
    (it builds against libcups2-dev), so the core install and the file printer run
    without it."""
    try:
        import cups  # pycups ships no type hints (mypy override in pyproject.toml)
    except ModuleNotFoundError as exc:
        raise ConfigurationError(
            "the cups printer driver needs pycups: pip install 'cardline[cups]' "
            "(it builds with libcups2-dev and gcc)"
        ) from exc
    return cups


def connect(server: str | None) -> Any:
    """A pycups connection to ``server`` (a host or a unix socket path; None: libcups'
    default, from ``CUPS_SERVER`` or ``client.conf``), safe to call from any thread."""
    cups = _cups()
    with _SERVER_LOCK:
        cups.setServer(server or "")  # "" goes back to libcups' default server
        return cups.Connection()


def _reasons(value: Any) -> tuple[str, ...]:
    """An IPP keyword or list of keywords, as pycups returns them, as a tuple."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(str(v) for v in value)


def job_code(state: int, reasons: tuple[str, ...]) -> str:
    """The raw code a job fault keeps: ``job-state=8 job-state-reasons=a,b``."""
    return f"job-state={state} job-state-reasons={','.join(reasons) or 'none'}"


@dataclass(frozen=True)
class QueueState:
    """What CUPS says about a queue: printer-state (3 idle, 4 processing, 5 stopped),
    printer-state-reasons, printer-is-accepting-jobs and printer-state-message."""

    state: int
    reasons: tuple[str, ...]
    accepting: bool
    message: str

    @property
    def code(self) -> str:
        """The raw code a queue fault keeps."""
        return (
            f"printer-state={self.state} printer-state-reasons={','.join(self.reasons) or 'none'}"
            f" printer-is-accepting-jobs={str(self.accepting).lower()}"
        )

    @property
    def stopped(self) -> bool:
        return self.state == _PRINTER_STOPPED

    def __str__(self) -> str:
        what = "is stopped" if self.stopped else "does not accept jobs"
        return what + (f": {self.message}" if self.message else "")


@contextmanager
def _cups_faults(what: str) -> Iterator[None]:
    """pycups' errors as PRINT faults keeping the IPP or HTTP status."""
    cups = _cups()
    try:
        yield
    except cups.IPPError as exc:
        status, message = [*exc.args, None, None][:2]
        code = f"ipp-status={status:#06x}" if isinstance(status, int) else "ipp-status=unknown"
        raise DeviceFault(FaultKind.PRINT, f"{what}: {message}", code=code) from exc
    except cups.HTTPError as exc:
        status = exc.args[0] if exc.args else "unknown"
        raise DeviceFault(
            FaultKind.PRINT, f"{what}: HTTP error", code=f"http-status={status}"
        ) from exc
    except RuntimeError as exc:  # pycups' "failed to connect to server"
        raise DeviceFault(FaultKind.PRINT, f"{what}: {exc}", code="cups-unreachable") from exc


class CupsPrinter(_BookedPrinter):
    """A card printer behind a CUPS queue, sent each card's two-page CR80 PDF.

    ``server`` is a CUPS server (``host[:port]`` or a unix socket path); None means
    libcups' default (``CUPS_SERVER``, ``client.conf``). ``options`` are added to (and
    override) ``DEFAULT_OPTIONS``. ``feed`` checks that the queue exists, accepts jobs
    and is not stopped; ``print_faces`` submits ``faces.pdf`` and waits until the job
    completes, polling every ``poll_s``; a job that ends otherwise, or waits on a
    stopped queue, is a PRINT fault with its job-state and job-state-reasons, and one
    that has not completed after ``job_timeout_s`` is cancelled and a fault. ``eject``
    only keeps the books: a CUPS queue has no card path to command.
    """

    def __init__(
        self,
        queue: str,
        *,
        server: str | None = None,
        job_timeout_s: float = 60.0,
        poll_s: float = 0.2,
        options: dict[str, str] | None = None,
    ) -> None:
        if job_timeout_s <= 0 or poll_s <= 0:
            raise ValueError("job_timeout_s and poll_s must be > 0")
        _cups()  # a station without pycups fails at start-up, not at its first card
        self.queue = queue
        self.server = server
        self.job_timeout_s = job_timeout_s
        self.poll_s = poll_s
        self.options = {**DEFAULT_OPTIONS, **(options or {})}
        self.last_job_id: int | None = None
        super().__init__()

    def feed(self) -> None:
        """Check the queue can print now, then take a blank (a card inside is rejected)."""
        if self._card_present:
            self._card_out(reject=True)
        with _cups_faults(f"queue {self.queue}"):
            queue = self._queue_state(self._connect())
        if queue.stopped or not queue.accepting:
            raise DeviceFault(FaultKind.PRINT, f"queue {self.queue} {queue}", code=queue.code)
        self._take_blank()

    def print_faces(self, faces: CardFaces) -> None:
        """Print ``faces.pdf`` and wait for the job to complete (ValueError without one)."""
        self._require_card()
        if faces.pdf is None:
            raise ValueError("CupsPrinter prints the faces' PDF; render_faces writes one")
        with _cups_faults(f"queue {self.queue}"):
            conn = self._connect()
            job_id = int(conn.printFile(self.queue, str(faces.pdf), faces.pdf.stem, self.options))
            self.last_job_id = job_id
            log.info("printer.job_submitted", queue=self.queue, job_id=job_id)
            self._await_job(conn, job_id)
        self.printed += 1

    def eject(self, *, reject: bool) -> None:
        """Book the card out to the output stack or the reject bin; no card, nothing."""
        if self._card_present:
            self._card_out(reject=reject)

    def _connect(self) -> Any:
        return connect(self.server)

    def _queue_state(self, conn: Any) -> QueueState:
        attrs = conn.getPrinterAttributes(
            self.queue,
            requested_attributes=[
                "printer-state",
                "printer-state-reasons",
                "printer-state-message",
                "printer-is-accepting-jobs",
            ],
        )
        return QueueState(
            state=int(attrs.get("printer-state", 0)),
            reasons=_reasons(attrs.get("printer-state-reasons")),
            accepting=bool(attrs.get("printer-is-accepting-jobs", False)),
            message=str(attrs.get("printer-state-message") or ""),
        )

    def _await_job(self, conn: Any, job_id: int) -> None:
        deadline = time.monotonic() + self.job_timeout_s
        while True:
            attrs = conn.getJobAttributes(
                job_id,
                requested_attributes=[
                    "job-state",
                    "job-state-reasons",
                    "job-printer-state-message",
                ],
            )
            state = int(attrs.get("job-state", 0))
            reasons = _reasons(attrs.get("job-state-reasons"))
            if state == _COMPLETED:
                return
            fault = self._job_fault(job_id, state, reasons, attrs.get("job-printer-state-message"))
            if fault is None and state == _PENDING:
                fault = self._stopped_queue_fault(conn, job_id, state, reasons)
            if fault is None and time.monotonic() >= deadline:
                fault = DeviceFault(
                    FaultKind.PRINT,
                    f"job {job_id} on {self.queue} did not complete within"
                    f" {self.job_timeout_s} s (still {JOB_STATES.get(state, state)})",
                    code=f"timeout {job_code(state, reasons)}",
                )
            if fault is not None:
                if state not in _FINISHED:
                    self._cancel(conn, job_id)
                raise fault
            time.sleep(self.poll_s)

    def _job_fault(
        self, job_id: int, state: int, reasons: tuple[str, ...], message: Any
    ) -> DeviceFault | None:
        what = _JOB_FAULTS.get(state)
        if what is None:
            return None
        detail = f"job {job_id} on {self.queue} {what}" + (f": {message}" if message else "")
        return DeviceFault(FaultKind.PRINT, detail, code=job_code(state, reasons))

    def _stopped_queue_fault(
        self, conn: Any, job_id: int, state: int, reasons: tuple[str, ...]
    ) -> DeviceFault | None:
        """A pending job on a stopped queue waits for someone to start it again (CUPS 2.4
        gives the job no reason saying so): a fault now, the card will not wait."""
        queue = self._queue_state(conn)
        if not queue.stopped:
            return None
        return DeviceFault(
            FaultKind.PRINT,
            f"job {job_id} waits: queue {self.queue} {queue}",
            code=f"{job_code(state, reasons)} {queue.code}",
        )

    def _cancel(self, conn: Any, job_id: int) -> None:
        """Cancel a job given up on, so it cannot print later onto another card."""
        cups = _cups()
        try:
            conn.cancelJob(job_id)
        except (cups.IPPError, cups.HTTPError, RuntimeError) as exc:
            log.warning("printer.cancel_failed", queue=self.queue, job_id=job_id, error=str(exc))
