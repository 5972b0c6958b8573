"""The scheduled expiry check the relay process runs, and what ``cardline expiry
check`` (``ops.cli.expiry``) prints.

The ``[expiry]`` table of CARDLINE_CONFIG (``schemas.expiry.ExpiryConfig``) sets
``warn_days``, ``frequency``, ``check_interval_s`` and ``expire_states``.
"""

from __future__ import annotations

import datetime as dt
import threading

import structlog

from db.engine import Store
from ops.config import Settings
from ops.store import open_checked
from producers.expiry import ExpiryReport, check_expiry
from schemas.errors import ValidationFailed
from schemas.expiry import ExpiryConfig

log = structlog.get_logger(__name__)
# After a failed check, try again this soon (or at the interval, if that is shorter).
RETRY_S = 60.0


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
    (otherwise the loop opens its own); ``config`` defaults to the ``[expiry]`` table.
    """
    config = config or settings.expiry
    own = store is None
    store = store or open_checked(settings)
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
        lines.append(f"their holders' certificates revoked: {report.revoked_at_assignment_end}")
    return lines
