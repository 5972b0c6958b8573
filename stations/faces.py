"""Card faces: the front and back images a station prints, rendered with Pillow.

Both faces are CR80 (85.6 x 54 mm) at 300 dpi. The front leaves the ISO/IEC 7816-2
contact area unprinted, because a retransfer printer must not print over the chip.
Only Pillow's built-in scalable font is used, so no system fonts are needed.
"""

from __future__ import annotations

import datetime
import re
from functools import lru_cache
from pathlib import Path

import structlog
from PIL import Image, ImageDraw, ImageFont, ImageOps

from db.files import atomic_open
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


def _paste_photo(card: Image.Image, photo_path: Path | None, name: str) -> None:
    left, top, right, bottom = _PHOTO_BOX
    size = (right - left, bottom - top)
    photo = _load_photo(photo_path, size) or _placeholder(size, name)
    card.paste(photo, (left, top))
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
    photo_path: Path | None,
    issuer: str,
) -> Image.Image:
    card = Image.new("RGB", CARD_SIZE, WHITE)
    draw = ImageDraw.Draw(card)
    _issuer_band(draw, issuer, "IDENTITY CARD")
    _paste_photo(card, photo_path, holder_name)
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
    """Render ``<card_number>-front.png`` and ``<card_number>-back.png`` into ``out_dir``.

    Re-rendering overwrites both files. Long names shrink, then wrap, then are cut with
    an ellipsis. A missing or unreadable photo gives a silhouette with initials.
    ``card_number`` must be a plain file-name-safe token (letters, digits, ``.``, ``_``,
    ``-``), else ValueError.
    """
    if not _CARD_NUMBER.fullmatch(card_number):
        raise ValueError(f"card number {card_number!r} is not usable in a file name")
    out_dir.mkdir(parents=True, exist_ok=True)
    front = _front(
        card_number=card_number,
        holder_name=holder_name,
        organization=organization,
        org_unit=org_unit,
        title=title,
        valid_until=valid_until,
        photo_path=photo_path,
        issuer=issuer,
    )
    back = _back(
        card_number=card_number, organization=organization, valid_until=valid_until, issuer=issuer
    )
    faces = CardFaces(
        front=out_dir / f"{card_number}-front.png", back=out_dir / f"{card_number}-back.png"
    )
    _save_png(front, faces.front)
    _save_png(back, faces.back)
    return faces
