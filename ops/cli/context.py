"""What every command shares: one ``CliContext`` on click's ``ctx.obj``, and the
options and error handling every command uses.

This module imports only click and our error tree: ``cardline --help`` loads it, and a
command imports what it needs (the configuration, the store, rich) when it runs.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from schemas.errors import CardlineError, ConfigurationError, SchemaOutOfDate

if TYPE_CHECKING:
    from rich.console import Console

    from db.engine import Store
    from ops.config import Settings

F = TypeVar("F", bound=Callable[..., Any])

# How each kind of error is reported (the first class that matches): a prefix for its
# one line, and the exit code.
ERROR_REPORTS: tuple[tuple[type[CardlineError], str, int], ...] = (
    (SchemaOutOfDate, "", 3),
    (ConfigurationError, "[bold red]configuration error:[/] ", 3),
    (CardlineError, "[bold red]error:[/] ", 2),
)


@dataclass
class CliContext:
    """The ``--data-dir`` given, the settings loaded once from it and the environment,
    the consoles, and the status store, opened on first use and checked to be at the
    schema revision this Cardline needs."""

    data_dir: Path | None = None
    _settings: Settings | None = None
    _logging: bool = False
    _stores: dict[bool, Store] = field(default_factory=dict)

    def load_settings(self) -> Settings:
        """The configuration, loaded and validated once (no log file yet: the demo
        first empties its data dir)."""
        if self._settings is None:
            from ops import config

            self._settings = config.load(self.data_dir)
        return self._settings

    @property
    def settings(self) -> Settings:
        """The configuration, with the log file in the data dir set up."""
        settings = self.load_settings()
        if not self._logging:
            from ops import logging as logging_mod
            from ops.line import DataPaths

            logging_mod.configure(
                log_file=DataPaths(settings.data_dir).logs / "cardline.log",
                level=settings.log_level,
                console_level="ERROR",
            )
            self._logging = True
        return settings

    def store(self, *, readonly: bool = False) -> Store:
        """The configured status store (SchemaOutOfDate when it needs an upgrade);
        disposed of when the command ends."""
        if readonly not in self._stores:
            from ops.store import open_checked

            store = open_checked(self.settings, readonly=readonly)
            self._stores[readonly] = store
            click.get_current_context().call_on_close(store.dispose)
        return self._stores[readonly]

    @functools.cached_property
    def out(self) -> Console:
        """The console on stdout (tables, JSON)."""
        from rich.console import Console

        return Console()

    @functools.cached_property
    def err(self) -> Console:
        """The console on stderr (progress, errors, what is shown once)."""
        from rich.console import Console

        return Console(stderr=True)


pass_app = click.make_pass_decorator(CliContext, ensure=True)


def _set_data_dir(ctx: click.Context, _param: click.Parameter, value: Path | None) -> None:
    if value is not None:
        ctx.ensure_object(CliContext).data_dir = value


def data_dir_option(fn: F) -> F:
    return click.option(
        "--data-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        expose_value=False,
        callback=_set_data_dir,
        help="Data directory (env CARDLINE_DATA_DIR, default ./var).",
    )(fn)


def json_option(fn: F) -> F:
    return click.option(
        "--json",
        "as_json",
        is_flag=True,
        help="End with one JSON object on the last line of stdout.",
    )(fn)


def handle_errors(fn: F) -> F:
    """Turn Cardline's errors into a one-line message and a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CardlineError as exc:
            from rich.markup import escape

            prefix, code = next((p, c) for kind, p, c in ERROR_REPORTS if isinstance(exc, kind))
            app = click.get_current_context().find_object(CliContext) or CliContext()
            app.err.print(f"{prefix}{escape(str(exc))}", highlight=False, soft_wrap=True)
            sys.exit(code)

    return wrapper  # type: ignore[return-value]  # functools.wraps keeps the signature


def print_json(obj: dict[str, Any]) -> None:
    click.echo(json.dumps(obj, sort_keys=True, default=str))
