"""Lifecycle errors are clean (issue 13, point 7): every operation an operator can run
on a card, on every card kind in every state of its machine, either does what that
kind's state table says or is refused with ``StateConflict`` naming the state, and a
refusal changes nothing. Over HTTP a refusal is a 409; in the CLI one line and exit 2."""

from __future__ import annotations

import datetime as dt
import itertools
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from db.engine import Store
from db.models import (
    ApprovalRequest,
    AuditEvent,
    Certificate,
    Credential,
    ProductionAttempt,
    utcnow,
)
from db.secrets import SecretBox, context
from ops.cli import main
from producers import cards, escrow, incidents, lifecycle, line_control, pending, tempcards
from producers.api.app import create_app
from producers.api.context import ApiContext
from producers.tokens import create_token
from schemas.errors import StateConflict
from schemas.pki import PkiConfig
from schemas.policy import ApprovalSteps, Policy
from schemas.states import (
    CARD,
    TEMP_CARD,
    AttemptState,
    CardState,
    CertState,
    CertUsage,
    CredentialKind,
    Machine,
    TempCardState,
    UserState,
)
from tests import factories
from tests.principals import token_for

POLICY = Policy()
NO_STEPS = ApprovalSteps()
ALL_STEPS = ApprovalSteps(**dict.fromkeys(ApprovalSteps.model_fields, True))
BOX = SecretBox(os.urandom(32))
BY = "olga"  # never the requester ("tests", see factories.credential): four eyes hold
KINDS = {CredentialKind.CARD: CARD, CredentialKind.TEMP_CARD: TEMP_CARD}
_serials = itertools.count(0x5000)

Run = Callable[[Store, str, str], object]
Params = Callable[[Store], Mapping[str, Any]]
Expect = Callable[[Machine, str], str | None]


def _no_params(_store: Store) -> Mapping[str, Any]:
    return {}


def _fresh_holder(store: Store) -> Mapping[str, Any]:
    """A new active user for each assignment (a user holds one temporary card)."""
    with store.tx() as s:
        return {"user": factories.user(s).email}


def _edge(action: str) -> Expect:
    """The state after ``action``, from the machine's own table; None: refused."""

    def expect(machine: Machine, state: str) -> str | None:
        edge = next((e for e in machine.edges if e.action == action), None)
        return edge.target if edge is not None and state in edge.sources else None

    return expect


def _stays(states: Mapping[str, frozenset[str]]) -> Expect:
    """An audited change that keeps the state, allowed in ``states[kind]``."""

    def expect(machine: Machine, state: str) -> str | None:
        return state if state in states.get(machine.name, frozenset()) else None

    return expect


_IN_USE = frozenset({CardState.ACTIVE, CardState.INACTIVE, CardState.ISSUED})


def _incident(locks: bool) -> Expect:
    """Declaring an incident: only on a permanent card in use; it locks the card, or
    deactivates it when active (an inactive or issued card stays as it is)."""

    def expect(machine: Machine, state: str) -> str | None:
        if machine is not CARD or state not in _IN_USE:
            return None
        if locks:
            return _edge("lock")(machine, state)
        return _edge("deactivate")(machine, state) or state

    return expect


@dataclass(frozen=True)
class Operation:
    """One operator operation on a card: ``run(store, card, principal)``, the state it
    leaves behind from each state (None: refused), and the ``producers.pending``
    process it is when an approval step can hold it (``params`` its parameters)."""

    run: Run
    expect: Expect
    process: str | None = None
    params: Params = _no_params


def _process(process: str, params: Params, steps: ApprovalSteps = NO_STEPS) -> Run:
    """How the CLI and the API run ``process`` (``pending.perform``)."""

    def run(store: Store, card: str, by: str) -> object:
        chosen = params(store)
        return pending.perform(store, process, card, chosen, by=by, policy=POLICY, steps=steps)

    return run


def _held(process: str, expect: Expect, params: Params = _no_params) -> Operation:
    return Operation(_process(process, params), expect, process, params)


def _declare(kind: str) -> Run:
    def run(store: Store, card: str, by: str) -> object:
        return incidents.declare(store, card, kind, by=by, policy=POLICY, steps=NO_STEPS)

    return run


def _export(store: Store, card: str, by: str) -> object:
    return escrow.escrowed_key(store, BOX, card, by=by, steps=NO_STEPS)


_EDITABLE = frozenset({CardState.REQUESTED, CardState.APPROVED})
_ANY = {str(kind): machine.states for kind, machine in KINDS.items()}

# Every operation on a card or a temporary card that the CLI (`cardline card|tempcard|
# incident|escrow ...`) and the API (/cards, /tempcards) expose.
OPERATIONS: dict[str, Operation] = {
    "approve": Operation(lambda st, c, by: cards.approve_card(st, c, by=by), _edge("approve")),
    "reject": Operation(
        lambda st, c, by: cards.reject_card(st, c, by=by, reason="no"), _edge("reject")
    ),
    "postpone": Operation(
        lambda st, c, by: cards.postpone_card(st, c, by=by, reason="later"), _edge("postpone")
    ),
    "cancel": Operation(lambda st, c, by: cards.cancel_card(st, c, by=by), _edge("cancel")),
    "activate": Operation(lambda st, c, by: cards.activate_card(st, c, by=by), _edge("activate")),
    "retry": Operation(lambda st, c, by: line_control.retry_card(st, c, by=by), _edge("retry")),
    "edit": Operation(
        lambda st, c, by: cards.edit_card(st, c, by=by, line="other", policy=POLICY),
        _stays({"card": _EDITABLE, "temp_card": _EDITABLE}),
    ),
    "renew": _held("card.renew", _edge("renew")),
    "deactivate": _held("card.deactivate", _edge("deactivate")),
    "reactivate": _held("card.reactivate", _edge("reactivate")),
    "lock": _held("card.lock", _edge("lock"), lambda _st: {"reason": "key_compromise"}),
    "assign": _held("tempcard.assign", _edge("assign"), _fresh_holder),
    "extend": _held("tempcard.extend", _edge("extend")),
    "withdraw": _held("tempcard.withdraw", _edge("withdraw")),
    "recover escrow": Operation(
        lambda st, c, by: escrow.request_key_recovery(st, c, by=by),
        _stays({"card": escrow.RECOVERABLE_STATES | escrow.IN_USE_STATES}),
    ),
    "escrow export": Operation(_export, _stays(_ANY), escrow.EXPORT),
    "declare lost": Operation(_declare("lost"), _incident(locks=False)),
    "declare forgotten": Operation(_declare("forgotten"), _incident(locks=False)),
    "declare stolen": Operation(_declare("stolen"), _incident(locks=True)),
    "declare damaged": Operation(_declare("damaged"), _incident(locks=True)),
}

# The states of a card that has left a station: its chip carries keys.
_PRODUCED = frozenset(
    {"issued", "active", "inactive", "locked", "expired", "unassigned", "assigned"}
)
# The certificates a card in each state has (valid unless the state says not).
_CERT_STATE = {
    "inactive": CertState.HOLD,
    "locked": CertState.REVOKED,
    "expired": CertState.EXPIRED,
}


def _certificate(cred: Credential, state: str, usage: str, **more: Any) -> Certificate:
    now = utcnow()
    return Certificate(
        state=_CERT_STATE.get(state, CertState.VALID),
        credential_id=cred.id,
        usage=usage,
        serial=f"{next(_serials):x}",
        subject="CN=test",
        not_before=now,
        not_after=now + dt.timedelta(days=365),
        pem="-",
        **more,
    )


def _card(store: Store, kind: str, state: str) -> str:
    """A card of ``kind`` in ``state`` with what every operation may need: a holder
    (an assigned temporary card's too) with an earlier escrowed key, its own escrowed
    key sealed and that key's certificate and, once produced, the attempt that made it
    and the certificate of a key generated on its chip."""
    with store.tx() as s:
        cred = factories.credential(s, state, kind)
        if kind == CredentialKind.TEMP_CARD and state == "assigned":
            cred.user = factories.user(s)
            cred.assigned_until = utcnow() + dt.timedelta(days=14)
        if cred.user is not None:
            earlier = Credential(
                state=CardState.LOCKED,
                kind=CredentialKind.CARD,
                user=cred.user,
                requested_by="tests",
                escrow_key_sealed="-",
            )
            s.add(earlier)
            s.flush()
            s.add(_certificate(earlier, "locked", CertUsage.ENCRYPTION))
        cred.escrow_key_sealed = BOX.seal(
            "key", context=context("credential", cred.id, "escrow_key")
        )
        s.add(_certificate(cred, state, CertUsage.ENCRYPTION))
        if state in _PRODUCED:
            made = ProductionAttempt(
                state=AttemptState.SUCCEEDED,
                credential_id=cred.id,
                number=1,
                station_id="ST1",
                station_instance="i1",
                lease_expires_at=utcnow(),
                finished_at=utcnow(),
            )
            s.add(made)
            s.flush()
            s.add(
                _certificate(
                    cred, state, CertUsage.AUTHENTICATION, attempt_id=made.id, on_chip=True
                )
            )
        return str(cred.id)


def _snapshot(store: Store, card: str) -> tuple[str, int, int]:
    """The card's state and version, and how many audit events the store holds."""
    with store.read() as s:
        cred = s.get(Credential, int(card))
        assert cred is not None
        events = int(s.scalar(select(func.count()).select_from(AuditEvent)) or 0)
        return cred.state, cred.version, events


def _check(store: Store, kind: str, state: str, run: Run, after: str | None) -> str:
    """What is wrong with ``run`` on a fresh card of ``kind`` in ``state`` ('' if
    nothing): done and leaving ``after``, or (``after`` None) refused with
    StateConflict naming the state and changing nothing."""
    card = _card(store, kind, state)
    before = _snapshot(store, card)
    try:
        run(store, card, BY)
    except StateConflict as exc:
        if after is not None:
            return f"refused, but the table allows it: {exc}"
        if exc.current != state or f"'{state}'" not in str(exc) or "\n" in str(exc):
            return f"refused without naming the state: {exc}"
        if _snapshot(store, card) != before:
            return f"refused, but changed {before} to {_snapshot(store, card)}"
        return ""
    except Exception as exc:  # the point of the test: nothing else escapes
        return f"raised {type(exc).__name__}: {exc}"
    now, _, events = _snapshot(store, card)
    if after is None:
        return f"done (now {now}), but the table has no such edge"
    if now != after or events <= before[2]:
        return f"done, but {state} -> {now} with {events - before[2]} audit events ({after})"
    return ""


def _states(machine: Machine) -> list[str]:
    return sorted(str(state) for state in machine.states)


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_operation_in_every_state_is_done_as_the_table_says_or_refused_cleanly(store, kind):
    machine = KINDS[kind]
    problems = []
    for state, (name, op) in itertools.product(_states(machine), OPERATIONS.items()):
        problem = _check(store, kind, state, op.run, op.expect(machine, state))
        if problem:
            problems.append(f"{name} on a {kind} {state}: {problem}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_held_operation_in_every_state_waits_for_an_approver_or_is_refused_cleanly(
    store, kind
):
    """With every ``[approvals]`` step on, what could be done becomes a pending request
    (the card unchanged); what could not is refused at once, as above."""
    machine = KINDS[kind]
    problems = []
    held = {name: op for name, op in OPERATIONS.items() if op.process is not None}
    for state, (name, op) in itertools.product(_states(machine), held.items()):
        assert op.process is not None
        run = _process(op.process, op.params, ALL_STEPS)
        allowed = op.expect(machine, state) is not None
        problem = _check(store, kind, state, run, state if allowed else None)
        if problem:
            problems.append(f"held {name} on a {kind} {state}: {problem}")
    with store.read() as s:
        requests = int(s.scalar(select(func.count()).select_from(ApprovalRequest)) or 0)
    assert not problems, "\n".join(problems)
    assert requests == sum(
        1 for state in machine.states for op in held.values() if op.expect(machine, state)
    )


def test_a_card_is_refused_for_its_own_state_before_anything_about_its_holder(store):
    """An inactive holder does not hide that the card itself cannot take the step."""
    with store.tx() as s:
        locked = factories.credential(s, CardState.LOCKED)
        assert locked.user is not None
        locked.user.state = UserState.INACTIVE
        stock = factories.credential(s, TempCardState.LOCKED, CredentialKind.TEMP_CARD)
        refs = str(locked.id), str(stock.id), factories.user(s, UserState.INACTIVE).email
    with pytest.raises(StateConflict, match="cannot reactivate from state 'locked'"):
        lifecycle.reactivate_card(store, refs[0], by=BY)
    with pytest.raises(StateConflict, match="cannot assign from state 'locked'"):
        tempcards.assign(store, refs[1], refs[2], by=BY, policy=POLICY)


def test_the_matrix_covers_every_action_a_card_operation_can_take():
    """A new edge of either card machine that operators may take is a new row here."""
    station_and_worker = {"escrow", "prepare", "claim", "complete", "complete_issued"}
    station_and_worker |= {"fault", "fail", "expire"}
    # The bureau exchange's edges: taken by an order file exported or a delivery file
    # imported (producers.bureaus), not by an operation on one card.
    station_and_worker |= {"export", "deliver", "reorder", "bureau_fail"}
    taken = set(CARD.actions) | set(TEMP_CARD.actions)
    assert taken - station_and_worker <= set(OPERATIONS)


# --- over HTTP and in the CLI ------------------------------------------------------------


def _assigned_temp_card(store: Store) -> str:
    return _card(store, CredentialKind.TEMP_CARD, "assigned")


@pytest.mark.parametrize(
    "path", ["/cards/{card}/deactivate", "/cards/{card}/reactivate", "/cards/{card}/renew"]
)
def test_a_card_step_a_temporary_card_lacks_is_a_409_over_http(store, tmp_path: Path, path):
    ctx = ApiContext(
        store=store,
        box=BOX,
        policy=POLICY,
        pki=PkiConfig(),
        crl_dir=tmp_path / "crl",
        ca_chain=tmp_path / "ca-chain.pem",
        rejects_dir=tmp_path / "rejects",
    )
    client = TestClient(create_app(ctx), raise_server_exceptions=False)
    _, secret = create_token(store, name="olga", role="operator", by="tests")
    card = _assigned_temp_card(store)
    before = _snapshot(store, card)
    answer = client.post(
        path.format(card=card), json={}, headers={"Authorization": f"Bearer {secret.reveal()}"}
    )
    assert answer.status_code == 409, answer.text
    assert answer.json()["error"]["code"] == "state_conflict"
    assert "'assigned'" in answer.json()["error"]["message"]
    assert _snapshot(store, card) == before


@pytest.mark.parametrize("step", ["deactivate", "reactivate", "renew", "activate"])
def test_a_card_step_a_temporary_card_lacks_is_one_line_and_exit_2_in_the_cli(
    store, database_url, tmp_path: Path, step
):
    card = _assigned_temp_card(store)
    env = {
        "CARDLINE_DATABASE_URL": database_url,
        "CARDLINE_TOKEN": token_for(store, "olga", ["operator"]),
    }
    argv = ["card", step, card, "--data-dir", str(tmp_path)]
    result = CliRunner().invoke(main, argv, env=env)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert f"cannot {step} from state 'assigned'" in lines[0]
    assert "Traceback" not in result.output
