"""Configuration, in one place, validated at start-up.

Environment variables (every one Cardline reads):

- ``CARDLINE_DATA_DIR``: where the embedded default keeps everything (default ``./var``).
- ``CARDLINE_DATABASE_URL``: any SQLAlchemy URL (default: SQLite file in the data dir).
- ``CARDLINE_BROKER_URL``: ``memory://`` (default, in-process), ``amqp://...``, ``redis://...``.
- ``CARDLINE_MASTER_KEY``: base64 of 32 bytes sealing secrets at rest (default: the file
  ``master.key`` in the data dir, created on first use with mode 0600).
- ``CARDLINE_CONFIG``: a TOML file whose ``[policy]`` table sets issuance options
  (``schemas.policy.Policy``); default: none, built-in defaults.
- ``CARDLINE_LOG_LEVEL``: level of the log file (default ``INFO``).
- ``CARDLINE_CA_PIN``: the user PIN of the PKCS#11 token holding the issuing CA key
  (only when ``[pki.ca] key_store = "pkcs11"``).
- ``CARDLINE_SMTP_URL``: where mail goes (``smtp://host:port``, ``smtp+starttls://user:pw@
  host``, ``smtps://...``); default: none, nothing is mailed (files are still written).
- ``CARDLINE_MAIL_FROM``: the sender address (default ``cardline@localhost``).

The configuration file's ``[roles]`` table gives operators their roles by name, e.g.
``alice = ["operator"]`` (who may display a soft token's passphrase: operator, admin).
The configuration file's ``[pki]`` table sets the CA (``[pki.ca]``: algorithm, key
store, CRL/AIA base URL) and the certificate profiles (``[pki.profiles.<usage>]``).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from db.engine import sqlite_url
from db.secrets import Secret, SecretBox
from schemas.cpr import CprConfig
from schemas.errors import ConfigurationError
from schemas.pki import PkiConfig
from schemas.policy import Policy
from workers.mail import Mailer

M = TypeVar("M", bound=BaseModel)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CARDLINE_", extra="ignore")

    data_dir: Path = Path("var")
    database_url: str | None = None
    broker_url: str = "memory://"
    master_key: str | None = None
    config: Path | None = None
    log_level: str = "INFO"
    ca_pin: SecretStr | None = None
    smtp_url: SecretStr | None = None
    mail_from: str = "cardline@localhost"

    def with_data_dir(self, data_dir: Path | None) -> Settings:
        return self if data_dir is None else self.model_copy(update={"data_dir": data_dir})

    @property
    def db_url(self) -> str:
        return self.database_url or sqlite_url(self.data_dir)

    def secret_box(self) -> SecretBox:
        if self.master_key:
            return SecretBox.from_b64(self.master_key)
        return SecretBox.from_key_file(self.data_dir / "master.key")

    def _table(self, name: str) -> dict[str, Any]:
        if self.config is None:
            return {}
        try:
            raw = tomllib.loads(self.config.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigurationError(f"CARDLINE_CONFIG {self.config}: {exc}") from exc
        table = raw.get(name, {})
        return table if isinstance(table, dict) else {}

    def _validated(self, name: str, model: type[M]) -> M:
        try:
            return model.model_validate(self._table(name))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ConfigurationError(
                f"CARDLINE_CONFIG {self.config}: {name}.{where}: {first['msg']}"
            ) from exc

    def policy(self) -> Policy:
        return self._validated("policy", Policy)

    def pki(self) -> PkiConfig:
        return self._validated("pki", PkiConfig)

    def cpr(self) -> CprConfig:
        return self._validated("cpr", CprConfig)

    def mailer(self) -> Mailer | None:
        if self.smtp_url is None:
            return None
        return Mailer.from_url(self.smtp_url.get_secret_value(), self.mail_from)

    def roles_of(self, name: str) -> frozenset[str]:
        """The roles ``[roles]`` in CARDLINE_CONFIG gives ``name`` (none when unlisted)."""
        table = self._table("roles")
        roles = table.get(name, [])
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise ConfigurationError(f"CARDLINE_CONFIG {self.config}: roles.{name} is not a list")
        return frozenset(roles)

    def ca_secret_pin(self) -> Secret | None:
        return Secret(self.ca_pin.get_secret_value()) if self.ca_pin else None


def load(data_dir: Path | None = None) -> Settings:
    try:
        return Settings().with_data_dir(data_dir)
    except ValidationError as exc:
        raise ConfigurationError(str(exc)) from exc
