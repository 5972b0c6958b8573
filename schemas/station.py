"""Station configuration: which reader, token and printer each station drives.

A TOML file (``cardline station --config stations.toml``) holds one table per station::

    [stations.ST1]
    line = "default"

    [stations.ST1.reader]
    driver = "pcsc"                      # or "sim"
    name = "Virtual PCD 00 00*"          # glob over PC/SC reader names

    [stations.ST1.token]
    driver = "pkcs11"                    # or "sim"
    module = "/usr/lib/softhsm/libsofthsm2.so"
    token_label = "BLANK*"               # glob over token labels: the blanks

    [stations.ST1.printer]
    driver = "cups"                      # "file", or "sim"
    queue = "CardPrinter"

A station with ``role = "update"`` is an update desk (``stations.desk``): a reader and
the card's middleware, no printer. Holders bring produced cards to it and it applies
every pending update of the card inserted (renewal, temporary-card assignment and
withdrawal, key recovery)::

    [stations.DESK1]
    role = "update"

    [stations.DESK1.reader]
    driver = "pcsc"
    name = "Virtual PCD 00 01*"

    [stations.DESK1.token]
    driver = "pkcs11"
    token_label = "BLANK*"               # the produced cards' tokens

Secrets never live in this file: the blanks' transport key is read from the environment
variable ``transport_pin_env`` names.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

STATION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_HEX = re.compile(r"(?:[0-9A-Fa-f]{2})+")
_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SimConfig(_Strict):
    """The simulated drivers' timing and faults (for any driver left as ``sim``)."""

    time_scale: float = Field(0.01, ge=0)
    fault_rate: float = Field(0.0, ge=0, le=1)
    seed: int | None = None


class ReaderConfig(_Strict):
    driver: Literal["sim", "pcsc"] = "sim"
    name: str = Field("*", min_length=1, max_length=200)  # glob over reader names
    serial_apdu: str | None = None  # hex; None: the driver's default GET DATA
    exclusive: bool = True

    @field_validator("serial_apdu")
    @classmethod
    def _hex(cls, value: str | None) -> str | None:
        if value is not None and not (_HEX.fullmatch(value) and len(value) >= 8):
            raise ValueError("an APDU in hex, at least 4 bytes (CLA INS P1 P2)")
        return value


class TokenConfig(_Strict):
    driver: Literal["sim", "pkcs11"] = "sim"
    module: str = "/usr/lib/softhsm/libsofthsm2.so"
    token_label: str = Field("*", min_length=1, max_length=32)  # glob over token labels
    transport_pin_env: str = "CARDLINE_TRANSPORT_PIN"

    @field_validator("transport_pin_env")
    @classmethod
    def _env_name(cls, value: str) -> str:
        if not _ENV_NAME.fullmatch(value):
            raise ValueError("the name of an environment variable, like CARDLINE_TRANSPORT_PIN")
        return value


class PrinterConfig(_Strict):
    driver: Literal["sim", "file", "cups"] = "sim"
    queue: str | None = None  # cups: the destination name
    server: str | None = None  # cups: socket path or host[:port]; None: CUPS's default
    directory: Path | None = None  # file: where the faces go
    job_timeout_s: float = Field(60.0, gt=0)
    options: dict[str, str] = Field(default_factory=dict)  # cups: extra job options

    @model_validator(mode="after")
    def _needs(self) -> PrinterConfig:
        if self.driver == "cups" and not self.queue:
            raise ValueError("a cups printer needs queue = the CUPS destination")
        if self.driver == "file" and self.directory is None:
            raise ValueError("a file printer needs directory = where the faces go")
        return self


class StationEntry(_Strict):
    # "production": prints and encodes blanks from its line's queue; "update": an update
    # desk (no printer) applying pending updates to the produced cards inserted.
    role: Literal["production", "update"] = "production"
    # A production station whose encoder also applies pending updates to a produced
    # card put in by hand between print jobs (as a desk would).
    updates: bool = False
    line: str = Field("default", pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")
    lease_s: float = Field(30.0, gt=0)
    heartbeat_s: float = Field(5.0, gt=0)
    chip_timeout_s: float = Field(10.0, gt=0)
    cert_timeout_s: float = Field(60.0, gt=0)
    # How long a station holds a card while the PKI worker or the store is away before
    # it gives the blank up (the card stays in the encoder meanwhile).
    server_wait_s: float = Field(1800.0, gt=0)
    reader: ReaderConfig = ReaderConfig()
    token: TokenConfig = TokenConfig()
    printer: PrinterConfig = PrinterConfig()
    sim: SimConfig = SimConfig()

    @model_validator(mode="after")
    def _heartbeat_within_lease(self) -> StationEntry:
        if self.heartbeat_s >= self.lease_s:
            raise ValueError("heartbeat_s must be shorter than lease_s")
        if self.server_wait_s < self.cert_timeout_s:
            raise ValueError("server_wait_s must not be shorter than cert_timeout_s")
        if self.role == "update" and self.printer.driver != "sim":
            raise ValueError("an update desk has no printer: remove its [printer] table")
        return self

    @property
    def simulated(self) -> bool:
        return {self.reader.driver, self.token.driver, self.printer.driver} == {"sim"}


class StationFile(_Strict):
    stations: dict[str, StationEntry] = Field(default_factory=dict)

    @field_validator("stations")
    @classmethod
    def _ids(cls, value: dict[str, StationEntry]) -> dict[str, StationEntry]:
        for station_id in value:
            if not STATION_ID.fullmatch(station_id):
                raise ValueError(
                    f"station id {station_id!r}: letters, digits, '-' or '_', at most 64"
                )
        return value
