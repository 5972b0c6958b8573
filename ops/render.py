"""Rich tables for the line summary and the JSON object scripts read."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Group
from rich.markup import escape
from rich.table import Table

from db.summary import LineSummary
from schemas.alerts import Alert


def summary_json(
    summary: LineSummary, *, elapsed_s: float | None = None, **extra: Any
) -> dict[str, Any]:
    data = summary.as_dict()
    if elapsed_s is not None:
        data["elapsed_s"] = round(elapsed_s, 3)
    data.update(extra)
    return data


def _counts_table(
    title: str, counts: dict[str, int], *, key: str = "state", total: bool = True
) -> Table:
    table = Table(title=title)
    table.add_column(key)
    table.add_column("count", justify="right")
    for name, count in sorted(counts.items()):
        table.add_row(name, str(count))
    if total:
        table.add_row("[bold]total[/]", f"[bold]{sum(counts.values())}[/]")
    return table


def _audit_chain(summary: LineSummary) -> str:
    if summary.audit_chain_ok is None:
        return "not verified here (`cardline status` or `cardline audit verify` does)"
    if not summary.audit_chain_ok:
        return f"[bold red]BROKEN[/] {escape(summary.audit_problem or '')}".rstrip()
    sealed = summary.audit_sealed_seq
    if not summary.audit_checkpoints_checked:
        return "verified (checkpoints not checked: no master key)"
    return f"verified, sealed through event {sealed}" if sealed else "verified (not sealed yet)"


def summary_tables(summary: LineSummary, *, elapsed_s: float | None = None) -> list[Table]:
    overview = Table(title="Line")
    overview.add_column("measure")
    overview.add_column("value", justify="right")
    active = summary.cards.get("active", 0)
    rows = [
        ("blanks used", str(summary.blanks_used)),
        ("attempts succeeded", str(summary.attempts.get("succeeded", 0))),
        ("attempts spoiled", str(summary.attempts.get("spoiled", 0))),
        ("waiting for the line", str(summary.in_production)),
        ("outbox unsent", str(summary.outbox_unsent)),
        ("PIN letters pending", str(summary.letters_pending)),
        ("soft tokens pending", str(summary.softtokens_pending)),
        ("needs attention", str(len(summary.needs_attention))),
        ("audit events", str(summary.audit_events)),
        ("audit chain", _audit_chain(summary)),
    ]
    if elapsed_s is not None:
        rows.append(("elapsed", f"{elapsed_s:.1f} s"))
        if elapsed_s > 0:
            rows.append(("active cards per minute", f"{active / elapsed_s * 60:.0f}"))
    for name, value in rows:
        overview.add_row(name, value)
    tables = [
        _counts_table("Cards", summary.cards),
        _counts_table("Certificates", summary.certificates),
        overview,
    ]
    if summary.soft_tokens:
        tables.insert(2, _counts_table("Soft tokens", summary.soft_tokens))
    if summary.queues:
        tables.append(_counts_table("Work waiting", summary.queues, key="queue", total=False))
    if summary.stations:
        stations = Table(title="Stations")
        for col in ("station", "line", "status", "done", "spoiled", "last heartbeat"):
            stations.add_column(col)
        for st in summary.stations:
            stations.add_row(
                st["id"],
                st["line"],
                st["status"],
                str(st["cards_done"]),
                str(st["cards_spoiled"]),
                st["heartbeat_at"][:19],
            )
        tables.append(stations)
    if summary.needs_attention:
        items = Table(title="Needs attention (cardline attention resolve ID once fixed)")
        for col in ("id", "what", "waiting for", "reason", "since"):
            items.add_column(col)
        for a in summary.needs_attention:
            items.add_row(
                str(a["id"]),
                f"{a['entity']} {a['entity_id']}",
                a["wait"],
                a["reason"],
                a["since"][:19],
            )
        tables.append(items)
    return tables


def paths_table(paths: dict[str, str]) -> Table:
    table = Table(title="What was written where")
    table.add_column("what")
    table.add_column("path")
    for name, path in paths.items():
        table.add_row(name, path)
    return table


SEVERITY_STYLE = {"critical": "bold red", "warning": "yellow"}


def alerts_table(alerts: Sequence[Alert]) -> Table:
    table = Table(title=f"Open alerts ({len(alerts)})")
    for col in ("severity", "alert", "subject", "since"):
        table.add_column(col, no_wrap=True)
    table.add_column("what is wrong", ratio=1)
    table.add_column("what to do", ratio=1)
    for a in alerts:
        style = SEVERITY_STYLE.get(a.severity.value, "")
        table.add_row(
            f"[{style}]{a.severity.value}[/]",
            a.name,
            escape(a.subject),
            a.since.isoformat(timespec="seconds")[:19].replace("T", " "),
            escape(a.detail),
            escape(a.what_to_do),
        )
    return table


def watch_view(summary: LineSummary, alerts: Sequence[Alert], *, at: str) -> Group:
    """One frame of ``cardline status --watch``: the status tables and the open alerts."""
    title = f"[bold]Cardline[/] at {at} (Ctrl-C to stop)"
    alert_part: Any = alerts_table(alerts) if alerts else "[green]no open alerts[/]"
    return Group(title, *summary_tables(summary), alert_part)
