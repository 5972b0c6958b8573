"""Device incidents are no side door: declaring a kind that locks the card needs the
role that may lock it, and cancelling an incident undoes only what the incident did.
On SQLite and PostgreSQL."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import select

from db.engine import Store, open_store, sqlite_url
from db.models import ApprovalRequest, AuditEvent, Certificate, Credential
from db.secrets import SecretBox
from ops.cli import main
from producers import certificates, incidents, lifecycle
from producers import principals as p
from producers.api.app import create_app
from producers.api.context import ApiContext
from schemas import permissions
from schemas.permissions import UseCase
from schemas.pki import PkiConfig
from schemas.policy import ApprovalSteps, Policy
from tests import factories
from tests.principals import token_for

POLICY = Policy(replacement_approval_required=True)
OFF = ApprovalSteps()  # no process waits for an approver


@pytest.fixture
def lock_for_admins_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Today's table grants ``card.incident`` and ``card.lock`` to the same roles; narrow
    ``card.lock`` so that an operator may declare incidents but not lock a card (as a
    table granting incidents to the help desk or a requester would have it)."""
    narrowed = UseCase("card.lock", "lock a card", frozenset())
    monkeypatch.setitem(permissions.BY_NAME, "card.lock", narrowed)


def _card(store: Store, state: str = "active") -> int:
    with store.tx() as s:
        return factories.credential(s, state).id


def _state(store: Store, model: type[Credential] | type[Certificate], row_id: int) -> str:
    with store.read() as s:
        row = s.get(model, row_id)
        assert row is not None
        return row.state


def _refusals(store: Store) -> list[str]:
    with store.read() as s:
        return [
            e.reason or ""
            for e in s.scalars(select(AuditEvent).where(AuditEvent.action == "refused"))
        ]


def _client(store: Store, tmp_path: Path, steps: ApprovalSteps = OFF) -> TestClient:
    ctx = ApiContext(
        store=store,
        box=SecretBox(os.urandom(32)),
        policy=POLICY,
        pki=PkiConfig(),
        crl_dir=tmp_path / "crl",
        ca_chain=tmp_path / "chain.pem",
        rejects_dir=tmp_path / "rejects",
        approvals=steps,
    )
    return TestClient(create_app(ctx), raise_server_exceptions=False)


@pytest.fixture
def client(store: Store, tmp_path: Path) -> TestClient:
    return _client(store, tmp_path)


def _bearer(store: Store, name: str, roles: list[str]) -> dict[str, str]:
    pid = p.create_principal(store, name, roles=roles, by="tests")
    _, token = p.issue_token(store, pid, by="tests")
    return {"Authorization": f"Bearer {token.reveal()}"}


@pytest.mark.parametrize("kind", ["stolen", "damaged"])
def test_a_principal_who_may_not_lock_cannot_lock_a_card_by_declaring_an_incident_over_http(
    store, client, lock_for_admins_only, kind
):
    olga = _bearer(store, "olga", ["operator"])
    card = _card(store)
    refused = client.post(f"/cards/{card}/incidents", json={"kind": kind}, headers=olga)
    assert refused.status_code == 403, refused.json()
    assert "card.lock" in refused.json()["error"]["message"]
    assert _state(store, Credential, card) == "active"
    assert incidents.list_incidents(store) == []
    assert any("card.lock" in r for r in _refusals(store))
    # An incident that only deactivates the card stays hers to declare.
    lost = client.post(f"/cards/{card}/incidents", json={"kind": "lost"}, headers=olga)
    assert lost.status_code == 201, lost.json()
    assert _state(store, Credential, card) == "inactive"


def test_a_principal_who_may_lock_still_declares_a_card_stolen_over_http(store, client):
    olga = _bearer(store, "olga", ["operator"])
    card = _card(store)
    declared = client.post(f"/cards/{card}/incidents", json={"kind": "stolen"}, headers=olga)
    assert declared.status_code == 201, declared.json()
    assert _state(store, Credential, card) == "locked"


def test_a_principal_who_may_not_lock_cannot_lock_a_card_by_declaring_it_stolen_in_the_cli(
    tmp_path, lock_for_admins_only
):
    data = tmp_path / "d"
    runner = CliRunner()
    assert runner.invoke(main, ["db", "upgrade", "--data-dir", str(data)]).exit_code == 0
    store = open_store(sqlite_url(data))
    try:
        card = _card(store)
        env = {"CARDLINE_TOKEN": token_for(store, "olga", ["operator"])}

        def declare(kind: str):
            argv = ["incident", "declare", str(card), "--kind", kind, "--data-dir", str(data)]
            return runner.invoke(main, argv, env=env, catch_exceptions=False)

        refused = declare("stolen")
        assert refused.exit_code == 2, refused.output
        assert "card.lock" in refused.output
        assert _state(store, Credential, card) == "active"
        assert incidents.list_incidents(store) == []
        assert any("card.lock" in r for r in _refusals(store))
        lost = declare("lost")
        assert lost.exit_code == 0, lost.output
        assert _state(store, Credential, card) == "inactive"
    finally:
        store.dispose()


def test_cancelling_an_incident_on_a_card_an_operator_deactivated_leaves_it_inactive(store):
    with store.tx() as s:
        cert = factories.certificate(s)
        card, serial = cert.credential_id, cert.serial
    lifecycle.deactivate_card(store, str(card), by="olga", reason="left on a train")
    incident = incidents.declare(store, str(card), "lost", by="helpdesk", policy=POLICY, steps=OFF)
    incidents.cancel(store, incident.id, by="helpdesk")
    assert _state(store, Credential, card) == "inactive"
    with store.read() as s:
        found = s.scalars(select(Certificate).where(Certificate.serial == serial)).one()
        assert found.state == "hold"


def test_cancelling_an_incident_releases_only_the_certificates_the_incident_held(store):
    with store.tx() as s:
        held = factories.certificate(s)
        card = held.credential_id
        valid = factories.certificate(s)
        valid.credential_id, valid.usage = card, "encryption"
        held.serial, valid.serial = "a1", "a2"  # as the CA writes them: no leading zeros
        held_serial, valid_serial = held.serial, valid.serial
    certificates.hold(store, held_serial, by="olga", reason="suspected misuse")
    incident = incidents.declare(store, str(card), "lost", by="helpdesk", policy=POLICY, steps=OFF)
    assert _state(store, Credential, card) == "inactive"
    incidents.cancel(store, incident.id, by="helpdesk")
    assert _state(store, Credential, card) == "active"
    with store.read() as s:
        rows = s.execute(
            select(Certificate.serial, Certificate.state).where(Certificate.credential_id == card)
        )
        states = {serial: state for serial, state in rows}
    assert states == {held_serial: "hold", valid_serial: "valid"}


def test_cancelling_an_incident_leaves_a_card_an_earlier_incident_put_out_of_use_inactive(
    store,
):
    card = _card(store)
    policy = Policy(replacement_approval_required=True, cards_per_user=3)
    first = incidents.declare(store, str(card), "lost", by="helpdesk", policy=policy, steps=OFF)
    incidents.approve(store, first.id, by="bob", policy=policy)  # replaced: stays out
    assert _state(store, Credential, card) == "inactive"
    second = incidents.declare(store, str(card), "lost", by="helpdesk", policy=policy, steps=OFF)
    incidents.cancel(store, second.id, by="helpdesk")
    assert _state(store, Credential, card) == "inactive"


def test_cancelling_an_incident_puts_the_card_it_deactivated_back_in_use(store):
    with store.tx() as s:
        cert = factories.certificate(s)
        card, serial = cert.credential_id, cert.serial
    incident = incidents.declare(
        store, str(card), "forgotten", by="helpdesk", policy=POLICY, steps=OFF
    )
    assert _state(store, Credential, card) == "inactive"
    incidents.cancel(store, incident.id, by="helpdesk")
    assert _state(store, Credential, card) == "active"
    with store.read() as s:
        found = s.scalars(select(Certificate).where(Certificate.serial == serial)).one()
        assert found.state == "valid"


# --- a locking incident obeys the card-lock approval step -------------------------------


def _certified_card(store: Store) -> tuple[int, int]:
    with store.tx() as s:
        cert = factories.certificate(s)
        return cert.credential_id, cert.id


@pytest.mark.parametrize("kind", ["stolen", "damaged"])
def test_with_card_locks_held_a_locking_incident_deactivates_the_card_and_its_lock_waits(
    store, tmp_path, kind
):
    client = _client(store, tmp_path, ApprovalSteps(card_lock=True))
    olga = _bearer(store, "olga", ["operator", "approver"])
    bob = _bearer(store, "bob", ["approver"])
    card, cert = _certified_card(store)

    declared = client.post(f"/cards/{card}/incidents", json={"kind": kind}, headers=olga)
    assert declared.status_code == 201, declared.json()
    request_id = declared.json()["lock_request_id"]
    assert request_id is not None
    # Out of use at once, and reversibly: nothing is revoked before an approver says so.
    assert _state(store, Credential, card) == "inactive"
    assert _state(store, Certificate, cert) == "hold"
    waiting = client.get("/approvals", headers=bob).json()
    assert ("request", request_id) in [(w["kind"], w["id"]) for w in waiting]
    assert client.get("/incidents", headers=bob).json()[0]["lock_request_id"] == request_id

    own = client.post(f"/approvals/requests/{request_id}/approve", headers=olga)
    assert own.status_code == 403
    assert own.json()["error"]["code"] == "four_eyes"
    assert _state(store, Credential, card) == "inactive"
    approved = client.post(f"/approvals/requests/{request_id}/approve", headers=bob)
    assert approved.status_code == 200, approved.json()
    assert _state(store, Credential, card) == "locked"
    assert _state(store, Certificate, cert) == "revoked"


def test_cancelling_an_incident_withdraws_the_lock_it_asked_for_and_restores_the_card(
    store, tmp_path
):
    client = _client(store, tmp_path, ApprovalSteps(card_lock=True))
    olga = _bearer(store, "olga", ["operator"])
    card, cert = _certified_card(store)
    declared = client.post(f"/cards/{card}/incidents", json={"kind": "stolen"}, headers=olga)
    assert declared.status_code == 201, declared.json()
    incident, request_id = declared.json()["id"], declared.json()["lock_request_id"]
    found = client.post(
        f"/incidents/{incident}/cancel", json={"reason": "found in a drawer"}, headers=olga
    )
    assert found.status_code == 200, found.json()
    assert _state(store, Credential, card) == "active"
    assert _state(store, Certificate, cert) == "valid"
    with store.read() as s:
        assert s.get(ApprovalRequest, request_id).state == "cancelled"


def test_with_card_locks_held_a_lost_card_needs_no_approver_to_go_out_of_use(store, tmp_path):
    client = _client(store, tmp_path, ApprovalSteps(card_lock=True))
    card, _cert = _certified_card(store)
    declared = client.post(
        f"/cards/{card}/incidents",
        json={"kind": "lost"},
        headers=_bearer(store, "olga", ["operator"]),
    )
    assert declared.status_code == 201, declared.json()
    assert declared.json()["lock_request_id"] is None
    assert _state(store, Credential, card) == "inactive"
