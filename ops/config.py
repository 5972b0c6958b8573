"""Configuration, in one place: loaded and validated once per process into one frozen
``Settings``.

Two sources make it: the environment (``ENVIRONMENT`` below lists every variable
Cardline reads, and the README's configuration table shows the same list) and the TOML
file ``CARDLINE_CONFIG`` names (``ConfigFile``: the tables ``[policy]``, ``[pki]``,
``[cpr]``, ``[expiry]``, ``[approvals]`` and ``[alerts]``). The file is strict: a table
or a key Cardline does not know is an error naming the file and the dotted key
(``cardline.toml: polcy: unknown table``), so a typo fails at start-up instead of
silently leaving a default in force.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from db.engine import sqlite_url
from db.secrets import Secret, SecretBox
from schemas.alerts import AlertConfig
from schemas.bureau import BureauConfig
from schemas.cpr import CprConfig
from schemas.errors import ConfigurationError
from schemas.expiry import ExpiryConfig
from schemas.pki import PkiConfig
from schemas.policy import ApprovalSteps, Policy
from workers.mail import Mailer


@dataclass(frozen=True)
class Variable:
    """One environment variable: its name, its default and what it means; ``setting``
    is the ``Settings`` field it fills (None: read where it is used, as said)."""

    name: str
    default: str
    meaning: str
    setting: str | None = None


ENVIRONMENT: tuple[Variable, ...] = (
    Variable(
        "CARDLINE_DATA_DIR", "./var", "where the embedded default keeps everything", "data_dir"
    ),
    Variable(
        "CARDLINE_DATABASE_URL",
        "SQLite file in the data dir",
        "any SQLAlchemy URL (e.g. postgresql+psycopg://user@host/db)",
        "database_url",
    ),
    Variable(
        "CARDLINE_BROKER_URL",
        "memory://",
        "memory:// (in-process), amqp://... (RabbitMQ) or redis://...",
        "broker_url",
    ),
    Variable(
        "CARDLINE_MASTER_KEY",
        "master.key in the data dir",
        "base64 of 32 bytes sealing secrets at rest",
        "master_key",
    ),
    Variable("CARDLINE_CONFIG", "none", "the TOML configuration file (ConfigFile)", "config"),
    Variable("CARDLINE_LOG_LEVEL", "INFO", "level of logs/cardline.log", "log_level"),
    Variable(
        "CARDLINE_CA_PIN",
        "none",
        'user PIN of the PKCS#11 token holding the CA key ([pki.ca] key_store = "pkcs11")',
        "ca_pin",
    ),
    Variable(
        "CARDLINE_SMTP_URL",
        "none (no mail)",
        "where mail goes: smtp://host:port, smtp+starttls://user:pw@host:587, smtps://...",
        "smtp_url",
    ),
    Variable("CARDLINE_MAIL_FROM", "cardline@localhost", "sender of Cardline's mail", "mail_from"),
    Variable(
        "CARDLINE_TOKEN",
        "none",
        "the operator's token: the CLI's operator commands act as its principal "
        "(wins over the token file; never logged)",
        "token",
    ),
    Variable(
        "CARDLINE_TOKEN_FILE",
        "~/.config/cardline/token",
        "where `cardline login` keeps the token (mode 0600) and the CLI reads it",
        "token_file",
    ),
    Variable(
        "CARDLINE_STATIONS",
        "none",
        "the station configuration file of `cardline station` (its --config option)",
    ),
    Variable(
        "CARDLINE_TRANSPORT_PIN",
        "none",
        'transport key (SO PIN) of blank cards, for a station with token.driver = "pkcs11" '
        "(read by stations.setup; the variable's name is token.transport_pin_env)",
    ),
    Variable(
        "CARDLINE_TEST_PG",
        "postgresql+psycopg://postgres@127.0.0.1:5432/test",
        "tests, benchmarks and chaos runs: the PostgreSQL admin URL (ops.services)",
    ),
    Variable(
        "CARDLINE_TEST_AMQP",
        "amqp://guest:guest@127.0.0.1:5672/%2F",
        "tests, benchmarks and chaos runs: RabbitMQ",
    ),
    Variable(
        "CARDLINE_TEST_REDIS", "redis://127.0.0.1:6379/0", "tests, benchmarks and chaos: Redis"
    ),
    Variable(
        "CARDLINE_WORKER_METRICS_PORT",
        "none (off)",
        "`cardline worker` serves dramatiq's Prometheus metrics on this port (PORT on every "
        "interface, or HOST:PORT)",
        "worker_metrics",
    ),
    Variable("CI", "none", "true: a test whose service is missing fails instead of skipping"),
    Variable("SOFTHSM2_CONF", "none", "SoftHSM2's configuration (tests and ops.bench_pki set it)"),
    Variable("CUPS_SERVER", "none", "libcups' server, for a cups printer without printer.server"),
)

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class ConfigFile(BaseModel):
    """The tables of ``CARDLINE_CONFIG``; any other table or key is refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    policy: Policy = Field(default_factory=Policy)
    pki: PkiConfig = Field(default_factory=PkiConfig)
    cpr: CprConfig = Field(default_factory=CprConfig)
    expiry: ExpiryConfig = Field(default_factory=ExpiryConfig)
    approvals: ApprovalSteps = Field(default_factory=ApprovalSteps)
    alerts: AlertConfig = Field(default_factory=AlertConfig)
    bureaus: dict[str, BureauConfig] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _bureau_lines(self) -> ConfigFile:
        if self.policy.bureau_lines:
            raise ValueError("policy.bureau_lines: set by the lines of [bureaus.NAME]")
        seen: dict[str, str] = {}
        for name, bureau in self.bureaus.items():
            if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,31}", name):
                raise ValueError(f"bureaus.{name}: a name of a-z, 0-9, '-' or '_'")
            for line in bureau.lines:
                if line in seen:
                    raise ValueError(
                        f"bureaus.{name}.lines: line {line!r} is already {seen[line]}'s"
                    )
                seen[line] = name
        return self

    @classmethod
    def read(cls, path: Path) -> ConfigFile:
        """The file at ``path``, validated in full (ConfigurationError naming the file and
        every unknown or wrong key)."""
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigurationError(f"{path}: {exc}") from None
        problems = [
            f"{name}: unknown {'table' if isinstance(value, dict) else 'key'}"
            for name, value in raw.items()
            if name not in cls.model_fields
        ]
        known = {name: value for name, value in raw.items() if name in cls.model_fields}
        try:
            config = cls.model_validate(known)
        except ValidationError as exc:
            problems += [_problem(e) for e in exc.errors()]
        if problems:
            raise ConfigurationError(f"{path}: {'; '.join(problems)}")
        return config


def _problem(error: ErrorDetails) -> str:
    where = ".".join(str(p) for p in error["loc"])
    what = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
    return f"{where}: {what}"


class Settings(BaseModel):
    """Everything a Cardline process is configured with, frozen once built.

    The fields above ``file`` come from the environment (``load``); ``file`` is the
    ``CARDLINE_CONFIG`` file, read and validated when the model is built.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    data_dir: Path = Path("var")
    database_url: str | None = None
    broker_url: str = "memory://"
    master_key: SecretStr | None = None
    config: Path | None = None
    log_level: LogLevel = "INFO"
    ca_pin: SecretStr | None = None
    smtp_url: SecretStr | None = None
    mail_from: str = "cardline@localhost"
    token: SecretStr | None = None
    token_file: Path = Path("~/.config/cardline/token")
    worker_metrics: str | None = Field(None, pattern=r"^(?:[^\s:]+:)?[0-9]{1,5}$")
    file: ConfigFile = Field(default_factory=ConfigFile)

    @model_validator(mode="before")
    @classmethod
    def _read_the_file(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("config") and "file" not in data:
            data = {**data, "file": ConfigFile.read(Path(data["config"]))}
        if isinstance(data, dict) and isinstance(data.get("log_level"), str):
            data = {**data, "log_level": data["log_level"].upper()}
        return data

    @field_validator("worker_metrics")
    @classmethod
    def _a_port(cls, value: str | None) -> str | None:
        if value is not None and not 0 < int(value.rpartition(":")[2]) < 65536:
            raise ValueError("the port must be 1 to 65535")
        return value

    def with_data_dir(self, data_dir: Path | None) -> Settings:
        return self if data_dir is None else self.model_copy(update={"data_dir": data_dir})

    @property
    def db_url(self) -> str:
        return self.database_url or sqlite_url(self.data_dir)

    @property
    def policy(self) -> Policy:
        """``[policy]``: the issuance options (with the lines routed to bureaus)."""
        lines = tuple(line for b in self.file.bureaus.values() for line in b.lines)
        if not lines:
            return self.file.policy
        return self.file.policy.model_copy(update={"bureau_lines": lines})

    @property
    def bureaus(self) -> dict[str, BureauConfig]:
        """``[bureaus.NAME]``: the service bureaus Cardline orders cards from."""
        return self.file.bureaus

    @property
    def pki(self) -> PkiConfig:
        """``[pki]``: the CA, the certificate profiles and the soft token types."""
        return self.file.pki

    @property
    def cpr(self) -> CprConfig:
        """``[cpr]``: card production requests and the identity systems sending them."""
        return self.file.cpr

    @property
    def expiry(self) -> ExpiryConfig:
        """``[expiry]``: the expiry check and its reminders."""
        return self.file.expiry

    @property
    def approvals(self) -> ApprovalSteps:
        """``[approvals]``: which lifecycle processes wait for an approver."""
        return self.file.approvals

    @property
    def alerts(self) -> AlertConfig:
        """``[alerts]``: the limits past which an alert opens."""
        return self.file.alerts

    @property
    def worker_metrics_address(self) -> tuple[str, int] | None:
        """Where ``cardline worker`` serves dramatiq's metrics (None: it does not)."""
        if self.worker_metrics is None:
            return None
        host, _, port = self.worker_metrics.rpartition(":")
        return host or "0.0.0.0", int(port)  # noqa: S104  # a port alone: every interface, as dramatiq does

    def secret_box(self) -> SecretBox:
        if self.master_key is not None:
            return SecretBox.from_b64(self.master_key.get_secret_value())
        return SecretBox.from_key_file(self.data_dir / "master.key")

    def mailer(self) -> Mailer | None:
        if self.smtp_url is None:
            return None
        return Mailer.from_url(self.smtp_url.get_secret_value(), self.mail_from)

    def ca_secret_pin(self) -> Secret | None:
        return Secret(self.ca_pin.get_secret_value()) if self.ca_pin else None


def load(data_dir: Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """The settings from ``environ`` (default: this process's environment) and the file
    it names; ``data_dir`` (``--data-dir``) wins over ``CARDLINE_DATA_DIR``. An empty
    variable counts as unset."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {
        v.setting: env[v.name] for v in ENVIRONMENT if v.setting is not None and env.get(v.name)
    }
    if data_dir is not None:
        values["data_dir"] = data_dir
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        by_field = {v.setting: v.name for v in ENVIRONMENT}
        problems = [
            f"{by_field.get(str(e['loc'][0]), e['loc'][0])}: {e['msg']}" for e in exc.errors()
        ]
        raise ConfigurationError("; ".join(problems)) from None
