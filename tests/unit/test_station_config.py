"""stations.toml: a station's drivers and timeouts, checked at start-up with the field named."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.errors import ConfigurationError
from stations.setup import build_drivers, load_station_file, station_entry, with_overrides
from stations.sim import SimPrinter, SimReader, SimToken

GOOD = """
[stations.ST1]
line = "east"
lease_s = 20
heartbeat_s = 4

[stations.ST1.reader]
driver = "pcsc"
name = "Virtual PCD 00 00*"
serial_apdu = "00CA010100"

[stations.ST1.token]
driver = "pkcs11"
module = "/usr/lib/softhsm/libsofthsm2.so"
token_label = "BLANK*"

[stations.ST1.printer]
driver = "cups"
queue = "CardPrinter"
server = "/tmp/cups.sock"
options = { "print-quality" = "5" }

[stations.ST2]
"""


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "stations.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_station_file_gives_each_station_its_drivers_and_defaults_the_rest(tmp_path):
    stations = load_station_file(_file(tmp_path, GOOD)).stations
    st1, st2 = stations["ST1"], stations["ST2"]
    assert (st1.line, st1.lease_s, st1.heartbeat_s) == ("east", 20, 4)
    assert (st1.reader.driver, st1.reader.name) == ("pcsc", "Virtual PCD 00 00*")
    assert (st1.token.driver, st1.token.token_label) == ("pkcs11", "BLANK*")
    assert st1.token.transport_pin_env == "CARDLINE_TRANSPORT_PIN"
    assert (st1.printer.queue, st1.printer.options) == ("CardPrinter", {"print-quality": "5"})
    assert not st1.simulated
    assert st2.simulated
    assert st2.line == "default"


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('[stations.ST1.printer]\ndriver = "cups"\n', "stations.ST1.printer"),
        ('[stations.ST1.printer]\ndriver = "file"\n', "stations.ST1.printer"),
        ('[stations.ST1.reader]\ndriver = "usb"\n', "stations.ST1.reader.driver"),
        ('[stations.ST1.reader]\nserial_apdu = "00CAZZ"\n', "stations.ST1.reader.serial_apdu"),
        ('[stations.ST1.token]\ntransport_pin_env = "1234"\n', "transport_pin_env"),
        ('[stations.ST1.token]\npin = "1234"\n', "stations.ST1.token.pin"),
        ("[stations.ST1]\nlease_s = 5\nheartbeat_s = 5\n", "heartbeat_s"),
        ('[stations."bad id!"]\n', "bad id!"),
        ("[stations.ST1\n", "stations.toml"),
        ('[stations.ST1]\nrole = "printing"\n', "stations.ST1.role"),
        (
            '[stations.D1]\nrole = "update"\n[stations.D1.printer]\ndriver = "file"\n'
            'directory = "/tmp"\n',
            "an update desk has no printer",
        ),
    ],
)
def test_a_bad_station_file_is_refused_naming_the_field(tmp_path, text, named):
    with pytest.raises(ConfigurationError) as err:
        load_station_file(_file(tmp_path, text))
    assert named in str(err.value)
    assert str(tmp_path / "stations.toml") in str(err.value)


def test_an_unknown_station_id_names_the_configured_ones(tmp_path):
    with pytest.raises(ConfigurationError, match=r"no \[stations.ST9\].*ST1, ST2"):
        station_entry(_file(tmp_path, GOOD), "ST9")


def test_command_line_options_override_the_file_and_are_checked_too(tmp_path):
    entry = station_entry(_file(tmp_path, GOOD), "ST1")
    changed = with_overrides(entry, line="west", lease_s=None, time_scale=0, fault_rate=0.5)
    assert (changed.line, changed.lease_s) == ("west", 20)
    assert (changed.sim.time_scale, changed.sim.fault_rate) == (0, 0.5)
    assert changed.reader == entry.reader
    with pytest.raises(ConfigurationError, match="heartbeat_s"):
        with_overrides(entry, heartbeat_s=30)


def test_an_all_simulated_station_gets_the_simulated_drivers(tmp_path):
    entry = station_entry(_file(tmp_path, GOOD), "ST2")
    drivers = build_drivers(entry, output_dir=tmp_path / "printed")
    assert isinstance(drivers.printer, SimPrinter)
    assert isinstance(drivers.reader, SimReader)
    assert isinstance(drivers.token, SimToken)


def test_a_pkcs11_token_without_its_transport_key_in_the_environment_is_refused(
    tmp_path, monkeypatch
):
    monkeypatch.delenv("CARDLINE_TRANSPORT_PIN", raising=False)
    entry = station_entry(_file(tmp_path, '[stations.ST1.token]\ndriver = "pkcs11"\n'), "ST1")
    with pytest.raises(ConfigurationError, match="CARDLINE_TRANSPORT_PIN"):
        build_drivers(entry, output_dir=tmp_path / "printed")


def test_a_missing_pkcs11_module_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("CARDLINE_TRANSPORT_PIN", "87654321")
    text = '[stations.ST1.token]\ndriver = "pkcs11"\nmodule = "/nonexistent/libvendor.so"\n'
    entry = station_entry(_file(tmp_path, text), "ST1")
    with pytest.raises(ConfigurationError, match=r"/nonexistent/libvendor\.so"):
        build_drivers(entry, output_dir=tmp_path / "printed")


def test_an_update_desk_gets_a_reader_and_a_token_and_no_printer(tmp_path):
    from db.secrets import SecretBox
    from stations.chips import SimChipStore
    from stations.setup import build_desk_drivers
    from stations.sim import SimDeskReader

    entry = station_entry(_file(tmp_path, '[stations.DESK1]\nrole = "update"\n'), "DESK1")
    assert entry.role == "update"
    drivers = build_desk_drivers(entry, chips=SimChipStore(tmp_path, SecretBox(b"k" * 32)))
    assert isinstance(drivers.reader, SimDeskReader)
    assert drivers.sim_reader is drivers.reader  # simulated holders bring the cards
    assert isinstance(drivers.token, SimToken)
    assert not hasattr(drivers, "printer")
