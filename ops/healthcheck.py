"""Container health checks: ``python -m ops.healthcheck {relay|worker|station} [--id ST1]``.

Exit 0 when healthy; otherwise print one line saying why and exit 1. Every role is
healthy only when the status store answers; a station also needs its ``stations`` row
to show a heartbeat within the last 30 seconds and a status other than ``offline``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Sequence

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from db.engine import open_store
from db.models import Station
from ops import config
from ops.store import missing_sqlite_file
from schemas.errors import ConfigurationError

ROLES = ("relay", "worker", "station")
HEARTBEAT_MAX_AGE = dt.timedelta(seconds=30)


class Unhealthy(Exception):
    """Why the process is not healthy (one line)."""


def check(role: str, station_id: str | None = None, *, now: dt.datetime | None = None) -> str:
    """Return a one-line description of the healthy state, or raise Unhealthy."""
    if role == "station" and not station_id:
        raise Unhealthy("station check needs --id")
    try:
        settings = config.load()
    except ConfigurationError as exc:
        raise Unhealthy(f"configuration: {_one_line(exc)}") from exc
    url = settings.db_url
    missing = missing_sqlite_file(url)
    if missing is not None:  # opening it would create an empty file: report instead
        raise Unhealthy(f"no status store at {missing}")
    store = open_store(url, readonly=True, pool_size=1)
    try:
        with store.read() as s:
            s.execute(text("select 1"))
            if role != "station":
                return f"{role}: status store answers"
            row = s.get(Station, station_id)
    except SQLAlchemyError as exc:
        raise Unhealthy(f"status store: {type(exc).__name__}: {_one_line(exc)}") from exc
    finally:
        store.dispose()
    if row is None:
        raise Unhealthy(f"station {station_id} has not registered")
    if row.status == "offline":
        raise Unhealthy(f"station {station_id} is offline")
    age = (now or dt.datetime.now(dt.UTC)) - row.heartbeat_at
    if age > HEARTBEAT_MAX_AGE:
        raise Unhealthy(f"station {station_id}: last heartbeat {age.total_seconds():.0f} s ago")
    return f"station {station_id}: {row.status}, heartbeat {age.total_seconds():.0f} s ago"


def _one_line(exc: Exception) -> str:
    """The first line of an error's message (a DB-API error's own, without the SQL)."""
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.healthcheck", description=__doc__)
    parser.add_argument("role", choices=ROLES)
    parser.add_argument("--id", dest="station_id", help="the station id (station role)")
    args = parser.parse_args(argv)
    try:
        state = check(args.role, args.station_id)
    except Unhealthy as exc:
        print(f"unhealthy: {exc}")
        return 1
    print(f"healthy: {state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
