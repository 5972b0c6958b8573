"""PIN letters: a private, readable PDF that holds the PIN and no log event that does."""

from __future__ import annotations

import datetime
import stat
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from db.secrets import Secret
from workers.letters import mask_card_number, write_pin_letter

PIN = "482913"
CARD = "CL-000123-4567"


def _write(path: Path, *, pin: str = PIN, card: str = CARD) -> Path:
    return write_pin_letter(
        path,
        holder_name="Maria Łęcka",
        organization="Acme Corporation",
        org_unit="Security Operations",
        card_number=card,
        pin=Secret(pin),
        valid_until=datetime.date(2030, 6, 30),
        letter_date=datetime.date(2026, 1, 15),
    )


def test_the_letter_is_a_pdf_readable_only_by_its_owner(tmp_path):
    path = _write(tmp_path / "letters" / "CL-1.pdf")
    assert path == tmp_path / "letters" / "CL-1.pdf"
    data = path.read_bytes()
    assert data.startswith(b"%PDF-")
    assert data.rstrip().endswith(b"%%EOF")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_the_letter_shows_the_pin_and_only_the_last_four_card_digits(tmp_path):
    data = _write(tmp_path / "l.pdf").read_bytes()
    # The page content is uncompressed, so its text strings are in the raw bytes.
    assert b"4567" in data
    assert CARD.encode() not in data
    assert b"000123" not in data
    assert " ".join(PIN).encode() in data
    assert b"Your smart card PIN" in data
    assert b"2030-06-30" in data


def test_no_log_event_carries_the_pin(tmp_path):
    with capture_logs() as events:
        _write(tmp_path / "l.pdf")
    assert [e["event"] for e in events] == ["pin_letter.written"]
    for event in events:
        assert PIN not in repr(event)
        assert CARD not in repr(event)


def test_rewriting_replaces_the_letter_and_leaves_no_temp_file(tmp_path):
    path = _write(tmp_path / "l.pdf", pin="111111")
    first = path.read_bytes()
    _write(path, pin="222222")
    assert path.read_bytes() != first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["l.pdf"]


def test_the_same_letter_gives_the_same_bytes(tmp_path):
    assert _write(tmp_path / "a.pdf").read_bytes() == _write(tmp_path / "b.pdf").read_bytes()


@pytest.mark.parametrize(
    ("number", "masked"),
    [
        ("CL-000123-4567", "••-••••••-4567"),
        ("1234567890123456", "••••••••••••3456"),
        ("X12", "X12"),
    ],
)
def test_card_numbers_are_masked_but_for_the_last_four(number, masked):
    assert mask_card_number(number) == masked
