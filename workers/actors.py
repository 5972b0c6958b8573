"""The dramatiq actors: thin wrappers that decode, bind log context, and call a service.

Actors are declared on the broker handed in (no global broker, nothing at import
time). A ``ConflictError`` means another delivery or another process already moved
the row on: the work is done, so it is logged and not retried.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import dramatiq
import structlog
from pydantic import BaseModel, TypeAdapter

from schemas.errors import ConflictError, PermanentError
from schemas.messages import (
    NOTIFY_JOB,
    NOTIFY_QUEUE,
    PKI_JOB,
    PKI_QUEUE,
    PREPARE_JOB,
    PREPARE_QUEUE,
)
from workers.context import WorkerContext
from workers.notify import notify_job
from workers.pki import pki_job
from workers.prepare import prepare_card

log = structlog.get_logger(__name__)
M = TypeVar("M", bound=BaseModel)


def _wrap(
    name: str,
    adapter: TypeAdapter[M],
    service: Callable[[WorkerContext, M], None],
    ctx: WorkerContext,
) -> Callable[[dict[str, Any]], None]:
    def run(payload: dict[str, Any]) -> None:
        job = adapter.validate_python(payload)
        with structlog.contextvars.bound_contextvars(
            actor=name, credential_id=payload.get("credential_id")
        ):
            try:
                service(ctx, job)
            except ConflictError as exc:
                log.info("actor.conflict_already_done", detail=str(exc))
            except PermanentError as exc:
                log.error("actor.permanent_error", error=str(exc))

    run.__name__ = name
    return run


def register(broker: dramatiq.Broker, ctx: WorkerContext) -> dict[str, dramatiq.Actor[Any, Any]]:
    """Declare the ``prepare``, ``pki`` and ``notify`` actors on ``broker``."""
    specs: list[tuple[str, str, TypeAdapter[Any], Callable[[WorkerContext, Any], None]]] = [
        ("prepare", PREPARE_QUEUE, PREPARE_JOB, prepare_card),
        ("pki", PKI_QUEUE, PKI_JOB, pki_job),
        ("notify", NOTIFY_QUEUE, NOTIFY_JOB, notify_job),
    ]
    return {
        name: dramatiq.actor(actor_name=name, queue_name=queue, broker=broker)(
            _wrap(name, adapter, service, ctx)
        )
        for name, queue, adapter, service in specs
    }
