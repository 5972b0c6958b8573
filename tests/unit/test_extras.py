"""The core install runs without the station drivers' extras (pyscard: ``pcsc``, pycups:
``cups``); a station configured for one without it is told which extra to install."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from schemas.errors import ConfigurationError
from schemas.station import StationEntry
from stations.setup import build_drivers

ROOT = Path(__file__).parents[2]
# Importing a module that sys.modules maps to None raises ModuleNotFoundError, as it
# would on an install without the extra.
WITHOUT_EXTRAS = "import sys; sys.modules.update(smartcard=None, cups=None); "


@pytest.fixture
def without_extras(monkeypatch):
    for name in ("smartcard", "smartcard.scard", "cups"):
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "stations.pcsc_reader", raising=False)
    monkeypatch.delitem(sys.modules, "stations.printers", raising=False)


def test_a_pcsc_reader_without_pyscard_names_the_extra(without_extras, tmp_path):
    entry = StationEntry.model_validate({"reader": {"driver": "pcsc"}})
    with pytest.raises(ConfigurationError, match=r"pip install 'cardline\[pcsc\]'"):
        build_drivers(entry, output_dir=tmp_path)


def test_a_cups_printer_without_pycups_names_the_extra_and_the_file_printer_works(
    without_extras, tmp_path
):
    cups = StationEntry.model_validate({"printer": {"driver": "cups", "queue": "Cards"}})
    with pytest.raises(ConfigurationError, match=r"pip install 'cardline\[cups\]'"):
        build_drivers(cups, output_dir=tmp_path)
    files = StationEntry.model_validate(
        {"printer": {"driver": "file", "directory": str(tmp_path / "out")}}
    )
    drivers = build_drivers(files, output_dir=tmp_path)
    assert type(drivers.printer).__name__ == "FilePrinter"


def test_the_demo_runs_without_pyscard_and_pycups(tmp_path):
    args = ["demo", "--cards", "3", "--stations", "1", "--time-scale", "0", "--json"]
    args += ["--data-dir", str(tmp_path / "d")]
    code = WITHOUT_EXTRAS + f"from ops.cli import main; main({args!r})"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["cards"] == {"active": 3}
