"""Logging: structlog, configured once, JSON lines to a file, warnings to stderr.

``redact_secrets`` runs before any renderer: a value logged under a secret's name
(pin, puk, password, admin key, ...) becomes ``"****"``, whatever the caller did.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import structlog

SECRET_NAMES = frozenset(
    {
        "pin",
        "puk",
        "so_pin",
        "new_pin",
        "password",
        "passphrase",
        "admin_key",
        "secret",
        "master_key",
        "escrow_key",
        "private_key",
        "key_pem",
        "p12_password",
    }
)
SECRET_SUFFIXES = ("_pin", "_puk", "_password", "_secret", "_private_key")
REDACTED = "****"


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key in list(event_dict):
        lowered = key.lower()
        if lowered in SECRET_NAMES or lowered.endswith(SECRET_SUFFIXES):
            event_dict[key] = REDACTED
    return event_dict


SHARED_PROCESSORS: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    redact_secrets,
]


def configure(
    *, log_file: Path | None, level: str = "INFO", console_level: str = "WARNING"
) -> None:
    """Route structlog and stdlib logging (dramatiq's too) through one chain."""
    structlog.configure(
        processors=[*SHARED_PROCESSORS, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached: tests (and re-configuration) must be able to swap the chain.
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(logging.DEBUG)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(console_level.upper())
    console.setFormatter(_formatter(structlog.dev.ConsoleRenderer(colors=False)))
    root.addHandler(console)
    if log_file is not None:
        _private(log_file)
        to_file = logging.FileHandler(log_file)
        to_file.setLevel(level.upper())
        to_file.setFormatter(_formatter(structlog.processors.JSONRenderer(default=repr)))
        root.addHandler(to_file)
    logging.getLogger("dramatiq").setLevel(logging.WARNING)
    logging.getLogger("pika").setLevel(logging.WARNING)


def _private(log_file: Path) -> None:
    """The log file, created 0600 (tightened if it exists) in a folder made 0700: the
    log names holders and cards."""
    log_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def _formatter(renderer: Any) -> logging.Formatter:
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=SHARED_PROCESSORS,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
