"""Dramatiq middleware of Cardline's workers: log context and the error policy.

``LogContext`` binds, for the whole of one message, the message id, the actor and the
ids of what it works on, so every log line an actor writes carries them (structlog's
contextvars; bound and cleared here, in one place).
"""

from __future__ import annotations

from typing import Any

import dramatiq
import structlog
from dramatiq.broker import MessageProxy

# Payload fields that name what a message works on.
WORK_IDS = ("credential_id", "attempt_id", "soft_token_id", "reminder_id", "usage", "type")


class LogContext(dramatiq.Middleware):
    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        payload = message.args[0] if message.args and isinstance(message.args[0], dict) else {}
        ids = {k: payload[k] for k in WORK_IDS if payload.get(k) is not None}
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(
            message_id=message.message_id,
            actor=message.actor_name,
            retries=message.options.get("retries", 0),
            **ids,
        )

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        structlog.contextvars.clear_contextvars()

    def after_skip_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        structlog.contextvars.clear_contextvars()
