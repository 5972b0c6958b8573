"""Stopping and starting the real brokers of this host, for chaos runs.

RabbitMQ's application is stopped and started inside its running node
(``rabbitmqctl stop_app`` / ``start_app``), keeping its queues. Redis is shut down
without saving and started again with the configuration it ran with, so it comes back
empty, as a Redis that keeps nothing on disk does after a crash.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from urllib.parse import urlsplit

import redis

from workers.broker import make_broker


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)


def rabbitmq_outage(pause_s: float) -> None:
    _run("rabbitmqctl", "stop_app")
    try:
        time.sleep(pause_s)
    finally:
        _run("rabbitmqctl", "start_app")
        _run("rabbitmqctl", "await_startup")


def redis_outage(url: str, pause_s: float) -> None:
    parts = urlsplit(url)
    client = redis.Redis(
        host=parts.hostname or "127.0.0.1", port=parts.port or 6379, decode_responses=True
    )
    config = client.config_get("*")
    args = [
        "redis-server",
        "--daemonize",
        "yes",
        "--port",
        str(parts.port or 6379),
        "--save",
        "",
        "--appendonly",
        "no",
        "--bind",
        *(config.get("bind") or "127.0.0.1").split(),
    ]
    for key in ("dir", "logfile"):
        if config.get(key):
            args += [f"--{key}", str(config[key])]
    with contextlib.suppress(redis.ConnectionError):  # it hangs up as it goes
        client.shutdown(nosave=True)
    time.sleep(pause_s)
    subprocess.run(args, check=True, timeout=30)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if client.ping():
                return
        except redis.ConnectionError:
            time.sleep(0.1)
    raise RuntimeError("redis did not come back")


def broker_outage(broker_url: str, pause_s: float = 3.0) -> None:
    """Take the broker at ``broker_url`` down for ``pause_s`` and bring it back."""
    if broker_url.startswith("amqp"):
        rabbitmq_outage(pause_s)
    elif broker_url.startswith("redis"):
        redis_outage(broker_url, pause_s)
    else:
        raise ValueError(f"no outage for {broker_url}")


def flush(broker_url: str, queues: list[str]) -> None:
    """Empty ``queues`` on the broker so a run never sees an earlier run's messages."""
    broker = make_broker(broker_url)
    try:
        for queue in queues:
            broker.declare_queue(queue)
        broker.flush_all()
    finally:
        broker.close()
