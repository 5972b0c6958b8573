"""One process per role: ``cardline relay``, ``cardline worker``, ``cardline station``.

Each runs until SIGTERM or SIGINT: the relay finishes its turn, a worker finishes the
messages in hand, a station finishes (or hands back) the card in its printer. Each is
safe under SIGKILL: the store remembers what was unfinished and the reconciler (or the
restarted station) repairs it.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterable
from typing import cast

import dramatiq
import structlog

from db.checkpoints import CheckpointKey
from ops.config import Settings
from ops.expiry import run_expiry_loop
from ops.line import DataPaths, worker_context
from ops.store import master_key_check, open_checked
from schemas.station import StationEntry
from stations.chips import SimChipStore
from stations.desk import DeskConfig, DeskToken, UpdateDesk
from stations.runtime import Station, StationConfig
from stations.setup import build_desk_drivers, build_drivers
from workers import actors
from workers.broker import WORKER_QUEUES, make_broker
from workers.context import WorkerContext
from workers.metrics import serve_worker_metrics
from workers.relay import Relay, StallPolicy

log = structlog.get_logger(__name__)


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT (the process then winds down cleanly)."""
    stop = threading.Event()

    def _handler(signum: int, _frame: object) -> None:
        log.info("process.stopping", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)
    return stop


def run_relay(settings: Settings, stop: threading.Event, *, stall: StallPolicy) -> None:
    store = open_checked(settings)
    # The relay seals the audit chain under a key derived from the master key: it
    # must be the store's own, or every checkpoint it seals would read as forged.
    master_key_check(settings, store)
    broker = make_broker(settings.broker_url)
    relay = Relay(
        store,
        broker,
        settings.policy,
        stall=stall,
        mail=settings.mailer() is not None,
        checkpoint_key=CheckpointKey.from_box(settings.secret_box()),
    )
    checker = threading.Thread(
        target=run_expiry_loop,
        args=(settings, stop),
        kwargs={"store": store},
        name="expiry-check",
        daemon=True,
    )
    log.info("relay.started", broker=_safe_url(settings.broker_url))
    checker.start()
    try:
        relay.run(stop)
    finally:
        checker.join(timeout=30)
        broker.close()
        store.dispose()
    log.info("relay.stopped", published=relay.published)


def worker_context_for(settings: Settings) -> WorkerContext:
    return worker_context(settings, open_checked(settings), settings.secret_box())


def run_worker(
    settings: Settings, stop: threading.Event, *, queues: Iterable[str], threads: int
) -> None:
    chosen = set(queues)
    unknown = chosen - set(WORKER_QUEUES)
    if unknown:
        raise ValueError(f"unknown queues {sorted(unknown)}; choose from {WORKER_QUEUES}")
    ctx = worker_context_for(settings)
    broker = make_broker(settings.broker_url)
    address = settings.worker_metrics_address
    # CARDLINE_WORKER_METRICS_PORT: dramatiq's Prometheus middleware and its server.
    stop_metrics = serve_worker_metrics(broker, *address) if address else None
    actors.register(broker, ctx)
    worker = dramatiq.Worker(broker, queues=chosen, worker_threads=threads)
    worker.start()
    log.info("worker.started", queues=sorted(chosen), threads=threads, metrics=address)
    stop.wait()
    worker.stop(timeout=30_000)
    if stop_metrics is not None:
        stop_metrics()
    broker.close()
    ctx.store.dispose()
    log.info("worker.stopped")


def run_station(
    settings: Settings,
    stop: threading.Event,
    *,
    config: StationConfig,
    entry: StationEntry,
) -> Station:
    """One station on the drivers ``entry`` configures, until ``stop`` is set."""
    paths = DataPaths(settings.data_dir)
    paths.make()
    drivers = build_drivers(
        entry,
        output_dir=paths.printed / config.station_id,
        chips=SimChipStore(paths.chips, settings.secret_box()),
    )
    store = open_checked(settings)
    broker = make_broker(settings.broker_url)
    desk = (
        UpdateDesk(
            store,
            settings.secret_box(),
            DeskConfig(station_id=config.station_id, lease_s=config.lease_s),
            drivers.reader,
            cast(DeskToken, drivers.token),
            settings.policy,
        )
        if entry.updates
        else None
    )
    station = Station(
        config,
        printer=drivers.printer,
        reader=drivers.reader,
        token=drivers.token,
        store=store,
        box=settings.secret_box(),
        policy=settings.policy,
        broker=broker,
        faces_dir=paths.faces,
        desk=desk,
    )
    log.info(
        "station.started",
        station=config.station_id,
        line=config.line,
        reader=entry.reader.driver,
        token=entry.token.driver,
        printer=entry.printer.driver,
    )
    try:
        station.run(stop)
    finally:
        drivers.close()
        broker.close()
        store.dispose()
    log.info(
        "station.stopped",
        station=config.station_id,
        produced=station.produced,
        spoiled=station.spoiled,
    )
    return station


def run_desk(
    settings: Settings, stop: threading.Event, *, station_id: str, entry: StationEntry
) -> UpdateDesk:
    """An update desk (``role = "update"``) on the reader and token ``entry``
    configures, until ``stop`` is set. With a simulated reader, simulated holders bring
    every card with a pending update; the simulated chips are the data dir's."""
    paths = DataPaths(settings.data_dir)
    paths.make()
    box = settings.secret_box()
    drivers = build_desk_drivers(entry, chips=SimChipStore(paths.chips, box))
    store = open_checked(settings)
    desk = UpdateDesk(
        store,
        box,
        DeskConfig(station_id=station_id, lease_s=entry.lease_s, heartbeat_s=entry.heartbeat_s),
        drivers.reader,
        drivers.token,
        settings.policy,
    )
    log.info(
        "desk.started", station=station_id, reader=entry.reader.driver, token=entry.token.driver
    )
    try:
        desk.run(stop, line=entry.line, holders=drivers.sim_reader)
    finally:
        drivers.close()
        store.dispose()
    log.info(
        "desk.stopped",
        station=station_id,
        applied=desk.applied,
        failed=desk.failed,
        postponed=desk.postponed,
    )
    return desk


def _safe_url(url: str) -> str:
    """A broker URL without its password, for logs."""
    scheme, sep, rest = url.partition("://")
    if "@" not in rest:
        return url
    creds, _, host = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}{sep}{user}:****@{host}"
