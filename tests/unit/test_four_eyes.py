"""Four eyes over HTTP: a principal who holds every role it needs and two tokens cannot
approve its own card, batch, soft token or replacement request with either token; a
second principal can. And two spellings of one name are one principal, so a second
account cannot be made to get round the rule. On SQLite and PostgreSQL."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from db.engine import Store
from db.models import (
    AuditEvent,
    BatchOrder,
    Credential,
    Incident,
    OutboxMessage,
    SoftToken,
    Stateful,
)
from db.secrets import SecretBox
from producers import principals as p
from producers.api.app import create_app
from producers.api.context import ApiContext
from producers.generate import write_users_csv
from producers.tokens import create_token
from schemas.errors import ValidationFailed
from schemas.pki import PkiConfig
from schemas.policy import Policy
from tests import factories

Headers = dict[str, str]


@dataclass(frozen=True)
class Pending:
    """A request waiting for an approver: where to approve it, and the rows it is."""

    approve: str  # the path of the approval
    rows: tuple[tuple[type[Stateful], int], ...]  # (model, id) of each row the approval moves


@pytest.fixture
def client(store: Store, tmp_path: Path) -> TestClient:
    ctx = ApiContext(
        store=store,
        box=SecretBox(os.urandom(32)),
        policy=Policy(approval_required=True, replacement_approval_required=True),
        pki=PkiConfig(softtoken_approval=True),
        crl_dir=tmp_path / "crl",
        ca_chain=tmp_path / "chain.pem",
        rejects_dir=tmp_path / "rejects",
    )
    return TestClient(create_app(ctx), raise_server_exceptions=False)


def _bearer(store: Store, principal_id: int) -> Headers:
    _, token = p.issue_token(store, principal_id, by="tests")
    return {"Authorization": f"Bearer {token.reveal()}"}


@pytest.fixture
def alice(store: Store) -> tuple[int, Headers, Headers]:
    """One principal who may request, declare incidents and approve; two tokens."""
    pid = p.create_principal(
        store, "alice", roles=["requester", "approver", "operator"], by="tests"
    )
    return pid, _bearer(store, pid), _bearer(store, pid)


def _email(store: Store) -> str:
    with store.tx() as s:
        return factories.user(s).email


def _card(client: TestClient, store: Store, headers: Headers) -> Pending:
    asked = client.post("/cards", json={"users": [_email(store)]}, headers=headers)
    assert asked.status_code == 201, asked.json()
    assert asked.json()["state"] == "requested"
    (card_id,) = asked.json()["ids"]
    return Pending(f"/cards/{card_id}/approve", ((Credential, card_id),))


def _batch(client: TestClient, store: Store, headers: Headers) -> Pending:
    with tempfile.TemporaryDirectory() as folder:
        csv = write_users_csv(Path(folder) / "batch.csv", 3).read_bytes()
    sent = client.post("/batches", content=csv, headers={**headers, "Content-Type": "text/csv"})
    assert sent.status_code == 201, sent.json()
    assert sent.json()["cards_requested"] == 3
    batch_id = sent.json()["batch_id"]
    with store.read() as s:
        cards = s.scalars(select(Credential.id).where(Credential.batch_id == batch_id)).all()
    return Pending(
        f"/batches/{batch_id}/approve",
        ((BatchOrder, batch_id), *((Credential, c) for c in cards)),
    )


def _softtoken(client: TestClient, store: Store, headers: Headers) -> Pending:
    asked = client.post(
        "/softtokens", json={"user": _email(store), "types": ["user-p12"]}, headers=headers
    )
    assert asked.status_code == 201, asked.json()
    assert asked.json()["state"] == "requested"
    (token_id,) = asked.json()["ids"]
    return Pending(f"/softtokens/{token_id}/approve", ((SoftToken, token_id),))


def _replacement(client: TestClient, store: Store, headers: Headers) -> Pending:
    with store.tx() as s:
        card_id = factories.credential(s, "active").id
    declared = client.post(f"/cards/{card_id}/incidents", json={"kind": "lost"}, headers=headers)
    assert declared.status_code == 201, declared.json()
    incident = declared.json()
    assert incident["replacement_id"] is not None
    rows = ((Incident, incident["id"]), (Credential, incident["replacement_id"]))
    return Pending(f"/incidents/{incident['id']}/approve", rows)


def _replacement_card(client: TestClient, store: Store, headers: Headers) -> Pending:
    """The replacement card an incident requested, approved as a card rather than
    through the incident."""
    _, card = _replacement(client, store, headers).rows
    return Pending(f"/cards/{card[1]}/approve", (card,))


REQUESTS: dict[str, Callable[[TestClient, Store, Headers], Pending]] = {
    "card": _card,
    "batch": _batch,
    "softtoken": _softtoken,
    "replacement": _replacement,
    "replacement-card": _replacement_card,
}


def _states(store: Store, pending: Pending) -> list[str]:
    states = []
    with store.read() as s:
        for model, row_id in pending.rows:
            row = s.get(model, row_id)
            assert row is not None
            states.append(row.state)
    return states


def _footprint(store: Store) -> tuple[int, int]:
    """Audit events (but the record of a refusal) and outbox messages."""
    with store.read() as s:
        audit = select(func.count()).select_from(AuditEvent).where(AuditEvent.action != "refused")
        return (
            int(s.scalar(audit) or 0),
            int(s.scalar(select(func.count()).select_from(OutboxMessage)) or 0),
        )


def _last_seq(store: Store) -> int:
    with store.read() as s:
        return int(s.scalar(select(func.max(AuditEvent.seq))) or 0)


def _actors_since(store: Store, seq: int) -> set[str]:
    with store.read() as s:
        return set(s.scalars(select(AuditEvent.actor).where(AuditEvent.seq > seq)))


@pytest.mark.parametrize("kind", list(REQUESTS))
def test_a_requester_with_two_tokens_cannot_approve_their_own_request_with_either(
    store, client, alice, kind
):
    pid, first, second = alice
    pending = REQUESTS[kind](client, store, first)
    before, footprint = _states(store, pending), _footprint(store)
    assert set(before) <= {"requested", "open"}
    for headers in (second, first):
        own = client.post(pending.approve, json={}, headers=headers)
        assert own.status_code == 403, (kind, own.json())
        assert own.json()["error"]["code"] == "four_eyes"
        assert _states(store, pending) == before
        assert _footprint(store) == footprint  # no audit event (but a refusal), no message
    bob = p.create_principal(store, "bob", roles=["approver"], by="tests")
    seq = _last_seq(store)
    other = client.post(pending.approve, json={}, headers=_bearer(store, bob))
    assert other.status_code == 200, (kind, other.json())
    assert all(state in ("approved", "closed") for state in _states(store, pending))
    assert f"principal:{bob}" in _actors_since(store, seq)
    assert f"principal:{pid}" not in _actors_since(store, seq)


@pytest.mark.parametrize(
    "spelling",
    ["Ops-A", "OPS-A", " ops-a ", "\uff4f\uff50\uff53-\uff41", "\uff2f\uff30\uff33\uff0d\uff21"],
    ids=["title-case", "upper-case", "padded", "fullwidth", "fullwidth-upper-hyphen"],
)
def test_a_second_spelling_of_a_name_is_the_same_principal_not_a_new_one(store, spelling):
    pid = p.create_principal(store, "ops-a", roles=["requester"], by="tests")
    with pytest.raises(ValidationFailed, match="'ops-a' exists") as refused:
        p.create_principal(store, spelling, roles=["approver"], by="tests")
    assert refused.value.field == "name"
    assert p.find_principal(store, spelling) == pid
    # A token asked for under the other spelling is one more token of the same principal,
    # so its approvals are the requester's own.
    _, token = create_token(store, name=spelling, role="approver", by="tests")
    assert p.authenticate(store, token.reveal()).actor == f"principal:{pid}"
