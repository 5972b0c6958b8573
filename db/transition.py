"""The two ways an audited row changes: ``transition()`` and ``record()``.

``transition()`` changes a state; ``record()`` records every other audited change (an
attribute edit, a stamp such as "PIN letter written", an audited read). Both update
the row only where its version is still what the caller loaded (compare-and-set),
append the audit event and write the follow-up messages to the outbox, all inside the
caller's transaction. An illegal action, or a race lost to another writer, raises
``StateConflict`` before anything is written. ``create()`` inserts a new row, audited;
``create_many()`` inserts many at once (a batch import) and ``transition_many()``
applies one action to many rows of one model (a batch decided), audited the same way.
Nothing else calls ``audit.append`` or ``audit.append_many``
(tests/unit/test_one_way_to_write.py checks it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from sqlalchemy import Table, case, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from db import audit, outbox
from db.models import LIVE_ATTEMPT_INDEXES, OutboxMessage, ProductionAttempt, Stateful, utcnow
from schemas.errors import StateConflict
from schemas.messages import JobMessage
from schemas.states import Machine

S = TypeVar("S", bound=Stateful)


@dataclass(frozen=True)
class Unversioned:
    """An audited thing without a lifecycle row (an API token): the audit log names it
    ``entity`` ``id`` and says it went from ``before`` to ``after``."""

    entity: str
    id: object
    before: str | None
    after: str


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
    the action). ``changes`` are other columns set in the same guarded UPDATE. An action
    the entity's machine does not have (``deactivate`` on a temporary card) is refused
    like any other illegal one: ``StateConflict``, allowed from nowhere.
    """
    machine = entity.machine
    current = entity.state
    if action not in machine.actions:
        raise StateConflict(machine.name, entity.id, action, current, ())
    edge = machine.edge(action)
    allowed = edge.sources if expect is None else edge.sources & frozenset(expect)
    if current not in allowed:
        raise StateConflict(machine.name, entity.id, action, current, allowed)
    # The plain value, as a row loaded from the store holds it (a later error about
    # this entity then names the state 'active', not <CardState.ACTIVE: 'active'>).
    target = str(edge.target)
    _compare_and_set(session, entity, action, allowed, {**(changes or {}), "state": target})
    audit.append(
        session,
        actor=actor,
        entity=machine.name,
        entity_id=entity.id,
        action=action,
        from_state=current,
        to_state=target,
        reason=reason,
    )
    outbox.add_all(session, messages)
    return target


def record(
    session: Session,
    entity: Stateful | Unversioned,
    action: str,
    *,
    actor: str,
    reason: str | None = None,
    expect: Iterable[str] | None = None,
    changes: Mapping[str, Any] | None = None,
    messages: Iterable[JobMessage] = (),
) -> None:
    """Record an audited change that is not a state change, named ``action``.

    On a stateful row: ``changes`` are set in one UPDATE guarded by the row's version
    (which it bumps, with ``updated_at``, even when ``changes`` is empty: an audited
    read), and the audit event keeps the state (from = to). ``expect`` is the set of
    states the caller accepts (default: any). On an ``Unversioned`` thing there is no
    row to guard: the caller changes it in the same transaction, and only the audit
    event and the messages are written here.
    """
    if changes and "state" in changes:
        raise TypeError("record(): a state change goes through transition()")
    if isinstance(entity, Unversioned):
        if changes or expect is not None:
            raise TypeError("record(): changes and expect need a stateful row")
        name, entity_id, before, after = entity.entity, entity.id, entity.before, entity.after
    else:
        name, entity_id, before = entity.machine.name, entity.id, entity.state
        allowed = entity.machine.states if expect is None else frozenset(expect)
        if before not in allowed:
            raise StateConflict(name, entity_id, action, before, allowed)
        _compare_and_set(session, entity, action, allowed, dict(changes or {}))
        after = before
    audit.append(
        session,
        actor=actor,
        entity=name,
        entity_id=entity_id,
        action=action,
        from_state=before,
        to_state=after,
        reason=reason,
    )
    outbox.add_all(session, messages)


def _compare_and_set(
    session: Session,
    entity: Stateful,
    action: str,
    allowed: Iterable[str],
    changes: dict[str, Any],
) -> None:
    """UPDATE the row only where its state and version are still the loaded ones;
    bump the version and ``updated_at``; mirror the new values on ``entity``."""
    current, version = entity.state, entity.version
    values = {**changes, "version": version + 1, "updated_at": utcnow()}
    model = type(entity)
    result = session.execute(
        update(model)
        .where(model.id == entity.id, model.state == current, model.version == version)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]  # CursorResult of an UPDATE
        raise StateConflict(
            entity.machine.name,
            entity.id,
            action,
            current,
            allowed,
            detail="changed by another writer",
        )
    for key, value in values.items():
        set_committed_value(entity, key, value)


def create(
    session: Session,
    entity: S,
    *,
    actor: str,
    reason: str | None = None,
    messages: Iterable[JobMessage] = (),
) -> S:
    """Insert a new stateful row in one of its machine's initial states, audited.

    A second live production attempt for a card or a station (refused by a partial
    unique index) raises ``StateConflict``; the transaction is then unusable and must
    be rolled back, which leaving ``Store.tx()`` with the error does.
    """
    machine = entity.machine
    if entity.state not in machine.initial:
        raise StateConflict(machine.name, None, "create", entity.state, machine.initial)
    entity.version = 1
    session.add(entity)
    try:
        session.flush()
    except IntegrityError as exc:
        refusal = _live_attempt_refusal(exc)
        if refusal is None:
            raise
        raise StateConflict(machine.name, None, "create", entity.state, (), detail=refusal) from exc
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


# Rows per INSERT statement: well under every backend's limit on bound parameters.
_INSERT_ROWS = 1000
_OUTBOX = cast(Table, OutboxMessage.__table__)


def create_many(
    session: Session,
    model: type[Stateful],
    rows: Sequence[Mapping[str, Any]],
    *,
    actor: str,
    reasons: Sequence[str | None],
    messages: Callable[[int], Iterable[JobMessage]] | None = None,
) -> list[int]:
    """Insert new rows of ``model`` (column -> value, the same columns in every row),
    each in one of its machine's initial states, as ``create()`` would one by one: the
    version 1, one ``create`` audit event per row with ``reasons[i]``, in the order
    given, and ``messages(id)`` of each new row in the outbox; in a few statements per
    thousand rows. Returns the new rows' ids, in order.

    Every row is checked before anything is written. Not for production attempts:
    ``create()`` turns their live-attempt refusal into ``StateConflict``.
    """
    if model is ProductionAttempt:
        raise TypeError("create_many(): a production attempt is created with create()")
    if len(reasons) != len(rows):
        raise TypeError("create_many(): one reason per row")
    known: dict[object, Machine] = {}
    machines = [known.get(row.get("kind")) or _machine_of(model, row, known) for row in rows]
    for row, machine in zip(rows, machines, strict=True):
        if row["state"] not in machine.initial:
            raise StateConflict(machine.name, None, "create", row["state"], machine.initial)
    ids = _insert_rows(session, cast(Table, model.__table__), rows)  # type: ignore[attr-defined]
    audit.append_many(
        session,
        (
            audit.Event(actor, machine.name, new_id, "create", None, row["state"], reason)
            for row, machine, new_id, reason in zip(rows, machines, ids, reasons, strict=True)
        ),
    )
    if messages is not None:
        _add_messages(session, (m for new_id in ids for m in messages(new_id)))
    return ids


def transition_many(
    session: Session,
    model: type[Stateful],
    ids: Sequence[int],
    action: str,
    *,
    actor: str,
    reason: str | None = None,
    changes: Mapping[str, Any] | None = None,
    messages: Callable[[int], Iterable[JobMessage]] | None = None,
) -> int:
    """``transition()`` of every row ``ids`` names, in a few statements per thousand
    rows: each row's state set to the action's target (with ``changes``), its version
    bumped, one audit event per row in the order given, ``messages(id)`` of each in the
    outbox. Returns how many rows changed.

    Every row must be in a source state of the action and be the row the caller read:
    when one is not (gone, moved on, or changed by another writer since), this raises
    ``StateConflict`` naming it and leaves the transaction to be rolled back. Not for a
    model whose machine depends on a column (credentials of mixed kinds): all rows
    share ``model``'s machine, taken from the first row.
    """
    if not ids:
        return 0
    table = cast(Table, model.__table__)  # type: ignore[attr-defined]
    rows: list[tuple[int, str, int, str | None]] = []
    for start in range(0, len(ids), _INSERT_ROWS):
        chunk = ids[start : start + _INSERT_ROWS]
        kind = [table.c.kind] if "kind" in table.c else []
        found = {
            row[0]: row
            for row in session.execute(
                select(table.c.id, table.c.state, table.c.version, *kind).where(
                    table.c.id.in_(chunk)
                )
            )
        }
        for row_id in chunk:
            row = found.get(row_id)
            if row is None:
                raise StateConflict(model.__name__, row_id, action, "absent", ())
            rows.append((row_id, row[1], row[2], row[3] if kind else None))
    probe: Stateful = model(**({"kind": rows[0][3]} if rows[0][3] is not None else {}))
    machine = probe.machine
    edge = machine.edge(action)
    for row_id, state, _, row_kind in rows:
        if row_kind != rows[0][3]:
            raise TypeError("transition_many(): rows of one kind only")
        if state not in edge.sources:
            raise StateConflict(machine.name, row_id, action, state, edge.sources)
    values = {**(changes or {}), "state": edge.target, "updated_at": utcnow()}
    for start in range(0, len(rows), _INSERT_ROWS):
        chunk_rows = rows[start : start + _INSERT_ROWS]
        for state in {state for _, state, _, _ in chunk_rows}:
            same = [r for r in chunk_rows if r[1] == state]
            # Guarded like _compare_and_set: the state and version the caller read.
            result = session.execute(
                update(table)
                .where(
                    table.c.id.in_([r[0] for r in same]),
                    table.c.state == state,
                    table.c.version == _version_of(table, same),
                )
                .values(**values, version=table.c.version + 1)
            )
            if result.rowcount != len(same):  # type: ignore[attr-defined]
                raise StateConflict(
                    machine.name,
                    same[0][0],
                    action,
                    state,
                    edge.sources,
                    detail="changed by another writer",
                )
    audit.append_many(
        session,
        (
            audit.Event(actor, machine.name, row_id, action, state, edge.target, reason)
            for row_id, state, _, _ in rows
        ),
    )
    if messages is not None:
        _add_messages(session, (m for row_id, _, _, _ in rows for m in messages(row_id)))
    return len(rows)


def _version_of(table: Table, rows: Sequence[tuple[int, str, int, str | None]]) -> Any:
    """The guard on versions for ``rows``: each row's own (a CASE over ids), or one
    value when they share it (the common case: rows created together, never changed)."""
    versions = {version for _, _, version, _ in rows}
    if len(versions) == 1:
        return next(iter(versions))
    return case({row_id: version for row_id, _, version, _ in rows}, value=table.c.id)


def _insert_rows(session: Session, table: Table, rows: Sequence[Mapping[str, Any]]) -> list[int]:
    """INSERT ``rows`` (version 1, created and updated now); their ids, in order."""
    now = utcnow()
    stamps = {"version": 1, "created_at": now, "updated_at": now}
    chunks = [rows[start : start + _INSERT_ROWS] for start in range(0, len(rows), _INSERT_ROWS)]
    if session.get_bind().dialect.name != "sqlite":
        stmt = insert(table).returning(table.c.id, sort_by_parameter_order=True)
        return [
            i
            for chunk in chunks
            for i in session.execute(stmt, [{**r, **stamps} for r in chunk]).scalars()
        ]
    # SQLite does not promise the order of a multi-row INSERT's RETURNING, so SQLAlchemy
    # would insert row by row. Under the write lock this transaction holds (every
    # writer begins IMMEDIATE) the next ids are max(id) + 1 on, which SQLite would
    # have given the rows itself (no table uses AUTOINCREMENT).
    first = (session.scalar(select(func.max(table.c.id))) or 0) + 1
    ids = list(range(first, first + len(rows)))
    for start, chunk in zip(range(0, len(rows), _INSERT_ROWS), chunks, strict=True):
        values = [{**r, **stamps, "id": first + start + i} for i, r in enumerate(chunk)]
        session.execute(insert(table), values)
    return ids


def _machine_of(
    model: type[Stateful], row: Mapping[str, Any], known: dict[object, Machine]
) -> Machine:
    # A model's machine may depend on a column (a credential's kind): ask a transient
    # instance carrying just that column, once per value.
    kind = {"kind": row["kind"]} if "kind" in row else {}
    probe: Stateful = model(**kind)
    known[row.get("kind")] = probe.machine
    return probe.machine


def _add_messages(session: Session, messages: Iterable[JobMessage]) -> None:
    """``outbox.add`` for many messages: the same rows, a thousand per statement."""
    rows: list[dict[str, Any]] = []
    for message in messages:
        payload = message.model_dump(mode="json")
        rows.append({"queue": message.queue(), "actor": message.actor, "payload": payload})
        if len(rows) == _INSERT_ROWS:
            session.execute(insert(_OUTBOX), rows)
            rows = []
    if rows:
        session.execute(insert(_OUTBOX), rows)


def _live_attempt_refusal(exc: IntegrityError) -> str | None:
    """What a live-attempt index refused, or None when another constraint did.

    PostgreSQL names the violated index; SQLite names its columns instead.
    """
    diag = getattr(exc.orig, "diag", None)
    named = getattr(diag, "constraint_name", None)
    text = str(exc.orig)
    for index, (columns, meaning) in LIVE_ATTEMPT_INDEXES.items():
        if named == index or (named is None and text.endswith(f"constraint failed: {columns}")):
            return f"{meaning} ({index})"
    return None
