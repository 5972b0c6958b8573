"""One process per role: ``cardline relay``, ``cardline worker``, ``cardline station``
(the processes themselves are ``ops.roles``)."""

from __future__ import annotations

from pathlib import Path

import click

from ops.cli.context import CliContext, data_dir_option, handle_errors, pass_app


@click.command()
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
@pass_app
@handle_errors
def relay(
    app: CliContext, approved_stall_s: float, ready_stall_s: float, reconcile_s: float
) -> None:
    """Outbox relay and reconciler (several may run at once)."""
    from ops.roles import run_relay, stop_on_signals
    from workers.relay import StallPolicy

    stall = StallPolicy(
        approved_s=approved_stall_s,
        ready_s=ready_stall_s,
        letter_s=approved_stall_s,
        reconcile_s=reconcile_s,
    )
    run_relay(app.settings, stop_on_signals(), stall=stall)


@click.command()
@click.option(
    "--queues",
    default="prepare,pki,notify",
    show_default=True,
    help="Comma-separated worker queues to consume.",
)
@click.option("--threads", type=click.IntRange(1, 64), default=4, show_default=True)
@data_dir_option
@pass_app
@handle_errors
def worker(app: CliContext, queues: str, threads: int) -> None:
    """The prepare, pki and notify actors."""
    from ops.roles import run_worker, stop_on_signals

    chosen = [q.strip() for q in queues.split(",") if q.strip()]
    run_worker(app.settings, stop_on_signals(), queues=chosen, threads=threads)


@click.command()
@click.option("--id", "station_id", required=True, help="Unique station id, e.g. ST1.")
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="CARDLINE_STATIONS",
    default=None,
    help="stations.toml with a [stations.ID] table: drivers and timeouts "
    "(env CARDLINE_STATIONS; default: all drivers simulated).",
)
@click.option("--line", default=None, help="Line queue to consume [default: default].")
@click.option(
    "--lease-s", type=float, default=None, help="Lease on the card in hand [default: 30]."
)
@click.option("--heartbeat-s", type=float, default=None, help="[default: 5]")
@click.option(
    "--cert-timeout-s",
    type=float,
    default=None,
    help="Waiting this long for certificates shows waiting_for_pki [default: 60].",
)
@click.option(
    "--server-wait-s",
    type=float,
    default=None,
    help="Hold a card this long while the PKI or store is away [default: 1800].",
)
@click.option(
    "--fault-rate",
    type=click.FloatRange(0, 1),
    default=None,
    help="Simulated drivers' fault probability [default: 0].",
)
@click.option(
    "--time-scale",
    type=click.FloatRange(min=0),
    default=None,
    help="Simulated drivers' timing scale [default: 0.01].",
)
@click.option("--seed", type=int, default=None)
@data_dir_option
@pass_app
@handle_errors
def station(
    app: CliContext,
    station_id: str,
    config_path: Path | None,
    line: str | None,
    lease_s: float | None,
    heartbeat_s: float | None,
    cert_timeout_s: float | None,
    server_wait_s: float | None,
    fault_rate: float | None,
    time_scale: float | None,
    seed: int | None,
) -> None:
    """One station: consumes its line's queue one card at a time, or, configured with
    role = "update", an update desk applying pending updates to the cards inserted.

    Its drivers come from --config ([stations.ID]); options given here override the
    file's values.
    """
    from ops.roles import run_desk, run_station, stop_on_signals
    from schemas.station import StationEntry
    from stations.runtime import StationConfig
    from stations.setup import station_entry, with_overrides

    entry = station_entry(config_path, station_id) if config_path else StationEntry()
    entry = with_overrides(
        entry,
        line=line,
        lease_s=lease_s,
        heartbeat_s=heartbeat_s,
        cert_timeout_s=cert_timeout_s,
        server_wait_s=server_wait_s,
        fault_rate=fault_rate,
        time_scale=time_scale,
        seed=seed,
    )
    if entry.role == "update":
        run_desk(app.settings, stop_on_signals(), station_id=station_id, entry=entry)
        return
    config = StationConfig(
        station_id=station_id,
        line=entry.line,
        lease_s=entry.lease_s,
        heartbeat_s=entry.heartbeat_s,
        chip_timeout_s=entry.chip_timeout_s,
        cert_timeout_s=entry.cert_timeout_s,
        server_wait_s=entry.server_wait_s,
    )
    run_station(app.settings, stop_on_signals(), config=config, entry=entry)


COMMANDS = (relay, worker, station)
