"""The embedded line: ``cardline demo``, ``cardline run`` and ``cardline status``."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from ops.cli.context import (
    CliContext,
    data_dir_option,
    handle_errors,
    json_option,
    pass_app,
    print_json,
)

F = TypeVar("F", bound=Callable[..., Any])


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


@click.command()
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
@pass_app
@handle_errors
def demo(
    app: CliContext,
    cards: int,
    input_csv: Path | None,
    example: bool,
    seed_only: bool,
    stations: int,
    fault_rate: float,
    time_scale: float,
    seed: int | None,
    as_json: bool,
) -> None:
    """The main job: a fresh data dir, a batch of users, approval, the line, a summary."""
    from ops.demo import DemoOptions, run_demo, seed_batch
    from ops.line import LineOptions

    if seed_only:
        report = seed_batch(
            app.settings, cards=cards, input_csv=input_csv, example=example, seed=seed
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
    # Not app.settings: that would start the log file in the data dir the demo empties.
    sys.exit(run_demo(app.load_settings(), options, as_json=as_json, console=app.out))


@click.command()
@line_options
@data_dir_option
@json_option
@pass_app
@handle_errors
def run(
    app: CliContext,
    stations: int,
    fault_rate: float,
    time_scale: float,
    seed: int | None,
    as_json: bool,
) -> None:
    """Run the embedded line on an existing data dir until it is drained (also resumes
    after a crash)."""
    from ops.demo import run_line
    from ops.line import LineOptions

    options = LineOptions(
        stations=stations, fault_rate=fault_rate, time_scale=time_scale, seed=seed
    )
    sys.exit(run_line(app.settings, options, as_json=as_json, console=app.out))


@click.command()
@click.option("--watch", is_flag=True, help="A live view, refreshed until Ctrl-C.")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=1.0,
    show_default=True,
    help="Seconds between refreshes of --watch.",
)
@click.option("--count", type=click.IntRange(min=1), default=None, hidden=True)
@data_dir_option
@json_option
@pass_app
@handle_errors
def status(app: CliContext, watch: bool, interval: float, count: int | None, as_json: bool) -> None:
    """Counts by state, stations and queue depth (safe while the line runs); the audit
    chain is verified, against its signed checkpoints too when the master key is here.
    With --watch, the same tables and the open alerts, live (the chain is not verified
    on every refresh); --count stops after that many refreshes (tests)."""
    from db.checkpoints import CheckpointKey
    from db.summary import summarise
    from ops.render import summary_json, summary_tables
    from ops.store import held_master_box

    if watch:
        if as_json:
            raise click.UsageError("--watch shows a live view: it takes no --json")
        _watch(app, interval=interval, count=count)
        return
    box = held_master_box(app.settings)
    key = CheckpointKey.from_box(box) if box is not None else None
    with app.store(readonly=True).read() as s:
        summary = summarise(s, checkpoint_key=key)
    if as_json:
        print_json(summary_json(summary))
        return
    for table in summary_tables(summary):
        app.out.print(table)


def _watch(app: CliContext, *, interval: float, count: int | None) -> None:
    """Refresh the status and the open alerts every ``interval`` seconds until Ctrl-C
    (exit code 0) or ``count`` refreshes."""
    import time

    from rich.console import Group
    from rich.live import Live

    from db.alerts import open_alerts
    from db.models import utcnow
    from db.summary import summarise
    from ops.render import watch_view

    store = app.store(readonly=True)
    config = app.settings.alerts

    def frame() -> Group:
        with store.read() as s:
            summary = summarise(s, verify_audit=False)
            alerts = open_alerts(s, config)
        return watch_view(summary, alerts, at=utcnow().isoformat(timespec="seconds"))

    shown = 0
    try:
        with Live(frame(), console=app.out, refresh_per_second=4, screen=False) as live:
            shown = 1
            while count is None or shown < count:
                time.sleep(interval)
                live.update(frame())
                shown += 1
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a watch ends


COMMANDS = (demo, run, status)
