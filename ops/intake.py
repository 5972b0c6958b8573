"""``cardline batch import``: run the import and tell the operator what happened."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ops.config import Settings
from ops.line import DataPaths
from ops.store import open_checked
from producers.batch_import import (
    DEFAULT_MAX_REJECTS,
    DEFAULT_MAX_ROWS,
    ImportReport,
    import_batch,
)

MAX_REJECTS_SHOWN = 20


def report_json(report: ImportReport) -> dict[str, object]:
    return {
        "batch_id": report.batch_id,
        "already_imported": report.already_imported,
        "users_created": report.users_created,
        "users_updated": report.users_updated,
        "cards_requested": report.cards_requested,
        "rejected": [
            {"line": r.line, "field": r.field, "reason": r.reason} for r in report.rejected
        ],
        "reject_report": str(report.reject_report) if report.reject_report else None,
    }


def print_report(report: ImportReport, console: Console) -> None:
    if report.already_imported:
        console.print(
            f"{report.name}: already imported as batch {report.batch_id}; nothing new created"
        )
        return
    console.print(
        f"{report.name}: batch {report.batch_id}: {report.cards_requested} card requests, "
        f"{report.users_created} users created, {report.users_updated} updated, "
        f"{len(report.rejected)} rows rejected"
    )
    if report.rejected:
        table = Table(title="Rejected rows")
        for col in ("line", "field", "reason"):
            table.add_column(col)
        for row in report.rejected[:MAX_REJECTS_SHOWN]:
            table.add_row(str(row.line), row.field or "", row.reason)
        console.print(table)
        if len(report.rejected) > MAX_REJECTS_SHOWN:
            console.print(f"... and {len(report.rejected) - MAX_REJECTS_SHOWN} more")
        console.print(f"reject report: {report.reject_report}")


def import_file(
    settings: Settings,
    path: Path,
    *,
    requested_by: str,
    line: str | None,
    as_json: bool,
    console: Console,
    ignore_columns: tuple[str, ...] = (),
    max_rows: int = DEFAULT_MAX_ROWS,
    max_rejects: int = DEFAULT_MAX_REJECTS,
) -> int:
    """Import ``path``; exit code 0 when every row was accepted, 1 when some were rejected."""
    store = open_checked(settings)
    paths = DataPaths(settings.data_dir)
    paths.make()
    report = import_batch(
        store,
        path,
        policy=settings.policy,
        requested_by=requested_by,
        reject_dir=paths.rejects,
        line=line,
        ignore_columns=ignore_columns,
        max_rows=max_rows,
        max_rejects=max_rejects,
    )
    if as_json:
        console.print_json(json.dumps(report_json(report)))
    else:
        print_report(report, console)
    return 1 if report.rejected else 0
