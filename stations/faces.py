"""Card faces: the front and back a station prints, as two PNGs and as one PDF.

The PNGs (Pillow) are CR80 (85.6 x 54 mm) at 300 dpi; the PDF (reportlab) has two
pages of exactly CR80 with the same layout in vector text and shapes, which is what a
CUPS printer is sent. Both take their layout from the same pixel coordinates, and the
PDF takes its line breaks from the same fitting, so the two never disagree. The front
leaves the ISO/IEC 7816-2 contact area unprinted, because a retransfer printer must not
print over the chip. A system font with wide coverage (DejaVu Sans) is used when
installed; otherwise Pillow's built-in font and the PDF's Helvetica, which cover less.
"""

from __future__ import annotations

import datetime
import io
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import structlog
from PIL import Image, ImageDraw, ImageFont, ImageOps
from reportlab.lib.utils import ImageReader
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.pdfgen.canvas import Canvas

from db.files import atomic_open, atomic_write
from stations.drivers import CardFaces

log = structlog.get_logger(__name__)

DPI = 300
CARD_SIZE = (1012, 638)  # 85.6 x 54 mm at 300 dpi
_PX_PER_MM = DPI / 25.4

NAVY = (22, 50, 92)
GOLD = (200, 162, 74)
INK = (25, 28, 33)
GREY = (92, 99, 110)
LIGHT = (231, 235, 241)
WHITE = (255, 255, 255)

_MARGIN = 40
_BAND_H = 112
# The contacts of a contact chip (ISO/IEC 7816-2), with a margin for the module.
_CHIP_BOX = tuple(round(mm * _PX_PER_MM) for mm in (8.5, 17.0, 22.5, 30.5))
_PHOTO_BOX = (752, 148, 972, 441)  # 3:4 portrait
_TEXT_LEFT = _CHIP_BOX[2] + 30
_TEXT_RIGHT = _PHOTO_BOX[0] - 30

_CARD_NUMBER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

Font = ImageFont.FreeTypeFont


# Pillow's built-in font covers ASCII only, so "Müller" would print with boxes. A system
# font with wider coverage (accented Latin, Greek, Cyrillic) is used when one is installed.
_SYSTEM_FONTS: dict[bool, tuple[str, ...]] = {
    False: ("DejaVuSans.ttf", "LiberationSans-Regular.ttf", "NotoSans-Regular.ttf"),
    True: ("DejaVuSans-Bold.ttf", "LiberationSans-Bold.ttf", "NotoSans-Bold.ttf"),
}


@lru_cache(maxsize=2)
def _system_font(bold: bool) -> str | None:
    """The path of the first installed font of ``_SYSTEM_FONTS[bold]``, or None."""
    for name in _SYSTEM_FONTS[bold]:
        try:
            path = ImageFont.truetype(name, 10).path
        except OSError:
            continue
        if isinstance(path, str):
            return path
    return None


@lru_cache(maxsize=128)
def _font(size: int, bold: bool = False) -> Font:
    path = _system_font(bold)
    if path is not None:
        return ImageFont.truetype(path, size)
    font = ImageFont.load_default(size=size)
    if not isinstance(font, ImageFont.FreeTypeFont):  # Pillow built without FreeType
        raise RuntimeError("Pillow needs FreeType support to render card faces")
    return font


def _fake_bold(bold: bool) -> int:
    """Stroke width that stands in for a bold face when no bold font is installed."""
    return 1 if bold and _system_font(True) is None else 0


def _pieces(text: str) -> list[tuple[str, str]]:
    """(separator, piece) pairs; hyphenated words break after the hyphen, as names do."""
    pieces: list[tuple[str, str]] = []
    for word in text.split():
        parts = re.findall(r"[^-]+-*|-+", word)
        pieces += [(" " if i == 0 else "", part) for i, part in enumerate(parts)]
    return pieces


def _wrap(text: str, font: Font, width: int) -> list[str]:
    """Greedy wrap at spaces and after hyphens; a piece wider than ``width`` gets its own line."""
    lines: list[str] = []
    for sep, piece in _pieces(text):
        candidate = f"{lines[-1]}{sep}{piece}" if lines else piece
        if lines and font.getlength(candidate) <= width:
            lines[-1] = candidate
        else:
            lines.append(piece)
    return lines


def _ellipsize(line: str, font: Font, width: int) -> str:
    while line and font.getlength(line + "…") > width:
        line = line[:-1]
    return line.rstrip() + "…"


def _line_height(font: Font) -> int:
    return round(font.size * 1.18)


def _lines_allowed(font: Font, max_lines: int, max_height: int | None) -> int:
    if max_height is None:
        return max_lines
    return max(1, min(max_lines, max_height // _line_height(font)))


def fit_text(
    text: str,
    width: int,
    *,
    size: int,
    min_size: int,
    max_lines: int,
    max_height: int | None = None,
    bold: bool = False,
) -> tuple[Font, list[str]]:
    """The largest font from ``size`` down to ``min_size`` at which ``text`` wraps into
    lines of at most ``width`` px, no more than ``max_lines`` of them and no taller than
    ``max_height`` px together. What still does not fit at ``min_size`` is cut with an
    ellipsis, so the result always fits."""
    for candidate in range(size, min_size - 1, -2):
        font = _font(candidate, bold)
        lines = _wrap(text, font, width)
        allowed = _lines_allowed(font, max_lines, max_height)
        if len(lines) <= allowed and all(font.getlength(ln) <= width for ln in lines):
            return font, lines
    font = _font(min_size, bold)
    return font, _cut(
        _wrap(text, font, width), font, width, _lines_allowed(font, max_lines, max_height)
    )


def _cut(lines: list[str], font: Font, width: int, allowed: int) -> list[str]:
    """``lines`` cut to ``allowed`` lines of ``width`` px, an ellipsis marking each cut."""
    kept = lines[:allowed] or [""]
    fitted = [ln if font.getlength(ln) <= width else _ellipsize(ln, font, width) for ln in kept]
    if len(lines) > allowed and not fitted[-1].endswith("…"):
        fitted[-1] = _ellipsize(fitted[-1] + " ", font, width)
    return fitted


def _draw_block(
    draw: ImageDraw.ImageDraw,
    xy: tuple[int, int],
    text: str,
    *,
    width: int,
    size: int,
    min_size: int,
    max_lines: int = 1,
    max_height: int | None = None,
    fill: tuple[int, int, int] = INK,
    bold: bool = False,
) -> int:
    """Draw fitted text with its top-left at ``xy``; return the y just below it."""
    font, lines = fit_text(
        text,
        width,
        size=size,
        min_size=min_size,
        max_lines=max_lines,
        max_height=max_height,
        bold=bold,
    )
    stroke = _fake_bold(bold)
    x, y = xy
    line_h = _line_height(font)
    for line in lines:
        draw.text((x, y), line, font=font, fill=fill, stroke_width=stroke, stroke_fill=fill)
        y += line_h
    return y


def initials(name: str) -> str:
    """Up to two initials: the first letters of the first and the last word."""
    words = [w for w in name.split() if w[0].isalpha()]
    if not words:
        return "?"
    picked = [words[0]] if len(words) == 1 else [words[0], words[-1]]
    return "".join(w[0].upper() for w in picked)


def _load_photo(path: Path | None, size: tuple[int, int]) -> Image.Image | None:
    """The photo cropped to fill ``size`` (faces sit high in the frame), or None if unusable."""
    if path is None:
        return None
    try:
        with Image.open(path) as raw:
            upright = ImageOps.exif_transpose(raw).convert("RGBA")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        log.warning("faces.photo_unreadable", photo=str(path), error=type(exc).__name__)
        return None
    # Transparent areas become white card, not black.
    flat = Image.new("RGBA", upright.size, WHITE)
    flat.alpha_composite(upright)
    fitted = ImageOps.fit(flat.convert("RGB"), size, Image.Resampling.LANCZOS, centering=(0.5, 0.4))
    return fitted


def _placeholder(size: tuple[int, int], name: str) -> Image.Image:
    """A neutral head-and-shoulders silhouette with the holder's initials."""
    w, h = size
    img = Image.new("RGB", size, LIGHT)
    draw = ImageDraw.Draw(img)
    shade = (190, 198, 210)
    draw.ellipse((w * 0.30, h * 0.16, w * 0.70, h * 0.46), fill=shade)
    draw.ellipse((w * 0.10, h * 0.52, w * 0.90, h * 1.20), fill=shade)
    draw.text((w / 2, h * 0.80), initials(name), font=_font(64), fill=WHITE, anchor="mm")
    return img


def _photo_size() -> tuple[int, int]:
    left, top, right, bottom = _PHOTO_BOX
    return (right - left, bottom - top)


def _paste_photo(card: Image.Image, photo: Image.Image | None, name: str) -> None:
    left, top, _, _ = _PHOTO_BOX
    card.paste(photo or _placeholder(_photo_size(), name), (left, top))
    ImageDraw.Draw(card).rectangle(_PHOTO_BOX, outline=GREY, width=2)


def _issuer_band(draw: ImageDraw.ImageDraw, issuer: str, caption: str) -> None:
    w = CARD_SIZE[0]
    draw.rectangle((0, 0, w, _BAND_H), fill=NAVY)
    draw.rectangle((0, _BAND_H, w, _BAND_H + 8), fill=GOLD)
    _draw_block(draw, (_MARGIN, 30), issuer, width=560, size=48, min_size=28, fill=WHITE, bold=True)
    draw.text((w - _MARGIN, _BAND_H // 2), caption, font=_font(26), fill=GOLD, anchor="rm")


def _front(
    *,
    card_number: str,
    holder_name: str,
    organization: str,
    org_unit: str | None,
    title: str | None,
    valid_until: datetime.date,
    photo: Image.Image | None,
    issuer: str,
) -> Image.Image:
    card = Image.new("RGB", CARD_SIZE, WHITE)
    draw = ImageDraw.Draw(card)
    _issuer_band(draw, issuer, "IDENTITY CARD")
    _paste_photo(card, photo, holder_name)
    width = _TEXT_RIGHT - _TEXT_LEFT
    y = _draw_block(
        draw,
        (_TEXT_LEFT, 160),
        holder_name,
        width=width,
        size=56,
        min_size=28,
        max_lines=3,
        max_height=140,
        bold=True,
    )
    if title:
        _draw_block(draw, (_TEXT_LEFT, y + 8), title, width=width, size=32, min_size=22, fill=GREY)
    org_width = _TEXT_RIGHT - _MARGIN
    y = _draw_block(
        draw, (_MARGIN, 395), organization, width=org_width, size=36, min_size=24, bold=True
    )
    if org_unit:
        _draw_block(
            draw, (_MARGIN, y + 2), org_unit, width=org_width, size=30, min_size=22, fill=GREY
        )
    _footer(draw, card_number, valid_until)
    return card


def _footer(draw: ImageDraw.ImageDraw, card_number: str, valid_until: datetime.date) -> None:
    w, h = CARD_SIZE
    draw.line((_MARGIN, h - 100, w - _MARGIN, h - 100), fill=LIGHT, width=3)
    small, value = _font(22), _font(34)
    draw.text((_MARGIN, h - 82), "CARD NO.", font=small, fill=GREY)
    _draw_block(draw, (_MARGIN, h - 56), card_number, width=520, size=34, min_size=20)
    draw.text((w - _MARGIN, h - 82), "VALID UNTIL", font=small, fill=GREY, anchor="ra")
    draw.text((w - _MARGIN, h - 56), valid_until.isoformat(), font=value, fill=INK, anchor="ra")


def _back(
    *, card_number: str, organization: str, valid_until: datetime.date, issuer: str
) -> Image.Image:
    w, h = CARD_SIZE
    card = Image.new("RGB", CARD_SIZE, WHITE)
    draw = ImageDraw.Draw(card)
    draw.rectangle((0, 0, w, 24), fill=NAVY)
    width = w - 2 * _MARGIN
    y = _draw_block(
        draw,
        (_MARGIN, 60),
        f"If found, return to {organization}",
        width=width,
        size=38,
        min_size=24,
        max_lines=2,
        bold=True,
    )
    notice = (
        f"This card remains the property of {organization}. It is personal and must not be "
        "lent to anyone. Report a lost or stolen card to your help desk at once."
    )
    _draw_block(
        draw, (_MARGIN, y + 10), notice, width=width, size=26, min_size=18, max_lines=3, fill=GREY
    )
    _chip_hint(draw, (_MARGIN, 330))
    _footer(draw, card_number, valid_until)
    draw.text((w - _MARGIN, h - 130), f"Issued by {issuer}", font=_font(22), fill=GREY, anchor="rs")
    return card


def _chip_hint(draw: ImageDraw.ImageDraw, xy: tuple[int, int]) -> None:
    """A small chip pictogram and how to insert the card."""
    x, y = xy
    draw.rounded_rectangle(
        (x, y, x + 84, y + 70), radius=10, fill=GOLD, outline=(150, 118, 50), width=2
    )
    for dy in (23, 47):
        draw.line((x, y + dy, x + 84, y + dy), fill=(150, 118, 50), width=2)
    draw.line((x + 42, y, x + 42, y + 70), fill=(150, 118, 50), width=2)
    hint = "Insert into the reader chip first, with the chip (front side) facing up."
    _draw_block(
        draw,
        (x + 110, y + 6),
        hint,
        width=CARD_SIZE[0] - x - 110 - _MARGIN,
        size=26,
        min_size=18,
        max_lines=2,
        fill=INK,
    )


def _save_png(image: Image.Image, path: Path) -> None:
    """Write ``image`` to ``path`` at 300 dpi; readers see the old file or the new one."""
    with atomic_open(path) as fh:
        # Light compression: a face is written once per card, on the hot path of the
        # line; level 1 is several times faster than the default and only ~20% larger.
        image.save(fh, format="PNG", dpi=(DPI, DPI), compress_level=1)


def render_faces(
    out_dir: Path,
    *,
    card_number: str,
    holder_name: str,
    organization: str,
    org_unit: str | None,
    title: str | None,
    valid_until: datetime.date,
    photo_path: Path | None,
    issuer: str = "Cardline",
) -> CardFaces:
    """Render ``<card_number>-front.png``, ``<card_number>-back.png`` and
    ``<card_number>-faces.pdf`` (front page, then back page) into ``out_dir``.

    Re-rendering overwrites all three; each is written atomically. Long names shrink,
    then wrap, then are cut with an ellipsis. A missing or unreadable photo gives a
    silhouette with initials. ``card_number`` must be a plain file-name-safe token
    (letters, digits, ``.``, ``_``, ``-``), else ValueError.
    """
    if not _CARD_NUMBER.fullmatch(card_number):
        raise ValueError(f"card number {card_number!r} is not usable in a file name")
    out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    content = _Content(
        card_number=card_number,
        holder_name=holder_name,
        organization=organization,
        org_unit=org_unit,
        title=title,
        valid_until=valid_until,
        issuer=issuer,
    )
    photo = _load_photo(photo_path, _photo_size())
    front = _front(
        card_number=card_number,
        holder_name=holder_name,
        organization=organization,
        org_unit=org_unit,
        title=title,
        valid_until=valid_until,
        photo=photo,
        issuer=issuer,
    )
    back = _back(
        card_number=card_number, organization=organization, valid_until=valid_until, issuer=issuer
    )
    pdf = out_dir / f"{card_number}-faces.pdf"
    faces = CardFaces(
        front=out_dir / f"{card_number}-front.png",
        back=out_dir / f"{card_number}-back.png",
        pdf=pdf,
    )
    _save_png(front, faces.front)
    _save_png(back, faces.back)
    atomic_write(pdf, _faces_pdf(content, photo))
    return faces


# --- The PDF: the same layout, drawn with reportlab in points -------------------------

CR80_PT = (85.6 / 25.4 * 72, 54.0 / 25.4 * 72)  # 242.65 x 153.07 pt
_SX = CR80_PT[0] / CARD_SIZE[0]  # points per layout pixel, across
_SY = CR80_PT[1] / CARD_SIZE[1]  # and down (the PNG rounds CR80 to whole pixels)
_PT_PER_PX = 72 / DPI  # font sizes and line widths

_Colour = tuple[int, int, int]


@dataclass(frozen=True)
class _Content:
    card_number: str
    holder_name: str
    organization: str
    org_unit: str | None
    title: str | None
    valid_until: datetime.date
    issuer: str


@lru_cache(maxsize=2)
def _pdf_font(bold: bool) -> str:
    """The reportlab name of the TrueType font the PNGs use, registered once; Helvetica
    (Latin-1 only) with a warning when no system font is installed."""
    path = _system_font(bold) or _system_font(False)
    if path is None:
        log.warning("faces.pdf_font_missing", fallback="Helvetica", wanted="DejaVu Sans")
        return "Helvetica-Bold" if bold else "Helvetica"
    name = f"Cardline-{Path(path).stem}"
    if name not in pdfmetrics.getRegisteredFontNames():
        pdfmetrics.registerFont(TTFont(name, path))
    return name


class _Page:
    """A reportlab canvas page addressed in the PNG layout's pixels (origin top left).

    Text positions take Pillow's anchors (``la``, ``ra``, ``rs``, ``rm``, ``mm``) so each
    PDF call mirrors a Pillow call of the PNG layout.
    """

    def __init__(self, pdf: Canvas) -> None:
        self.pdf = pdf

    @staticmethod
    def x(px: float) -> float:
        return px * _SX

    @staticmethod
    def y(px: float) -> float:
        return CR80_PT[1] - px * _SY

    def fill(self, colour: _Colour) -> None:
        self.pdf.setFillColorRGB(*(c / 255 for c in colour))

    def stroke(self, colour: _Colour, width_px: float) -> None:
        self.pdf.setStrokeColorRGB(*(c / 255 for c in colour))
        self.pdf.setLineWidth(width_px * _PT_PER_PX)

    def rect(self, box: tuple[float, float, float, float], colour: _Colour) -> None:
        left, top, right, bottom = box
        self.fill(colour)
        self.pdf.rect(
            self.x(left),
            self.y(bottom),
            (right - left) * _SX,
            (bottom - top) * _SY,
            stroke=0,
            fill=1,
        )

    def line(
        self, box: tuple[float, float, float, float], colour: _Colour, width_px: float
    ) -> None:
        self.stroke(colour, width_px)
        x1, y1, x2, y2 = box
        self.pdf.line(self.x(x1), self.y(y1), self.x(x2), self.y(y2))

    def text(
        self,
        xy: tuple[float, float],
        text: str,
        *,
        size_px: int,
        colour: _Colour,
        anchor: str = "la",
        bold: bool = False,
        width_px: float | None = None,
    ) -> None:
        """Draw one line; with ``width_px`` it is shrunk, never cut, to fit that width."""
        font = _pdf_font(bold)
        size = size_px * _PT_PER_PX
        if width_px is not None:
            natural = pdfmetrics.stringWidth(text, font, size)
            if natural > width_px * _SX:  # metrics of the PDF font may differ a little
                size *= width_px * _SX / natural
        # Pillow's anchors use the font's ascender and descender (hhea), reportlab's
        # getAscent the typographic ones; Pillow's are taken so the lines sit alike.
        ascent_px, descent_px = _font(size_px, bold).getmetrics()
        shrink = size / (size_px * _PT_PER_PX)
        x, top = xy
        baseline = (
            top
            + shrink
            * {
                "a": ascent_px,
                "s": 0,
                "m": (ascent_px - descent_px) / 2,
            }[anchor[1]]
        )
        self.fill(colour)
        self.pdf.setFont(font, size)
        draw = {
            "l": self.pdf.drawString,
            "r": self.pdf.drawRightString,
            "m": self.pdf.drawCentredString,
        }[anchor[0]]
        draw(self.x(x), self.y(baseline), text)

    def block(
        self,
        xy: tuple[int, int],
        text: str,
        *,
        width: int,
        size: int,
        min_size: int,
        max_lines: int = 1,
        max_height: int | None = None,
        fill: _Colour = INK,
        bold: bool = False,
    ) -> int:
        """``_draw_block`` in the PDF: the same fitting, so the same lines at the same y."""
        font, lines = fit_text(
            text,
            width,
            size=size,
            min_size=min_size,
            max_lines=max_lines,
            max_height=max_height,
            bold=bold,
        )
        x, y = xy
        for line in lines:
            self.text(
                (x, y), line, size_px=round(font.size), colour=fill, bold=bold, width_px=width
            )
            y += _line_height(font)
        return y


def _pdf_issuer_band(page: _Page, issuer: str, caption: str) -> None:
    w = CARD_SIZE[0]
    page.rect((0, 0, w, _BAND_H), NAVY)
    page.rect((0, _BAND_H, w, _BAND_H + 8), GOLD)
    page.block((_MARGIN, 30), issuer, width=560, size=48, min_size=28, fill=WHITE, bold=True)
    page.text((w - _MARGIN, _BAND_H // 2), caption, size_px=26, colour=GOLD, anchor="rm")


def _pdf_photo(page: _Page, photo: Image.Image | None, name: str) -> None:
    """The photo as an image, or the silhouette placeholder as shapes and text."""
    left, top, right, bottom = _PHOTO_BOX
    w, h = right - left, bottom - top
    pdf = page.pdf
    if photo is not None:
        pdf.drawImage(
            ImageReader(photo), page.x(left), page.y(bottom), width=w * _SX, height=h * _SY
        )
    else:
        pdf.saveState()
        clip = pdf.beginPath()
        clip.rect(page.x(left), page.y(bottom), w * _SX, h * _SY)
        pdf.clipPath(clip, stroke=0, fill=0)
        page.rect(_PHOTO_BOX, LIGHT)
        page.fill((190, 198, 210))
        for x0, y0, x1, y1 in ((0.30, 0.16, 0.70, 0.46), (0.10, 0.52, 0.90, 1.20)):
            pdf.ellipse(
                page.x(left + w * x0),
                page.y(top + h * y0),
                page.x(left + w * x1),
                page.y(top + h * y1),
                stroke=0,
                fill=1,
            )
        page.text(
            (left + w / 2, top + h * 0.80), initials(name), size_px=64, colour=WHITE, anchor="mm"
        )
        pdf.restoreState()
    page.stroke(GREY, 2)
    pdf.rect(page.x(left), page.y(bottom), w * _SX, h * _SY, stroke=1, fill=0)


def _pdf_footer(page: _Page, card_number: str, valid_until: datetime.date) -> None:
    w, h = CARD_SIZE
    page.line((_MARGIN, h - 100, w - _MARGIN, h - 100), LIGHT, 3)
    page.text((_MARGIN, h - 82), "CARD NO.", size_px=22, colour=GREY)
    page.block((_MARGIN, h - 56), card_number, width=520, size=34, min_size=20)
    page.text((w - _MARGIN, h - 82), "VALID UNTIL", size_px=22, colour=GREY, anchor="ra")
    page.text((w - _MARGIN, h - 56), valid_until.isoformat(), size_px=34, colour=INK, anchor="ra")


def _pdf_front(page: _Page, card: _Content, photo: Image.Image | None) -> None:
    """The front as ``_front`` lays it out; nothing is drawn over ``_CHIP_BOX``."""
    _pdf_issuer_band(page, card.issuer, "IDENTITY CARD")
    _pdf_photo(page, photo, card.holder_name)
    width = _TEXT_RIGHT - _TEXT_LEFT
    y = page.block(
        (_TEXT_LEFT, 160),
        card.holder_name,
        width=width,
        size=56,
        min_size=28,
        max_lines=3,
        max_height=140,
        bold=True,
    )
    if card.title:
        page.block((_TEXT_LEFT, y + 8), card.title, width=width, size=32, min_size=22, fill=GREY)
    org_width = _TEXT_RIGHT - _MARGIN
    y = page.block(
        (_MARGIN, 395), card.organization, width=org_width, size=36, min_size=24, bold=True
    )
    if card.org_unit:
        page.block(
            (_MARGIN, y + 2), card.org_unit, width=org_width, size=30, min_size=22, fill=GREY
        )
    _pdf_footer(page, card.card_number, card.valid_until)


def _pdf_back(page: _Page, card: _Content) -> None:
    w, h = CARD_SIZE
    page.rect((0, 0, w, 24), NAVY)
    width = w - 2 * _MARGIN
    y = page.block(
        (_MARGIN, 60),
        f"If found, return to {card.organization}",
        width=width,
        size=38,
        min_size=24,
        max_lines=2,
        bold=True,
    )
    notice = (
        f"This card remains the property of {card.organization}. It is personal and must not "
        "be lent to anyone. Report a lost or stolen card to your help desk at once."
    )
    page.block((_MARGIN, y + 10), notice, width=width, size=26, min_size=18, max_lines=3, fill=GREY)
    _pdf_chip_hint(page, (_MARGIN, 330))
    _pdf_footer(page, card.card_number, card.valid_until)
    page.text(
        (w - _MARGIN, h - 130), f"Issued by {card.issuer}", size_px=22, colour=GREY, anchor="rs"
    )


def _pdf_chip_hint(page: _Page, xy: tuple[int, int]) -> None:
    x, y = xy
    pdf = page.pdf
    page.fill(GOLD)
    page.stroke((150, 118, 50), 2)
    pdf.roundRect(page.x(x), page.y(y + 70), 84 * _SX, 70 * _SY, 10 * _SX, stroke=1, fill=1)
    for dy in (23, 47):
        page.line((x, y + dy, x + 84, y + dy), (150, 118, 50), 2)
    page.line((x + 42, y, x + 42, y + 70), (150, 118, 50), 2)
    hint = "Insert into the reader chip first, with the chip (front side) facing up."
    page.block(
        (x + 110, y + 6),
        hint,
        width=CARD_SIZE[0] - x - 110 - _MARGIN,
        size=26,
        min_size=18,
        max_lines=2,
        fill=INK,
    )


def _faces_pdf(card: _Content, photo: Image.Image | None) -> bytes:
    """Two CR80 pages, front then back, as PDF bytes (the same bytes for the same card)."""
    out = io.BytesIO()
    pdf = Canvas(out, pagesize=CR80_PT, invariant=True, pageCompression=True)
    pdf.setTitle(f"{card.card_number}-faces")
    pdf.setAuthor(card.issuer)
    pdf.setSubject(f"Card {card.card_number}, front and back (CR80)")
    pdf.setCreator("Cardline")
    _pdf_front(_Page(pdf), card, photo)
    pdf.showPage()
    _pdf_back(_Page(pdf), card)
    pdf.showPage()
    pdf.save()
    return out.getvalue()
