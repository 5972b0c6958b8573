"""One way to write: every audited change goes through ``db.transition`` (``transition``
for a state change, ``record`` for any other), checked on the source tree and on both
backends."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from sqlalchemy import func, select

from db.audit import verify_chain
from db.models import AuditEvent, OutboxMessage, User
from db.transition import Unversioned, record, transition
from schemas.errors import StateConflict
from schemas.messages import PrepareCard
from tests import factories

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("schemas", "db", "producers", "workers", "stations", "ops")
# The chain itself and the one module allowed to append to it.
MAY_APPEND = {"db/audit.py", "db/transition.py"}
# Only transition() and record() (and create(), for a new row) set these.
GUARDED_COLUMNS = {"state", "version"}
APPENDS = {"append", "append_many"}


def _sources() -> list[tuple[str, ast.Module]]:
    files = sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))
    assert len(files) > 50, "the scan found too few files to be looking in the right place"
    return [(p.relative_to(ROOT).as_posix(), ast.parse(p.read_text(), str(p))) for p in files]


def _is_audit_append(node: ast.AST) -> bool:
    """``audit.append(...)``, ``db.audit.append(...)``, and ``append_many`` alike."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
        return False
    target = node.func.value
    named_audit = (isinstance(target, ast.Name) and target.id == "audit") or (
        isinstance(target, ast.Attribute) and target.attr == "audit"
    )
    return node.func.attr in APPENDS and named_audit


def _imports_append(node: ast.AST) -> bool:
    """``from db.audit import append`` (which would hide the call from the check above)."""
    return (
        isinstance(node, ast.ImportFrom)
        and node.module == "db.audit"
        and any(alias.name in APPENDS for alias in node.names)
    )


def audit_appends(sources: list[tuple[str, ast.Module]]) -> list[str]:
    return [
        f"{path}:{node.lineno}"
        for path, tree in sources
        if path not in MAY_APPEND
        for node in ast.walk(tree)
        if _is_audit_append(node) or _imports_append(node)
    ]


def _chain_has_update(node: ast.expr) -> bool:
    """Whether a method chain (``update(M).where(...)``) starts with ``update(...)``."""
    while isinstance(node, ast.Call | ast.Attribute):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            return node.func.id == "update"
        node = node.func if isinstance(node, ast.Call) else node.value
    return False


def _assigned_columns(node: ast.AST) -> list[str]:
    """The guarded columns ``row.state = ...`` / ``row.version += ...`` assign."""
    if isinstance(node, ast.Assign):
        targets = node.targets
    elif isinstance(node, ast.AugAssign | ast.AnnAssign):
        targets = [node.target]
    else:
        return []
    flat = [e for t in targets for e in (t.elts if isinstance(t, ast.Tuple) else [t])]
    return [
        t.attr
        for t in flat
        if isinstance(t, ast.Attribute)
        and t.attr in GUARDED_COLUMNS
        # An object's own attribute (a card reader's state) is not a row's.
        and not (isinstance(t.value, ast.Name) and t.value.id == "self")
    ]


def _updated_columns(node: ast.AST) -> list[str]:
    """The guarded columns ``update(M)...values(state=...)`` sets."""
    if not (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "values"
        and _chain_has_update(node.func.value)
    ):
        return []
    return [kw.arg for kw in node.keywords if kw.arg in GUARDED_COLUMNS]


def guarded_writes(sources: list[tuple[str, ast.Module]]) -> list[str]:
    """Writes of ``state`` or ``version`` anywhere but db/transition.py."""
    return [
        f"{path}:{node.lineno} sets {column}"
        for path, tree in sources
        if path != "db/transition.py"
        for node in ast.walk(tree)
        for column in _assigned_columns(node) + _updated_columns(node)
    ]


def test_only_db_transition_appends_to_the_audit_chain():
    assert audit_appends(_sources()) == []


def test_only_db_transition_writes_state_and_version():
    assert guarded_writes(_sources()) == []


def test_the_scan_sees_what_it_must_refuse():
    bad = ast.parse(
        "from db import audit\n"
        "from db.audit import append\n"
        "audit.append(s, actor='x', entity='card', entity_id=1, action='a',"
        " from_state=None, to_state='x')\n"
        "db.audit.append(s)\n"
        "audit.append_many(s, [])\n"
        "cred.state = 'active'\n"
        "cred.version += 1\n"
        "s.execute(update(Credential).where(Credential.id == 1).values(state='active'))\n"
    )
    assert len(audit_appends([("producers/evil.py", bad)])) == 4
    assert len(guarded_writes([("producers/evil.py", bad)])) == 3
    assert audit_appends([("db/transition.py", bad)]) == []


# -- record() on both backends


def _counts(session):
    return (
        session.scalar(select(func.count()).select_from(AuditEvent)),
        session.scalar(select(func.count()).select_from(OutboxMessage)),
    )


def test_record_sets_the_changes_bumps_the_version_and_audits(store):
    with store.tx() as s:
        user = factories.user(s, "inactive")
        version, stamp = user.version, user.updated_at
        before = _counts(s)
        record(
            s,
            user,
            "update",
            actor="olga",
            reason="changed title",
            changes={"title": "Dr"},
            messages=[PrepareCard(credential_id=1)],
        )
        assert (user.title, user.version) == ("Dr", version + 1)
    with store.tx() as s:
        fresh = s.get(User, user.id)
        assert (fresh.title, fresh.state, fresh.version) == ("Dr", "inactive", version + 1)
        assert fresh.updated_at > stamp
        event = s.scalars(select(AuditEvent).order_by(AuditEvent.seq.desc())).first()
        assert (event.entity, event.entity_id, event.action, event.actor) == (
            "user",
            str(user.id),
            "update",
            "olga",
        )
        assert (event.from_state, event.to_state, event.reason) == (
            "inactive",
            "inactive",
            "changed title",
        )
        assert _counts(s) == (before[0] + 1, before[1] + 1)
        assert verify_chain(s).ok


def test_record_refuses_a_stale_version_and_writes_nothing(store):
    with store.tx() as s:
        user_id = factories.user(s).id
    stale_session = store.sessions()
    stale = stale_session.get(User, user_id)
    stale_session.commit()  # keep the loaded (soon stale) object without a transaction
    with store.tx() as s:
        record(s, s.get(User, user_id), "update", actor="winner", changes={"title": "Dr"})
    with store.read() as s:
        before = _counts(s)
    with pytest.raises(StateConflict, match="another writer") as err, stale_session.begin():
        record(
            stale_session,
            stale,
            "update",
            actor="loser",
            changes={"title": "Prof"},
            messages=[PrepareCard(credential_id=1)],
        )
    assert (err.value.entity, err.value.entity_id, err.value.action) == ("user", user_id, "update")
    stale_session.close()
    with store.read() as s:
        assert s.get(User, user_id).title == "Dr"
        assert _counts(s) == before
        assert "loser" not in s.scalars(select(AuditEvent.actor)).all()
        assert verify_chain(s).ok


def test_record_refuses_a_state_the_caller_does_not_expect(store):
    with store.tx() as s:
        card = factories.credential(s, "producing")
        version = card.version
        before = _counts(s)
        with pytest.raises(StateConflict) as err:
            record(
                s,
                card,
                "update",
                actor="olga",
                expect={"requested", "approved"},
                changes={"line": "other"},
            )
        assert (err.value.current, err.value.expected) == ("producing", ("approved", "requested"))
        assert _counts(s) == before
        s.refresh(card)
        assert (card.line, card.version) == ("default", version)


def test_record_without_changes_is_an_audited_read_that_still_moves_the_version(store):
    with store.tx() as s:
        card = factories.credential(s, "active")
        version = card.version
        record(s, card, "escrow_export", actor="olga")
    with store.read() as s:
        assert s.get(type(card), card.id).version == version + 1
        (event,) = s.scalars(select(AuditEvent).where(AuditEvent.action == "escrow_export"))
        assert (event.from_state, event.to_state) == ("active", "active")


def test_record_refuses_a_state_change():
    with pytest.raises(TypeError, match="transition"):
        record(None, factories.User(), "update", actor="x", changes={"state": "locked"})


def test_record_of_an_unversioned_thing_writes_only_its_audit_event(store):
    with store.tx() as s:
        before = _counts(s)
        record(
            s, Unversioned("api_token", 7, before="active", after="revoked"), "revoke", actor="a"
        )
        event = s.scalars(select(AuditEvent).order_by(AuditEvent.seq.desc())).first()
        assert (event.entity, event.entity_id, event.from_state, event.to_state) == (
            "api_token",
            "7",
            "active",
            "revoked",
        )
        assert _counts(s) == (before[0] + 1, before[1])
        with pytest.raises(TypeError):
            record(
                s,
                Unversioned("api_token", 7, "active", "revoked"),
                "x",
                actor="a",
                changes={"a": 1},
            )
    with store.read() as s:
        assert verify_chain(s).ok


def test_transition_and_record_share_one_version_counter(store):
    with store.tx() as s:
        card = factories.credential(s, "requested")
        record(s, card, "update", actor="a", changes={"line": "east"})
        transition(s, card, "approve", actor="b")
        record(s, card, "update", actor="a", changes={"line": "west"})
    with store.read() as s:
        fresh = s.get(type(card), card.id)
        assert (fresh.state, fresh.line, fresh.version) == ("approved", "west", 4)


def test_a_card_edit_is_recorded_until_a_station_starts(store):
    from producers.cards import edit_card
    from schemas.policy import Policy

    with store.tx() as s:
        approved = str(factories.credential(s, "approved").id)
        producing = str(factories.credential(s, "producing").id)
    policy = Policy()
    assert edit_card(store, approved, by="olga", line="default", policy=policy) == []
    assert edit_card(store, approved, by="olga", line="east", policy=policy) == ["line"]
    with pytest.raises(StateConflict):
        edit_card(store, producing, by="olga", line="default", policy=policy)
    with store.read() as s:
        events = s.scalars(select(AuditEvent).where(AuditEvent.action == "update")).all()
        assert [(e.entity_id, e.reason) for e in events] == [(approved, "line default -> east")]
        assert verify_chain(s).ok
