"""The dramatiq actors: thin wrappers that decode, bind log context, and call a service.

Actors are declared on the broker handed in (no global broker, nothing at import
time). The error policy, in one place (``_wrap``): a ``ConflictError`` means another
delivery or another process already moved the row on (the work is done: logged, not
retried); a transient error (store or broker away, mail refused) is retried with
backoff by dramatiq's Retries middleware; anything else is permanent and flags its row
as needing attention.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import dramatiq
import structlog
from dramatiq.errors import BrokerConnectionError
from pydantic import BaseModel, TypeAdapter

from db import attention
from db.engine import is_transient
from schemas.errors import ConflictError, PermanentError, TransientError
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
        # Log context (message id, actor, ids) is bound by workers.middleware.LogContext.
        try:
            job = adapter.validate_python(payload)
            service(ctx, job)
        except ConflictError as exc:
            log.info("actor.conflict_already_done", detail=str(exc))
        except Exception as exc:
            if is_transient_error(exc):
                # Dramatiq's Retries middleware re-delivers it with backoff; a Retry is
                # logged as a warning, not as an unhandled exception.
                log.warning("actor.transient_error", error=_one_line(exc))
                raise dramatiq.Retry(_one_line(exc)) from exc
            _needs_attention(ctx, name, payload, exc)

    run.__name__ = name
    return run


def is_transient_error(exc: BaseException) -> bool:
    """An error a later try can cure: a store or broker away, mail refused, a busy device."""
    return isinstance(
        exc, (TransientError, ConnectionError, TimeoutError, BrokerConnectionError)
    ) or is_transient(exc)


def _one_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:500]


def subject_of(payload: dict[str, Any]) -> tuple[str, str]:
    """The row a message is about, as (entity, id) for the attention table."""
    for key, entity in (
        ("credential_id", "credential"),
        ("soft_token_id", "soft_token"),
        ("reminder_id", "reminder"),
    ):
        if payload.get(key) is not None:
            return entity, str(payload[key])
    if payload.get("type") == "publish_crl":
        return "crl", "issuing"
    return "message", str(payload.get("type", "unknown"))


def _needs_attention(
    ctx: WorkerContext, actor: str, payload: dict[str, Any], exc: BaseException
) -> None:
    """A permanent error (bad data, a sealed value that no longer opens, a bug): record
    it on its row and stop; the reconciler does not re-drive the row until a person
    resolves it. Never retried: it would fail the same way again."""
    entity, entity_id = subject_of(payload)
    reason = _one_line(exc)
    permanent = isinstance(exc, PermanentError)
    log.error(
        "actor.needs_attention",
        entity=entity,
        entity_id=entity_id,
        reason=reason,
        kind="permanent" if permanent else "bug",
        exc_info=not permanent,
    )
    try:
        with ctx.store.tx(audited=False) as s:
            attention.flag(
                s,
                entity=entity,
                entity_id=entity_id,
                wait=str(payload.get("type", actor)),
                reason=reason,
                actor=f"worker:{actor}",
            )
    except Exception as flag_error:
        if is_transient(flag_error):
            raise dramatiq.Retry(_one_line(flag_error)) from flag_error
        raise


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
