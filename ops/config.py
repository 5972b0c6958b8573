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
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from db.engine import sqlite_url
from db.secrets import SecretBox
from schemas.errors import ConfigurationError
from schemas.policy import Policy


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CARDLINE_", extra="ignore")

    data_dir: Path = Path("var")
    database_url: str | None = None
    broker_url: str = "memory://"
    master_key: str | None = None
    config: Path | None = None
    log_level: str = "INFO"

    def with_data_dir(self, data_dir: Path | None) -> Settings:
        return self if data_dir is None else self.model_copy(update={"data_dir": data_dir})

    @property
    def db_url(self) -> str:
        return self.database_url or sqlite_url(self.data_dir)

    def secret_box(self) -> SecretBox:
        if self.master_key:
            return SecretBox.from_b64(self.master_key)
        return SecretBox.from_key_file(self.data_dir / "master.key")

    def policy(self) -> Policy:
        if self.config is None:
            return Policy()
        try:
            raw = tomllib.loads(self.config.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigurationError(f"CARDLINE_CONFIG {self.config}: {exc}") from exc
        try:
            return Policy.model_validate(raw.get("policy", {}))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ConfigurationError(
                f"CARDLINE_CONFIG {self.config}: policy.{where}: {first['msg']}"
            ) from exc


def load(data_dir: Path | None = None) -> Settings:
    try:
        return Settings().with_data_dir(data_dir)
    except ValidationError as exc:
        raise ConfigurationError(str(exc)) from exc
