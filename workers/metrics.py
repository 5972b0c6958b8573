"""dramatiq's own Prometheus metrics for a worker process (``cardline worker``).

dramatiq's ``Prometheus`` middleware counts messages, errors, retries and durations per
queue and actor. It was made for dramatiq's own command line, which forks its worker
processes: the counters live in prometheus-client's multiprocess files and a forked
server exposes them. ``cardline worker`` is one process without that command line, so
``serve_worker_metrics`` does its part: a multiprocess directory of this process's own
(two workers on one host must not add up each other's counts), the middleware's boot
hook, and an HTTP server reading that directory.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable

import dramatiq

from schemas.errors import ConfigurationError


def serve_worker_metrics(broker: dramatiq.Broker, host: str, port: int) -> Callable[[], None]:
    """Add dramatiq's Prometheus middleware to ``broker`` and serve its metrics on
    ``host:port``; returns what stops the server and removes its files. Call it before
    the worker starts, in a process that has not yet imported prometheus-client."""
    if "prometheus_client" in sys.modules and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # prometheus-client picks its value store once, at import: counters made now
        # would stay in this process's memory where no server can read them.
        raise ConfigurationError("worker metrics: prometheus-client was imported too early")
    folder = tempfile.mkdtemp(prefix="cardline-worker-metrics-")
    # dramatiq's module reads its folder from this lower-case variable when imported.
    os.environ["dramatiq_prom_db"] = folder  # noqa: SIM112  # dramatiq's spelling
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    from dramatiq.middleware import prometheus
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    prometheus.DB_PATH = folder  # the module may have been imported before (tests)
    middleware = prometheus.Prometheus()
    broker.add_middleware(middleware)
    middleware.after_process_boot(broker)  # type: ignore[no-untyped-call]  # dramatiq's hook is unannotated
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=folder)  # type: ignore[no-untyped-call]  # unannotated
    server, thread = start_http_server(port, addr=host, registry=registry)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        shutil.rmtree(folder, ignore_errors=True)

    return stop
