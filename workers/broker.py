"""Broker set-up from a URL: ``memory://`` (in-process), ``amqp://`` or ``redis://``.

Nothing connects at import time; ``make_broker`` is called by the process that needs it.
"""

from __future__ import annotations

from typing import Any

import dramatiq
import dramatiq.errors
import pika.exceptions
import redis.exceptions
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import AgeLimit, Callbacks, Pipelines, Retries, ShutdownNotifications

from schemas.errors import ConfigurationError
from schemas.messages import NOTIFY_QUEUE, PKI_QUEUE, PREPARE_QUEUE, line_queue
from workers.middleware import LogContext

WORKER_QUEUES = (PREPARE_QUEUE, PKI_QUEUE, NOTIFY_QUEUE)

# What a broker raises when it is away (dramatiq does not wrap every client error).
BROKER_UNAVAILABLE: tuple[type[BaseException], ...] = (
    dramatiq.errors.BrokerConnectionError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.AMQPChannelError,
    pika.exceptions.StreamLostError,
    ConnectionError,
)

# Redis keeps a fetched message in the consumer's ack set; it returns to the queue only
# when "maintenance" finds the consumer's heartbeat older than the timeout, and
# maintenance runs on a random fraction of commands. dramatiq's defaults (60 s, 1 in
# 1,000) leave a killed consumer's message stranded for minutes on a quiet line; these
# bring it back within seconds. A live consumer refreshes its heartbeat on every fetch.
REDIS_HEARTBEAT_TIMEOUT_MS = 5_000
REDIS_MAINTENANCE_CHANCE = 50_000  # out of 1,000,000 commands: 5 %


def _middleware() -> list[Any]:
    # No TimeLimit: a PKI call on an HSM may legitimately take seconds, and a killed
    # actor thread would leave work half-done; idempotency covers redelivery instead.
    return [
        AgeLimit(),
        ShutdownNotifications(),
        Callbacks(),
        Pipelines(),
        # Only what an actor raises as dramatiq.Retry gets here (workers.actors decides
        # what is transient); after the last retry the reconciler re-drives the work.
        Retries(max_retries=10, min_backoff=200, max_backoff=10_000),
        LogContext(),
    ]


def make_broker(url: str) -> dramatiq.Broker:
    """A broker for ``url``; worker queues are declared when actors are registered."""
    if url.startswith("memory://"):
        return StubBroker(middleware=_middleware())
    if url.startswith("amqp://") or url.startswith("amqps://"):
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        return RabbitmqBroker(url=url, confirm_delivery=True, middleware=_middleware())
    if url.startswith("redis://") or url.startswith("rediss://"):
        from dramatiq.brokers.redis import RedisBroker

        return RedisBroker(
            url=url,
            middleware=_middleware(),
            heartbeat_timeout=REDIS_HEARTBEAT_TIMEOUT_MS,
            maintenance_chance=REDIS_MAINTENANCE_CHANCE,
        )  # type: ignore[no-untyped-call]  # dramatiq leaves RedisBroker.__init__ unannotated
    raise ConfigurationError(
        f"CARDLINE_BROKER_URL {url!r}: expected memory://, amqp:// or redis://"
    )


def declare_line(broker: dramatiq.Broker, line: str) -> str:
    queue = line_queue(line)
    broker.declare_queue(queue)
    return queue
