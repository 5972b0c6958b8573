"""Card faces: CR80 at 300 dpi, a photo or a placeholder, text that always fits."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from stations import faces as faces_module
from stations.faces import fit_text, initials, render_faces

VALID = datetime.date(2030, 6, 30)


def _render(out: Path, *, name: str = "Ann Lee", photo: Path | None = None, number: str = "C-1"):
    return render_faces(
        out,
        card_number=number,
        holder_name=name,
        organization="Acme Corporation",
        org_unit="Security Operations",
        title="Engineer",
        valid_until=VALID,
        photo_path=photo,
    )


def _pixels(path: Path) -> bytes:
    with Image.open(path) as img:
        return img.convert("RGB").tobytes()


def _red_pixels(path: Path) -> int:
    with Image.open(path) as img:
        colours = img.convert("RGB").getcolors(maxcolors=1 << 24) or []
    return sum(n for n, c in colours if isinstance(c, tuple) and c[0] > 220 and max(c[1:]) < 40)


@pytest.fixture
def red_photo(tmp_path: Path) -> Path:
    path = tmp_path / "photo.jpg"
    Image.new("RGB", (300, 400), (255, 0, 0)).save(path, quality=95)
    return path


def test_faces_are_cr80_at_300_dpi(tmp_path):
    faces = _render(tmp_path)
    assert faces.front == tmp_path / "C-1-front.png"
    assert faces.back == tmp_path / "C-1-back.png"
    for path in (faces.front, faces.back):
        with Image.open(path) as img:
            assert img.format == "PNG"
            assert img.size == (1012, 638)
            assert tuple(round(d) for d in img.info["dpi"]) == (300, 300)


def test_different_holders_give_different_fronts(tmp_path):
    ann = _render(tmp_path / "a", name="Ann Lee")
    bob = _render(tmp_path / "b", name="Bob Stone")
    assert _pixels(ann.front) != _pixels(bob.front)


def test_the_photo_is_composited_onto_the_front(tmp_path, red_photo):
    with_photo = _render(tmp_path / "a", photo=red_photo)
    without = _render(tmp_path / "b")
    assert _red_pixels(without.front) == 0
    # The photo box is 220 x 293 px; nearly all of it shows the (cropped) photo.
    assert _red_pixels(with_photo.front) > 0.9 * 220 * 293


def test_an_unreadable_photo_falls_back_to_the_placeholder(tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image at all")
    fallback = _render(tmp_path / "a", photo=broken)
    missing = _render(tmp_path / "b", photo=tmp_path / "does-not-exist.jpg")
    none = _render(tmp_path / "c")
    assert _pixels(fallback.front) == _pixels(none.front) == _pixels(missing.front)


def test_rendering_again_overwrites_and_leaves_no_temp_files(tmp_path, red_photo):
    first = _render(tmp_path, name="Ann Lee")
    before = first.front.read_bytes()
    again = _render(tmp_path, name="Ann Lee")
    assert again.front.read_bytes() == before
    _render(tmp_path, name="Ann Lee-Stone", photo=red_photo)
    assert first.front.read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "C-1-back.png",
        "C-1-faces.pdf",
        "C-1-front.png",
        "photo.jpg",
    ]


def test_a_card_number_that_is_not_a_file_name_is_refused(tmp_path):
    with pytest.raises(ValueError, match="file name"):
        _render(tmp_path, number="../../etc/passwd")


@pytest.mark.parametrize(
    "name",
    [
        "Ann Lee",
        "Dr. Maria-Theresa Alexandrova-Hohenzollern von und zu Sigmaringen",
        "Wolfeschlegelsteinhausenbergerdorffwelchevoralternwarengewissenhaftschaferswessen",
        "A " * 200,
    ],
)
def test_long_names_shrink_wrap_or_are_cut_but_always_fit(name):
    font, lines = fit_text(name, 420, size=56, min_size=28, max_lines=3, max_height=140)
    assert 1 <= len(lines) <= 3
    assert all(font.getlength(line) <= 420 for line in lines)
    assert len(lines) * round(font.size * 1.18) <= 140 or len(lines) == 1


def test_a_short_name_keeps_the_full_size_and_a_long_one_shrinks():
    short_font, short = fit_text("Ann Lee", 420, size=56, min_size=28, max_lines=2)
    long_font, long = fit_text(
        "Maria-Theresa Alexandrova-Hohenzollern", 700, size=56, min_size=28, max_lines=1
    )
    assert (short_font.size, short) == (56, ["Ann Lee"])
    assert long_font.size < 56
    assert long == ["Maria-Theresa Alexandrova-Hohenzollern"]


def test_a_name_that_cannot_fit_is_cut_with_an_ellipsis():
    _, lines = fit_text("Bartholomew " * 30, 420, size=56, min_size=28, max_lines=2)
    assert len(lines) == 2
    assert lines[-1].endswith("…")


def test_initials_come_from_the_first_and_last_name():
    assert initials("ann marie lee") == "AL"
    assert initials("Cher") == "C"
    assert initials("  ") == "?"


@pytest.fixture
def no_system_fonts(monkeypatch) -> Iterator[None]:
    monkeypatch.setattr(faces_module, "_SYSTEM_FONTS", {False: (), True: ()})
    faces_module._system_font.cache_clear()
    faces_module._font.cache_clear()
    yield
    faces_module._system_font.cache_clear()
    faces_module._font.cache_clear()


@pytest.mark.usefixtures("no_system_fonts")
def test_faces_render_with_only_pillows_built_in_font(tmp_path):
    faces = _render(tmp_path, name="Maria-Theresa Alexandrova-Hohenzollern")
    with Image.open(faces.front) as img:
        assert img.size == (1012, 638)
    assert faces_module._system_font(True) is None
