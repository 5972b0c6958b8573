"""``cardline expiry check`` and the scheduled check the relay process runs.

The ``[expiry]`` table of CARDLINE_CONFIG (``schemas.expiry.ExpiryConfig``) sets
``warn_days``, ``frequency``, ``check_interval_s`` and ``expire_states``.

This module does not import ``ops.cli`` at import time (``ops.cli`` registers the
group defined here); the command takes the CLI's helpers when it runs.
"""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path

import click
import structlog

from db.engine import Store
from ops.config import Settings
from ops.line import open_migrated
from producers.expiry import ExpiryReport, check_expiry
from schemas.errors import ValidationFailed
from schemas.expiry import ExpiryConfig

log = structlog.get_logger(__name__)
# After a failed check, try again this soon (or at the interval, if that is shorter).
RETRY_S = 60.0


def expiry_config(settings: Settings) -> ExpiryConfig:
    """The ``[expiry]`` table, validated (ConfigurationError when it is wrong)."""
    return settings._validated("expiry", ExpiryConfig)


def run_expiry_loop(
    settings: Settings,
    stop: threading.Event,
    *,
    store: Store | None = None,
    config: ExpiryConfig | None = None,
) -> None:
    """Run the check at once and then every ``check_interval_s`` until ``stop`` is set.

    A failed check (a busy database, a lost connection) is logged and tried again
    after a minute; the loop itself only ends with ``stop``. Pass the relay's ``store``
    and a ``config`` read at start-up so a configuration error stops the start.
    """
    config = config or expiry_config(settings)
    own = store is None
    store = store or open_migrated(settings)
    log.info("expiry.loop_started", interval_s=config.check_interval_s)
    try:
        while not stop.is_set():
            wait = config.check_interval_s
            try:
                check_expiry(store, config)
            except Exception:
                log.exception("expiry.check_failed")
                wait = min(wait, RETRY_S)
            stop.wait(wait)
    finally:
        if own:
            store.dispose()
    log.info("expiry.loop_stopped")


def parse_now(text: str) -> dt.datetime:
    """``2027-01-31`` (midnight UTC) or an ISO date-time (UTC unless it names a zone)."""
    try:
        at = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValidationFailed(f"{text!r} is not an ISO date or date-time", field="now") from None
    return at.replace(tzinfo=dt.UTC) if at.tzinfo is None else at.astimezone(dt.UTC)


def report_lines(report: ExpiryReport) -> list[str]:
    """The report as a few lines for a terminal."""
    lines = [f"period {report.period}"]
    for entity, kinds in report.found.items():
        reminded = report.reminded[entity]
        lines.append(
            f"{entity}: expiring {kinds['expiring']} (reminded {reminded['expiring']}), "
            f"expired {kinds['expired']} (reminded {reminded['expired']}, "
            f"moved to expired {report.expired[entity]})"
        )
    lines.append(f"without a recipient: {report.no_recipient}; sent again: {report.redriven}")
    if report.overdue_temp_cards:
        lines.append(
            "temporary cards past their assignment: " + ", ".join(report.overdue_temp_cards)
        )
    return lines


@click.group()
def expiry() -> None:
    """Expiry checks: remind holders of expiring cards and certificates."""


@expiry.command("check")
@click.option("--now", "now_text", default=None, help="Check as of this ISO date or time (UTC).")
@click.option("--json", "as_json", is_flag=True, help="End with one JSON object on stdout.")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Data directory (env CARDLINE_DATA_DIR, default ./var).",
)
def expiry_check(now_text: str | None, as_json: bool, data_dir: Path | None) -> None:
    """Run the expiry check once: queue reminders, move expired items to expired."""
    from ops.cli import handle_errors

    handle_errors(_check)(now_text, as_json, data_dir)


def _check(now_text: str | None, as_json: bool, data_dir: Path | None) -> None:
    from ops.cli import print_json, settings_for

    now = parse_now(now_text) if now_text else None
    settings = settings_for(data_dir)
    config = expiry_config(settings)
    report = check_expiry(open_migrated(settings), config, now=now)
    for line in report_lines(report):
        click.echo(line)
    if as_json:
        print_json(report.as_dict())
