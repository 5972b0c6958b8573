"""PIN letters: the A4 mailer that tells a card holder the PIN of a new card.

The PIN exists in the PDF and nowhere else this module writes: never in a log event,
an exception, the file name or the PDF metadata. The letter is written with page
compression off, so its text can be checked without a PDF library, and in reportlab's
invariant mode, so the same input gives the same bytes.
"""

from __future__ import annotations

import datetime
import io
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

import structlog
from reportlab.lib.colors import Color, HexColor
from reportlab.lib.pagesizes import A4
from reportlab.lib.units import mm
from reportlab.lib.utils import simpleSplit
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFError, TTFont
from reportlab.pdfgen.canvas import Canvas

from db.files import atomic_write
from db.secrets import Secret
from schemas.card_numbers import mask_card_number

__all__ = ["mask_card_number", "write_pin_letter"]

log = structlog.get_logger(__name__)

PAGE_W, PAGE_H = A4
LEFT = 20 * mm
RIGHT = PAGE_W - 20 * mm
TEXT_W = RIGHT - LEFT

NAVY = HexColor("#16325C")
GREY = HexColor("#5C636E")
PIN_FILL = HexColor("#EEF1F6")

GUIDANCE = (
    "Change this PIN the first time you use the card.",
    "Never write the PIN on the card and never keep this letter with the card.",
    "Nobody, including the help desk, will ever ask you for your PIN.",
    "If this envelope was already opened or damaged when it reached you, do not use "
    "the PIN: contact your help desk at once so the card can be blocked.",
    "After three wrong PINs the card locks itself; the help desk can unblock it.",
)


@lru_cache(maxsize=1)
def _fonts() -> tuple[str, str]:
    """(regular, bold) font names: DejaVu Sans when installed, which also covers names
    such as "Łódź" that the standard PDF fonts cannot show, else Helvetica."""
    try:
        pdfmetrics.registerFont(TTFont("CardlineSans", "DejaVuSans.ttf"))
        pdfmetrics.registerFont(TTFont("CardlineSans-Bold", "DejaVuSans-Bold.ttf"))
    except (TTFError, OSError):
        return "Helvetica", "Helvetica-Bold"
    return "CardlineSans", "CardlineSans-Bold"


def _lines(
    c: Canvas,
    x: float,
    y: float,
    lines: Iterable[str],
    *,
    size: float,
    bold: bool = False,
    color: Color = NAVY,
    leading: float | None = None,
) -> float:
    """Draw ``lines`` downwards from baseline ``y``; return the baseline after the last."""
    regular, heavy = _fonts()
    c.setFont(heavy if bold else regular, size)
    c.setFillColor(color)
    step = leading or size * 1.35
    for line in lines:
        c.drawString(x, y, line)
        y -= step
    return y


def _paragraph(
    c: Canvas, y: float, text: str, *, size: float = 10.5, x: float = LEFT, width: float = TEXT_W
) -> float:
    """Draw ``text`` wrapped to ``width``; return the baseline for what follows."""
    regular, _ = _fonts()
    wrapped = simpleSplit(text, regular, size, width)
    return _lines(c, x, y, wrapped, size=size, color=HexColor("#191C21")) - size * 0.6


def _letterhead(c: Canvas, issuer: str, organization: str) -> None:
    c.setFillColor(NAVY)
    c.rect(0, PAGE_H - 12 * mm, PAGE_W, 12 * mm, stroke=0, fill=1)
    _lines(c, LEFT, PAGE_H - 27 * mm, [issuer], size=20, bold=True)
    _lines(c, LEFT, PAGE_H - 33 * mm, ["Card Services"], size=10, color=GREY)
    sender = [f"{issuer} Card Services", "Smart card production", f"on behalf of {organization}"]
    x = 125 * mm
    _lines(c, x, PAGE_H - 24 * mm, sender, size=8.5, color=GREY, leading=11.5)


def _recipient(
    c: Canvas, issuer: str, holder_name: str, organization: str, org_unit: str | None
) -> None:
    """The address block, placed for the window of a DL envelope (DIN 5008 form B)."""
    top = PAGE_H - 50 * mm
    _lines(c, LEFT, top, [f"{issuer} Card Services · {organization}"], size=7, color=GREY)
    c.setStrokeColor(GREY)
    c.setLineWidth(0.4)
    c.line(LEFT, top - 1.5 * mm, LEFT + 85 * mm, top - 1.5 * mm)
    _lines(c, LEFT, top - 7 * mm, ["PERSONAL AND CONFIDENTIAL"], size=8, bold=True)
    address = [holder_name, organization, *([org_unit] if org_unit else [])]
    fitted = [ln for line in address for ln in simpleSplit(line, _fonts()[0], 11, 85 * mm)]
    _lines(c, LEFT, top - 14 * mm, fitted, size=11, color=HexColor("#191C21"))


def _pin_box(c: Canvas, y: float, pin: Secret, masked_card: str) -> float:
    """The PIN in a framed box; return the baseline below it."""
    height, width = 30 * mm, 95 * mm
    bottom = y - height
    c.setFillColor(PIN_FILL)
    c.setStrokeColor(NAVY)
    c.setLineWidth(1.6)
    c.roundRect(LEFT, bottom, width, height, 3 * mm, stroke=1, fill=1)
    _lines(c, LEFT + 6 * mm, y - 7 * mm, ["YOUR PIN"], size=9, bold=True)
    c.setFont("Courier-Bold", 26)
    c.setFillColor(NAVY)
    # Spaced digits are easier to read off and to type in correctly.
    c.drawString(LEFT + 6 * mm, bottom + 8 * mm, " ".join(pin.reveal()))
    side = LEFT + width + 8 * mm
    _lines(c, side, y - 10 * mm, ["Card number"], size=9, color=GREY)
    _lines(c, side, y - 16 * mm, [masked_card], size=12, bold=True)
    return bottom - 10 * mm


def _guidance(c: Canvas, y: float) -> float:
    y = _lines(c, LEFT, y, ["Please note"], size=11, bold=True) - 1 * mm
    for item in GUIDANCE:
        _lines(c, LEFT + 2 * mm, y, ["•"], size=10.5)
        y = _paragraph(c, y, item, x=LEFT + 7 * mm, width=TEXT_W - 7 * mm) + 1 * mm
    return y - 3 * mm


def _footer(c: Canvas) -> None:
    note = (
        "This letter was produced automatically and is valid without a signature. "
        "It does not contain your PUK."
    )
    _lines(c, LEFT, 18 * mm, simpleSplit(note, _fonts()[0], 7.5, TEXT_W), size=7.5, color=GREY)


def _render(
    *,
    holder_name: str,
    organization: str,
    org_unit: str | None,
    card_number: str,
    pin: Secret,
    valid_until: datetime.date,
    issuer: str,
    letter_date: datetime.date,
) -> bytes:
    masked = mask_card_number(card_number)
    buffer = io.BytesIO()
    c = Canvas(buffer, pagesize=A4, invariant=1, pageCompression=0)
    c.setTitle("Your smart card PIN")
    c.setAuthor(f"{issuer} Card Services")
    c.setSubject(f"PIN letter for card {masked}")
    _letterhead(c, issuer, organization)
    _recipient(c, issuer, holder_name, organization, org_unit)
    regular, _ = _fonts()
    c.setFont(regular, 10.5)
    c.setFillColor(HexColor("#191C21"))
    c.drawRightString(RIGHT, PAGE_H - 98 * mm, f"Date: {letter_date.isoformat()}")
    y = _lines(c, LEFT, PAGE_H - 110 * mm, ["Your smart card PIN"], size=14, bold=True) - 4 * mm
    y = _paragraph(c, y, f"Dear {holder_name},")
    intro = (
        f"Your new smart card {masked}, valid until {valid_until.isoformat()}, has been "
        "produced and reaches you separately. To use it you need the personal "
        "identification number (PIN) below. Keep it secret."
    )
    y = _paragraph(c, y, intro) - 2 * mm
    y = _pin_box(c, y, pin, masked)
    y = _guidance(c, y)
    y = _paragraph(c, y - 2 * mm, "Kind regards,")
    _paragraph(c, y, f"{issuer} Card Services")
    _footer(c)
    c.showPage()
    c.save()
    return buffer.getvalue()


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600; readers see the old file or the new one."""
    atomic_write(path, data, mode=0o600)


def write_pin_letter(
    path: Path,
    *,
    holder_name: str,
    organization: str,
    org_unit: str | None,
    card_number: str,
    pin: Secret,
    valid_until: datetime.date,
    issuer: str = "Cardline",
    letter_date: datetime.date | None = None,
) -> Path:
    """Write the A4 PIN letter for one card to ``path`` (mode 0600, atomically) and
    return ``path``. The card number is shown masked but for its last four characters;
    the PUK is never part of the letter. ``letter_date`` defaults to today."""
    data = _render(
        holder_name=holder_name,
        organization=organization,
        org_unit=org_unit,
        card_number=card_number,
        pin=pin,
        valid_until=valid_until,
        issuer=issuer,
        letter_date=letter_date or datetime.date.today(),
    )
    _write_private(path, data)
    # The letter's file is named after the full card number: the log names its folder.
    masked = mask_card_number(card_number)
    log.info("pin_letter.written", card=masked, letters_dir=str(path.parent))
    return path
