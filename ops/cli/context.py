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

from schemas.errors import (
    CardlineError,
    ConfigurationError,
    Forbidden,
    FourEyesViolation,
    Refused,
    SchemaOutOfDate,
    Unauthorized,
)

if TYPE_CHECKING:
    from rich.console import Console

    from db.engine import Store
    from ops.config import Settings
    from producers.principals import Caller

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
    who: Caller | None = None  # the principal the command acts as, once proved

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

    def presented_token(self) -> str:
        """The operator's token: ``CARDLINE_TOKEN``, else the file ``cardline login``
        wrote (refused if others may read it)."""
        settings = self.load_settings()
        if settings.token is not None:
            return settings.token.get_secret_value().strip()
        path = settings.token_file.expanduser()
        try:
            mode = path.stat().st_mode
            text = path.read_text(encoding="utf-8").strip()
        except OSError:
            raise Unauthorized(
                "no token: run `cardline login` or set CARDLINE_TOKEN "
                "(an administrator creates tokens: `cardline token create`)"
            ) from None
        if mode & 0o077:
            raise Unauthorized(f"{path} may be read by others: chmod 600 it, or log in again")
        return text

    def caller(self, use_case: str) -> Caller:
        """The principal whose token this is, verified against the store, if its roles
        may run ``use_case``; Forbidden otherwise (audited as refused)."""
        from producers.principals import audit_refusal, authenticate
        from schemas.permissions import roles_for

        store = self.store()  # first: a store behind its schema says so before any token
        who = authenticate(store, self.presented_token())
        self.who = who
        if not who.may(use_case):
            allowed = tuple(sorted(r.value for r in roles_for(use_case)))
            error = Forbidden(who.name, use_case, allowed)
            audit_refusal(self.store(), who, use_case, str(error))
            raise error
        return who

    def perform(
        self,
        who: Caller,
        process: str,
        target: str,
        params: dict[str, Any],
        done: Callable[[Any], str],
    ) -> None:
        """Run a process an approval step may hold (``producers.pending``) as ``who``:
        print ``done(result)``, or the pending request it became."""
        from producers import pending

        settings = self.settings
        outcome = pending.perform(
            self.store(),
            process,
            target,
            params,
            by=who.actor,
            policy=settings.policy,
            steps=settings.approvals,
        )
        if outcome.done:
            click.echo(done(outcome.result))
        else:
            click.echo(
                f"request {outcome.request_id} waits for an approver: {outcome.summary} "
                "(`cardline approvals`)"
            )

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
    """Turn Cardline's errors into a one-line message and a non-zero exit; a proved
    principal's refusal by the four-eyes rule or by ownership is audited as refused."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CardlineError as exc:
            from rich.markup import escape

            prefix, code = next((p, c) for kind, p, c in ERROR_REPORTS if isinstance(exc, kind))
            ctx = click.get_current_context()
            app = ctx.find_object(CliContext) or CliContext()
            if app.who is not None and isinstance(exc, (FourEyesViolation, Refused)):
                from producers.principals import audit_refusal

                audit_refusal(app.store(), app.who, ctx.command_path, str(exc))
            app.err.print(f"{prefix}{escape(str(exc))}", highlight=False, soft_wrap=True)
            sys.exit(code)

    return wrapper  # type: ignore[return-value]  # functools.wraps keeps the signature


def requires(use_case: str) -> Callable[[F], F]:
    """An operator command: it runs as the principal of the presented token, whose
    stored roles must allow ``use_case`` (``schemas.permissions``); the command gets it
    as ``who``. The use case is kept on the command for ``cardline roles`` and the
    role matrix test."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(app: CliContext, *args: Any, **kwargs: Any) -> Any:
            return fn(app, *args, who=app.caller(use_case), **kwargs)

        wrapper.cardline_use_case = use_case  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate


def use_case_of(command: click.Command) -> str | None:
    """The use case an operator command runs (None: a host or process command)."""
    callback = command.callback
    while callback is not None:
        found = getattr(callback, "cardline_use_case", None)
        if found is not None:
            return str(found)
        callback = getattr(callback, "__wrapped__", None)
    return None


def print_json(obj: dict[str, Any]) -> None:
    click.echo(json.dumps(obj, sort_keys=True, default=str))
