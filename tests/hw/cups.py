"""A private CUPS scheduler for tests, with a cups-pdf queue and a dead socket printer.

``session_cups`` starts ``cupsd -f`` on its own configuration in a fresh directory
under /tmp (``DIR``): ``DIR/cupsd.conf`` listens only on the unix socket
``DIR/cups.sock`` (no TCP port), ``DIR/cups-files.conf`` keeps the scheduler's
ServerRoot, spool, cache, state, logs and printcap in ``DIR``. The machine's own CUPS
(``/etc/cups/cupsd.conf``, ``/var/spool/cups``, ``/run/cups``) is never touched, and
``cupsctl`` is never run (it would rewrite the configuration with its defaults).

Queues, made with ``lpadmin`` against that socket (``CUPS_SERVER``):

- ``CardPrinter``: ``cups-pdf:/NAME`` with the cups-pdf PPD. The cups-pdf backend
  reads its configuration from a fixed place, ``/etc/cups/cups-pdf-NAME.conf`` for the
  device URI ``cups-pdf:/NAME`` (``/etc/cups/cups-pdf.conf`` without a name), so the
  session writes its own ``/etc/cups/cups-pdf-cardline-test-<pid>-<hex>.conf`` (``Out
  DIR/out``, ``Spool``, ``Log`` in ``DIR``, ``TitlePref 1``) and removes it at the end;
  the shared ``cups-pdf.conf`` is left alone. The backend runs as root under the
  scheduler and writes each PDF as the job's user (root here: the socket's peer) with
  mode 0600, named after the job title (``C-1-faces.pdf``). The queue renders with
  ``pdftops-renderer-default=pdftocairo``, as Debian's cups-pdf README advises: the
  Ghostscript renderer drops the text's Unicode mapping ("Zoë" comes back as "Zo").
  The pdftocairo path stores a landscape page as a portrait MediaBox with /Rotate 90.
- ``DeadPrinter``: ``socket://127.0.0.1:<closed port>/?contimeout=2`` with
  ``printer-error-policy=abort-job``, so a job for it is aborted within seconds.

Both are made with the cups-pdf PPD; CUPS 2.4 warns that PPD drivers are deprecated.
A test module uses it through a session fixture (the scheduler is shared by every
module and stopped when the last one is done)::

    @pytest.fixture(scope="session")
    def private_cups(tmp_path_factory):
        yield from session_cups(tmp_path_factory)

It needs root (the backend and ``/etc/cups``) and the Debian packages ``cups`` and
``printer-driver-cups-pdf``; without them a test is skipped, or fails under CI=true.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import pytest

from stations.printers import connect

CUPSD = "/usr/sbin/cupsd"
CUPS_PDF_BACKEND = Path("/usr/lib/cups/backend/cups-pdf")
CUPS_PDF_PPD = Path("/usr/share/ppd/cups-pdf/CUPS-PDF_noopt.ppd")
CUPS_PDF_CONF_DIR = Path("/etc/cups")  # fixed in the cups-pdf backend
INSTALL = "`make test` installs cups and printer-driver-cups-pdf (ops/system-deps.sh)"
PDF_QUEUE = "CardPrinter"
DEAD_QUEUE = "DeadPrinter"
START_S = 10.0  # cupsd answers in ~0.1 s; generous for a loaded machine


def unavailable(message: str) -> NoReturn:
    """Skip (locally) or fail (CI=true): CI must never pass by skipping."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def require_poppler() -> None:
    """pdfinfo and pdftotext (poppler-utils) read the PDFs back, independently of us."""
    missing = [tool for tool in ("pdfinfo", "pdftotext") if shutil.which(tool) is None]
    if missing:
        unavailable(f"{', '.join(missing)} missing: apt-get install poppler-utils")


MM_PER_PT = 25.4 / 72


@dataclass(frozen=True)
class PdfPage:
    """One page as poppler's ``pdfinfo -box`` reports it."""

    media_box: tuple[float, float, float, float]  # points
    rotate: int

    @property
    def size_mm(self) -> tuple[float, float]:
        """Width and height of the page as displayed (the MediaBox turned by /Rotate)."""
        x0, y0, x1, y1 = self.media_box
        w, h = abs(x1 - x0) * MM_PER_PT, abs(y1 - y0) * MM_PER_PT
        return (h, w) if self.rotate % 180 == 90 else (w, h)


def pdf_pages(path: Path) -> list[PdfPage]:
    """Every page's MediaBox and rotation, read by ``pdfinfo`` (not by our own code)."""
    require_poppler()
    info = subprocess.run(
        ["pdfinfo", "-box", "-f", "1", "-l", "9999", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    boxes: dict[int, tuple[float, float, float, float]] = {}
    rotations: dict[int, int] = {}
    for line in info.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[0] == "Page" and parts[1].isdigit():
            page = int(parts[1])
            if parts[2] == "MediaBox:":
                x0, y0, x1, y1 = (float(v) for v in parts[3:7])
                boxes[page] = (x0, y0, x1, y1)
            elif parts[2] == "rot:":
                rotations[page] = int(parts[3])
    return [PdfPage(boxes[n], rotations.get(n, 0)) for n in sorted(boxes)]


def pdf_text(path: Path, *, page: int | None = None) -> str:
    """The text ``pdftotext`` extracts (all pages, or one), lines joined by newlines."""
    require_poppler()
    pages = ["-f", str(page), "-l", str(page)] if page is not None else []
    return subprocess.run(
        ["pdftotext", "-enc", "UTF-8", *pages, str(path), "-"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def _require_stack() -> None:
    tools = ("lpadmin", "cupsdisable", "cupsenable", "cupsaccept", "cupsreject")
    missing = [str(p) for p in (Path(CUPSD), CUPS_PDF_BACKEND, CUPS_PDF_PPD) if not p.exists()]
    missing += [t for t in tools if _which(t) is None]
    if missing:
        unavailable(f"CUPS or cups-pdf missing ({', '.join(missing)}): {INSTALL}")
    if os.geteuid() != 0:
        unavailable("the private CUPS needs root: cups-pdf runs as root and reads /etc/cups")


def _which(tool: str) -> str | None:
    return shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")


def _closed_port() -> int:
    """A localhost TCP port nothing listens on (it was free a moment ago)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PrivateCups:
    """A running private scheduler; ``socket`` is what ``CupsPrinter(server=...)`` takes."""

    root: Path
    pdf_conf: Path
    out_dir: Path
    dead_port: int
    proc: subprocess.Popen[bytes] | None = None
    users: int = 0
    pdf_queue: str = PDF_QUEUE
    dead_queue: str = DEAD_QUEUE
    env: dict[str, str] = field(default_factory=dict)

    @property
    def socket(self) -> str:
        return str(self.root / "cups.sock")

    @property
    def error_log(self) -> Path:
        return self.root / "log" / "error_log"

    def admin(self, tool: str, *args: str) -> None:
        """Run a CUPS admin tool (lpadmin, cupsdisable, ...) against this scheduler."""
        binary = _which(tool)
        assert binary is not None, tool
        done = subprocess.run(
            [binary, *args], env=self.env, capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)} failed: {done.stderr.strip()}")

    def disable(self, queue: str, reason: str = "stopped by a test") -> None:
        """Stop the queue (``cupsdisable``): it keeps accepting jobs but prints none."""
        self.admin("cupsdisable", "-r", reason, queue)

    def enable(self, queue: str) -> None:
        self.admin("cupsenable", queue)

    def reject(self, queue: str) -> None:
        """Make the queue refuse new jobs (``cupsreject``)."""
        self.admin("cupsreject", queue)

    def accept(self, queue: str) -> None:
        self.admin("cupsaccept", queue)

    def job(self, job_id: int) -> dict[str, Any]:
        """The job's attributes, read over a connection of its own."""
        attrs: dict[str, Any] = connect(self.socket).getJobAttributes(job_id)
        return attrs

    def output(self, title: str) -> Path:
        """Where cups-pdf puts the PDF of the job titled ``title``."""
        return self.out_dir / f"{title}.pdf"

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.error_log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no error_log)"

    # --- start and stop ------------------------------------------------------------

    def start(self) -> None:
        for sub in ("log", "spool/tmp", "cache", "state", "out", "cups-pdf-spool"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        # Filters run as lp, the backend as root: the out dir is the job user's to write.
        self.out_dir.chmod(0o755)
        self._write_configs()
        log = (self.root / "log" / "cupsd.out").open("wb")
        self.proc = subprocess.Popen(
            [
                CUPSD,
                "-f",
                "-c",
                str(self.root / "cupsd.conf"),
                "-s",
                str(self.root / "cups-files.conf"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self._wait_ready()
        self._add_queues()

    def stop(self) -> None:
        """Stop our cupsd (by its PID) and remove the cups-pdf configuration we wrote."""
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        finally:
            self.pdf_conf.unlink(missing_ok=True)
            shutil.rmtree(self.root, ignore_errors=True)

    def _write_configs(self) -> None:
        root = self.root
        (root / "cupsd.conf").write_text(
            f"""Listen {self.socket}
LogLevel debug
MaxLogSize 0
ErrorPolicy abort-job
WebInterface No
Browsing No
BrowseLocalProtocols none
DefaultAuthType None
<Location />
  Order allow,deny
  Allow all
</Location>
<Policy default>
  JobPrivateAccess all
  JobPrivateValues none
  SubscriptionPrivateAccess all
  SubscriptionPrivateValues none
  <Limit All>
    Order deny,allow
    Allow all
  </Limit>
</Policy>
"""
        )
        (root / "cups-files.conf").write_text(
            f"""ServerRoot {root}
RequestRoot {root}/spool
TempDir {root}/spool/tmp
CacheDir {root}/cache
StateDir {root}/state
ErrorLog {root}/log/error_log
AccessLog {root}/log/access_log
PageLog {root}/log/page_log
Printcap {root}/printcap
SystemGroup root
"""
        )
        # Read by the cups-pdf backend for the device URI cups-pdf:/<name>.
        self.pdf_conf.write_text(
            f"""Out {self.out_dir}
Spool {root}/cups-pdf-spool
Log {root}/log
TitlePref 1
Label 0
"""
        )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                break
            if Path(self.socket).exists():
                try:
                    connect(self.socket).getPrinters()
                    return
                except RuntimeError:  # pycups: "failed to connect to server"
                    pass
            time.sleep(0.02)
        raise RuntimeError(f"private cupsd did not start:\n{self.log_tail()}")

    def _add_queues(self) -> None:
        name = self.pdf_conf.name.removeprefix("cups-pdf-").removesuffix(".conf")
        common = ["-E", "-P", str(CUPS_PDF_PPD), "-o", "printer-error-policy=abort-job"]
        self.admin(
            "lpadmin",
            *("-p", self.pdf_queue, "-v", f"cups-pdf:/{name}", *common),
            *("-o", "pdftops-renderer-default=pdftocairo"),
        )
        dead_uri = f"socket://127.0.0.1:{self.dead_port}/?contimeout=2"
        self.admin("lpadmin", "-p", self.dead_queue, "-v", dead_uri, *common)


_shared: PrivateCups | None = None


def _remove_stale_confs() -> None:
    """Remove the cups-pdf configurations of earlier sessions that were killed."""
    for conf in CUPS_PDF_CONF_DIR.glob("cups-pdf-cardline-test-*-*.conf"):
        pid = conf.name.split("-")[4]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            conf.unlink(missing_ok=True)


def session_cups(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateCups]:
    """The private scheduler (see the module docstring): a generator for a session fixture.

    ``tmp_path_factory`` is not used for the scheduler's directory: filters run as the
    ``lp`` user and cannot enter pytest's private temporary tree, and the socket path
    must stay short (a unix socket path has at most 107 bytes).
    """
    global _shared
    del tmp_path_factory
    if _shared is None:
        _require_stack()
        _remove_stale_confs()
        root = Path(tempfile.mkdtemp(prefix="cardline-cups-", dir="/tmp"))
        root.chmod(0o755)
        name = f"cardline-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        stack = PrivateCups(
            root=root,
            pdf_conf=CUPS_PDF_CONF_DIR / f"cups-pdf-{name}.conf",
            out_dir=root / "out",
            dead_port=_closed_port(),
            env={**os.environ, "CUPS_SERVER": str(root / "cups.sock")},
        )
        try:
            stack.start()
        except BaseException:
            stack.stop()
            raise
        _shared = stack
    stack = _shared
    stack.users += 1
    try:
        yield stack
    finally:
        stack.users -= 1
        if stack.users == 0:
            stack.stop()
            _shared = None
