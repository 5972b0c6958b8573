"""The ``cardline`` command line."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console

from db.engine import open_store
from db.migrate import upgrade
from db.summary import summarise
from ops import config as config_mod
from ops import logging as logging_mod
from ops.config import Settings
from ops.line import DataPaths, LineOptions, open_migrated
from ops.render import summary_json, summary_tables
from schemas.errors import CardlineError, ConfigurationError

F = TypeVar("F", bound=Callable[..., Any])
err_console = Console(stderr=True)
out_console = Console()


def data_dir_option(fn: F) -> F:
    return click.option(
        "--data-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Data directory (env CARDLINE_DATA_DIR, default ./var).",
    )(fn)


def json_option(fn: F) -> F:
    return click.option(
        "--json",
        "as_json",
        is_flag=True,
        help="End with one JSON object on the last line of stdout.",
    )(fn)


def line_options(fn: F) -> F:
    fn = click.option(
        "--stations",
        type=click.IntRange(1, 64),
        default=4,
        show_default=True,
        help="Simulated stations.",
    )(fn)
    fn = click.option(
        "--fault-rate",
        type=click.FloatRange(0, 1),
        default=0.0,
        show_default=True,
        help="Probability that an attempt hits a fault.",
    )(fn)
    fn = click.option(
        "--time-scale",
        type=click.FloatRange(min=0),
        default=0.01,
        show_default=True,
        help="Scale of the simulated device timings.",
    )(fn)
    fn = click.option(
        "--seed", type=int, default=None, help="Seed for simulated faults and serials."
    )(fn)
    return fn


def handle_errors(fn: F) -> F:
    """Turn Cardline's errors into a one-line message and a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ConfigurationError as exc:
            err_console.print(f"[bold red]configuration error:[/] {exc}", highlight=False)
            sys.exit(3)
        except CardlineError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]  # functools.wraps keeps the signature


def settings_for(data_dir: Path | None) -> Settings:
    settings = config_mod.load(data_dir)
    logging_mod.configure(
        log_file=DataPaths(settings.data_dir).logs / "cardline.log",
        level=settings.log_level,
        console_level="ERROR",
    )
    return settings


def print_json(obj: dict[str, Any]) -> None:
    click.echo(json.dumps(obj, sort_keys=True, default=str))


@click.group()
@click.version_option(package_name="cardline")
def main() -> None:
    """Cardline: smart card production, from requests to active cards."""


# --- the status store --------------------------------------------------------------


@main.group()
def db() -> None:
    """The status store."""


@db.command("upgrade")
@data_dir_option
@handle_errors
def db_upgrade(data_dir: Path | None) -> None:
    """Create or migrate the status store schema to the newest revision."""
    settings = settings_for(data_dir)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    revision = upgrade(open_store(settings.db_url))
    click.echo(f"status store at revision {revision}")


@main.command()
@data_dir_option
@json_option
@handle_errors
def status(data_dir: Path | None, as_json: bool) -> None:
    """Counts by state, stations and queue depth (safe while the line runs)."""
    settings = settings_for(data_dir)
    store = open_store(settings.db_url, readonly=True)
    with store.read() as s:
        summary = summarise(s)
    if as_json:
        print_json(summary_json(summary))
        return
    for table in summary_tables(summary):
        out_console.print(table)


# --- batches ------------------------------------------------------------------------


@main.group()
def batch() -> None:
    """Batch orders: import a CSV of card requests, approve or reject it."""


@batch.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--by",
    "requested_by",
    default="operator",
    show_default=True,
    help="Who requests the cards (may not approve them).",
)
@click.option("--line", default=None, help="Station line to produce on.")
@data_dir_option
@json_option
@handle_errors
def batch_import(
    file: Path, requested_by: str, line: str | None, data_dir: Path | None, as_json: bool
) -> None:
    """Import FILE (CSV, UTF-8) as one batch order of card requests."""
    from ops.intake import import_file

    settings = settings_for(data_dir)
    code = import_file(
        settings, file, requested_by=requested_by, line=line, as_json=as_json, console=out_console
    )
    sys.exit(code)


@batch.command("approve")
@click.argument("batch_id", type=int)
@click.option("--by", "approver", required=True, help="The approver (not the requester).")
@data_dir_option
@handle_errors
def batch_approve(batch_id: int, approver: str, data_dir: Path | None) -> None:
    """Approve batch BATCH_ID: every requested card in it goes to production."""
    from producers.approvals import approve_batch

    settings = settings_for(data_dir)
    report = approve_batch(open_migrated(settings), batch_id, by=approver)
    click.echo(f"batch {report.batch_id} approved by {approver}: {report.approved} cards")


@batch.command("reject")
@click.argument("batch_id", type=int)
@click.option("--by", "approver", required=True)
@click.option("--reason", required=True)
@data_dir_option
@handle_errors
def batch_reject(batch_id: int, approver: str, reason: str, data_dir: Path | None) -> None:
    """Reject batch BATCH_ID and every requested card in it."""
    from producers.approvals import reject_batch

    settings = settings_for(data_dir)
    report = reject_batch(open_migrated(settings), batch_id, by=approver, reason=reason)
    click.echo(f"batch {report.batch_id} rejected by {approver}")


# --- the line -----------------------------------------------------------------------


@main.command()
@click.option(
    "--cards",
    type=click.IntRange(1, 100_000),
    default=100,
    show_default=True,
    help="Synthetic users (one card each) to generate.",
)
@click.option(
    "--input",
    "input_csv",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Import this CSV instead of generating.",
)
@click.option("--example", is_flag=True, help="Import the bundled example CSV.")
@click.option(
    "--seed-only",
    is_flag=True,
    help="Only seed users and an approved batch into the configured store; "
    "run no line (separate relay/worker/station processes produce it).",
)
@line_options
@data_dir_option
@json_option
@handle_errors
def demo(
    cards: int,
    input_csv: Path | None,
    example: bool,
    seed_only: bool,
    stations: int,
    fault_rate: float,
    time_scale: float,
    seed: int | None,
    data_dir: Path | None,
    as_json: bool,
) -> None:
    """The main job: a fresh data dir, a batch of users, approval, the line, a summary."""
    from ops.demo import DemoOptions, run_demo, seed_batch

    if seed_only:
        report = seed_batch(
            settings_for(data_dir), cards=cards, input_csv=input_csv, example=example, seed=seed
        )
        if as_json:
            print_json(report)
        else:
            click.echo(f"seeded batch {report['batch_id']}: {report['cards']} approved cards")
        return
    options = DemoOptions(
        cards=cards,
        input_csv=input_csv,
        example=example,
        line=LineOptions(
            stations=stations, fault_rate=fault_rate, time_scale=time_scale, seed=seed
        ),
    )
    settings = config_mod.load(data_dir)
    sys.exit(run_demo(settings, options, as_json=as_json, console=out_console))


@main.command()
@line_options
@data_dir_option
@json_option
@handle_errors
def run(
    stations: int,
    fault_rate: float,
    time_scale: float,
    seed: int | None,
    data_dir: Path | None,
    as_json: bool,
) -> None:
    """Run the embedded line on an existing data dir until it is drained (also resumes
    after a crash)."""
    from ops.demo import run_line

    settings = settings_for(data_dir)
    options = LineOptions(
        stations=stations, fault_rate=fault_rate, time_scale=time_scale, seed=seed
    )
    sys.exit(run_line(settings, options, as_json=as_json, console=out_console))


# --- one process per role -------------------------------------------------------------


@main.command()
@click.option(
    "--approved-stall-s",
    type=float,
    default=30.0,
    show_default=True,
    help="Re-publish prepare for cards approved longer ago than this.",
)
@click.option(
    "--ready-stall-s",
    type=float,
    default=120.0,
    show_default=True,
    help="Re-publish produce for cards ready longer ago than this.",
)
@click.option(
    "--reconcile-s",
    type=float,
    default=2.0,
    show_default=True,
    help="How often the reconciler sweeps.",
)
@data_dir_option
@handle_errors
def relay(
    approved_stall_s: float, ready_stall_s: float, reconcile_s: float, data_dir: Path | None
) -> None:
    """Outbox relay and reconciler (several may run at once)."""
    from ops.roles import run_relay, stop_on_signals
    from workers.relay import StallPolicy

    settings = settings_for(data_dir)
    stall = StallPolicy(
        approved_s=approved_stall_s,
        ready_s=ready_stall_s,
        letter_s=approved_stall_s,
        reconcile_s=reconcile_s,
    )
    run_relay(settings, stop_on_signals(), stall=stall)


@main.command()
@click.option(
    "--queues",
    default="prepare,pki,notify",
    show_default=True,
    help="Comma-separated worker queues to consume.",
)
@click.option("--threads", type=click.IntRange(1, 64), default=4, show_default=True)
@data_dir_option
@handle_errors
def worker(queues: str, threads: int, data_dir: Path | None) -> None:
    """The prepare, pki and notify actors."""
    from ops.roles import run_worker, stop_on_signals

    chosen = [q.strip() for q in queues.split(",") if q.strip()]
    run_worker(settings_for(data_dir), stop_on_signals(), queues=chosen, threads=threads)


@main.command()
@click.option("--id", "station_id", required=True, help="Unique station id, e.g. ST1.")
@click.option("--line", default="default", show_default=True)
@click.option(
    "--lease-s",
    type=float,
    default=30.0,
    show_default=True,
    help="Lease on the card in hand, renewed by heartbeat.",
)
@click.option("--heartbeat-s", type=float, default=5.0, show_default=True)
@click.option("--fault-rate", type=click.FloatRange(0, 1), default=0.0, show_default=True)
@click.option("--time-scale", type=click.FloatRange(min=0), default=0.01, show_default=True)
@click.option("--seed", type=int, default=None)
@data_dir_option
@handle_errors
def station(
    station_id: str,
    line: str,
    lease_s: float,
    heartbeat_s: float,
    fault_rate: float,
    time_scale: float,
    seed: int | None,
    data_dir: Path | None,
) -> None:
    """One station: consumes its line's queue one card at a time."""
    from ops.roles import run_station, stop_on_signals
    from stations.runtime import StationConfig

    config = StationConfig(
        station_id=station_id, line=line, lease_s=lease_s, heartbeat_s=heartbeat_s
    )
    run_station(
        settings_for(data_dir),
        stop_on_signals(),
        config=config,
        time_scale=time_scale,
        fault_rate=fault_rate,
        seed=seed,
    )


if __name__ == "__main__":
    main()
