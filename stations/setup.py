"""A station's drivers from its configuration: simulated, or the real stacks.

``load_station_file`` reads and validates ``stations.toml`` (``schemas.station``): a bad
file fails at start-up with the file and the field named. ``build_drivers`` makes the
printer, reader and token one entry asks for; any of them left ``sim`` is simulated with
the entry's ``[sim]`` timing and faults, so a station can mix, e.g. a real token with a
simulated printer.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from db.secrets import Secret
from schemas.errors import ConfigurationError
from schemas.station import StationEntry, StationFile
from stations.chips import SimChipStore
from stations.desk import DeskReader, DeskToken
from stations.drivers import Printer, Reader, Token
from stations.sim import SimDeskReader, make_sim_desk, make_sim_drivers

if TYPE_CHECKING:
    from stations.pcsc_reader import PcscReader
    from stations.pkcs11_token import Pkcs11Token


def load_station_file(path: Path) -> StationFile:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"station configuration {path}: {exc}") from None
    try:
        return StationFile.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigurationError(f"station configuration {path}: {where}: {first['msg']}") from None


def station_entry(path: Path, station_id: str) -> StationEntry:
    """The entry of ``station_id`` in the file at ``path``."""
    stations = load_station_file(path).stations
    if station_id not in stations:
        known = ", ".join(sorted(stations)) or "none"
        raise ConfigurationError(
            f"station configuration {path}: no [stations.{station_id}] (configured: {known})"
        )
    return stations[station_id]


def with_overrides(entry: StationEntry, **values: object) -> StationEntry:
    """``entry`` with the station options given on the command line (None: not given);
    ``time_scale``, ``fault_rate`` and ``seed`` go to its ``[sim]`` table."""
    sim_keys = ("time_scale", "fault_rate", "seed")
    given = {k: v for k, v in values.items() if v is not None}
    sim = {**entry.sim.model_dump(), **{k: v for k, v in given.items() if k in sim_keys}}
    top = {k: v for k, v in given.items() if k not in sim_keys}
    try:
        return StationEntry.model_validate({**entry.model_dump(), **top, "sim": sim})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "station"
        raise ConfigurationError(f"station options: {where}: {first['msg']}") from None


@dataclass
class Drivers:
    printer: Printer
    reader: Reader
    token: Token

    def close(self) -> None:
        """Release the chip and the reader (each driver's own ``close`` where it has one)."""
        self.token.close()
        close_reader = getattr(self.reader, "close", None)
        if close_reader is not None:
            close_reader()


def _transport_pin(entry: StationEntry) -> Secret:
    name = entry.token.transport_pin_env
    value = os.environ.get(name)
    if not value:
        raise ConfigurationError(
            f"the pkcs11 token needs the blanks' transport key in the environment variable {name}"
        )
    return Secret(value)


def _pkcs11_token(entry: StationEntry) -> Pkcs11Token:
    if not Path(entry.token.module).is_file():
        raise ConfigurationError(f"token.module {entry.token.module} does not exist")
    transport_pin = _transport_pin(entry)
    from stations.pkcs11_token import Pkcs11Token

    return Pkcs11Token(
        entry.token.module, token_label=entry.token.token_label, transport_pin=transport_pin
    )


def _pcsc_reader(entry: StationEntry) -> PcscReader:
    from stations.pcsc_reader import SERIAL_APDU, PcscReader

    return PcscReader(
        entry.reader.name,
        serial_apdu=entry.reader.serial_apdu or SERIAL_APDU,
        exclusive=entry.reader.exclusive,
    )


@dataclass
class DeskDrivers:
    reader: DeskReader
    token: DeskToken
    # The simulated reader, whose simulated holders bring the cards (None: a real one).
    sim_reader: SimDeskReader | None

    def close(self) -> None:
        self.token.close()
        close_reader = getattr(self.reader, "close", None)
        if close_reader is not None:
            close_reader()


def build_desk_drivers(entry: StationEntry, *, chips: SimChipStore) -> DeskDrivers:
    """The reader and the card middleware of an update desk (``role = "update"``); a
    simulated token takes each card's chip from ``chips``."""
    sim_reader, sim_token = make_sim_desk(
        time_scale=entry.sim.time_scale, seed=entry.sim.seed, chips=chips
    )
    token: DeskToken = _pkcs11_token(entry) if entry.token.driver == "pkcs11" else sim_token
    if entry.reader.driver == "pcsc":
        return DeskDrivers(reader=_pcsc_reader(entry), token=token, sim_reader=None)
    return DeskDrivers(reader=sim_reader, token=token, sim_reader=sim_reader)


def build_drivers(
    entry: StationEntry, *, output_dir: Path, chips: SimChipStore | None = None
) -> Drivers:
    """The printer, reader and token ``entry`` configures (a simulated chip is kept in
    ``chips``, so a desk can take the card later)."""
    sim_printer, sim_reader, sim_token = make_sim_drivers(
        time_scale=entry.sim.time_scale,
        fault_rate=entry.sim.fault_rate,
        seed=entry.sim.seed,
        output_dir=output_dir,
        chips=chips,
    )
    printer: Printer = sim_printer
    reader: Reader = sim_reader
    token: Token = sim_token
    if entry.token.driver == "pkcs11":
        token = _pkcs11_token(entry)
    if entry.reader.driver == "pcsc":
        reader = _pcsc_reader(entry)
    if entry.printer.driver == "cups":
        from stations.printers import CupsPrinter

        assert entry.printer.queue is not None  # checked by PrinterConfig
        printer = CupsPrinter(
            entry.printer.queue,
            server=entry.printer.server,
            job_timeout_s=entry.printer.job_timeout_s,
            options=entry.printer.options or None,
        )
    elif entry.printer.driver == "file":
        from stations.printers import FilePrinter

        assert entry.printer.directory is not None  # checked by PrinterConfig
        printer = FilePrinter(entry.printer.directory)
    return Drivers(printer=printer, reader=reader, token=token)
