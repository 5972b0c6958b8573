"""The one way a state changes: ``transition()``.

It updates the row only where its state and version are still what the caller loaded
(compare-and-set), appends the audit event and writes the follow-up messages to the
outbox, all inside the caller's transaction. An illegal action, or a race lost to
another writer, raises ``StateConflict`` before anything is written.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from sqlalchemy import update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from db import audit, outbox
from db.models import Stateful, utcnow
from schemas.errors import StateConflict
from schemas.messages import JobMessage

S = TypeVar("S", bound=Stateful)


def transition(
    session: Session,
    entity: Stateful,
    action: str,
    *,
    actor: str,
    reason: str | None = None,
    expect: Iterable[str] | None = None,
    changes: Mapping[str, Any] | None = None,
    messages: Iterable[JobMessage] = (),
) -> str:
    """Apply ``action`` to ``entity``; return the new state.

    ``expect`` narrows the states the caller accepts (default: every source state of
    the action). ``changes`` are other columns set in the same guarded UPDATE.
    """
    machine = entity.machine
    edge = machine.edge(action)
    allowed = edge.sources if expect is None else edge.sources & frozenset(expect)
    current, version = entity.state, entity.version
    if current not in allowed:
        raise StateConflict(machine.name, entity.id, action, current, allowed)
    now = utcnow()
    values: dict[str, Any] = {
        **(changes or {}),
        "state": edge.target,
        "version": version + 1,
        "updated_at": now,
    }
    model = type(entity)
    result = session.execute(
        update(model)
        .where(model.id == entity.id, model.state == current, model.version == version)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]  # CursorResult of an UPDATE
        raise StateConflict(
            machine.name, entity.id, action, current, allowed, detail="changed by another writer"
        )
    for key, value in values.items():
        set_committed_value(entity, key, value)
    audit.append(
        session,
        actor=actor,
        entity=machine.name,
        entity_id=entity.id,
        action=action,
        from_state=current,
        to_state=edge.target,
        reason=reason,
    )
    outbox.add_all(session, messages)
    return edge.target


def create(
    session: Session,
    entity: S,
    *,
    actor: str,
    reason: str | None = None,
    messages: Iterable[JobMessage] = (),
) -> S:
    """Insert a new stateful row in one of its machine's initial states, audited."""
    machine = entity.machine
    if entity.state not in machine.initial:
        raise StateConflict(machine.name, None, "create", entity.state, machine.initial)
    entity.version = 1
    session.add(entity)
    session.flush()
    audit.append(
        session,
        actor=actor,
        entity=machine.name,
        entity_id=entity.id,
        action="create",
        from_state=None,
        to_state=entity.state,
        reason=reason,
    )
    outbox.add_all(session, messages)
    return entity
