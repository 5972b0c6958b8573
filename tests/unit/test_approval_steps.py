"""The approval step on lifecycle processes (seed 002 §4.2) and validated issuance
(seed 001): an operation held for an approver changes nothing until a second principal
approves it; its requester can never decide it; one that has become impossible fails
and changes nothing; one that could not succeed now is refused at once."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from db.engine import open_store, sqlite_url
from db.models import ApprovalRequest, AuditEvent, Certificate, Credential
from db.secrets import SecretBox
from ops.cli import main
from producers import escrow, pending
from producers.api.app import create_app
from producers.api.context import ApiContext
from schemas.errors import FourEyesViolation, PermanentError, Refused, StateConflict
from schemas.permissions import BY_NAME
from schemas.pki import PkiConfig
from schemas.policy import ApprovalSteps, Policy
from tests import factories
from tests.principals import token_for

LOCK_HELD = ApprovalSteps(card_lock=True)


def _client(store, tmp_path: Path, *, steps: ApprovalSteps, policy: Policy | None = None):
    ctx = ApiContext(
        store=store,
        box=SecretBox(os.urandom(32)),
        policy=policy or Policy(),
        pki=PkiConfig(),
        crl_dir=tmp_path / "crl",
        ca_chain=tmp_path / "ca-chain.pem",
        rejects_dir=tmp_path / "rejects",
        approvals=steps,
    )
    return TestClient(create_app(ctx), raise_server_exceptions=False)


def _bearer(store, name: str, *roles: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token_for(store, name, roles)}"}


def _active_card(store) -> tuple[int, int]:
    """An active card with one valid certificate: (card id, certificate id)."""
    with store.tx() as s:
        cert = factories.certificate(s, "valid")
        return cert.credential_id, cert.id


def _states(store, card_id: int, cert_id: int) -> tuple[str, str]:
    with store.read() as s:
        return s.get(Credential, card_id).state, s.get(Certificate, cert_id).state


def test_every_process_an_approval_step_can_hold_has_its_option_and_its_use_case():
    options = set(ApprovalSteps.model_fields)
    assert {p.replace(".", "_") for p in pending.PROCESSES} == options
    assert all(p in BY_NAME for p in pending.PROCESSES)
    assert not any(ApprovalSteps().required(p) for p in pending.PROCESSES)  # off by default


def test_a_held_card_lock_changes_nothing_until_another_principal_approves_it(store, tmp_path):
    client = _client(store, tmp_path, steps=LOCK_HELD)
    olga = _bearer(store, "olga", "operator", "approver")
    bob = _bearer(store, "bob", "approver")
    card, cert = _active_card(store)

    held = client.post(f"/cards/{card}/lock", json={"reason": "key_compromise"}, headers=olga)
    assert held.status_code == 202, held.json()
    request_id = held.json()["request_id"]
    assert _states(store, card, cert) == ("active", "valid")
    waiting = client.get("/approvals", headers=bob).json()
    assert [(w["kind"], w["id"]) for w in waiting] == [("request", request_id)]
    assert waiting[0]["decide"] == f"cardline approvals approve {request_id}"

    # Olga holds the approver role too, and still may not approve her own request.
    own = client.post(f"/approvals/requests/{request_id}/approve", headers=olga)
    assert own.status_code == 403
    assert own.json()["error"]["code"] == "four_eyes"
    assert _states(store, card, cert) == ("active", "valid")
    with store.read() as s:
        last = s.scalars(select(AuditEvent).order_by(AuditEvent.seq.desc()).limit(1)).one()
    assert (last.action, last.entity) == ("refused", "principal")

    approved = client.post(f"/approvals/requests/{request_id}/approve", headers=bob)
    assert approved.status_code == 200, approved.json()
    assert approved.json()["state"] == "approved"
    assert _states(store, card, cert) == ("locked", "revoked")
    again = client.post(f"/approvals/requests/{request_id}/approve", headers=bob)
    assert again.status_code == 409


def test_with_the_step_off_the_same_call_locks_at_once(store, tmp_path):
    client = _client(store, tmp_path, steps=ApprovalSteps())
    card, cert = _active_card(store)
    done = client.post(
        f"/cards/{card}/lock",
        json={"reason": "key_compromise"},
        headers=_bearer(store, "olga", "operator"),
    )
    assert done.status_code == 200
    assert done.json() == {"certificates": 1}
    assert _states(store, card, cert) == ("locked", "revoked")


def test_a_request_that_could_not_succeed_now_is_refused_at_once_and_nothing_is_held(store):
    card, _cert = _active_card(store)
    with store.tx() as s:
        s.get(Credential, card).state = "locked"  # a raw change: the card is past locking
    with pytest.raises(StateConflict):
        pending.perform(
            store,
            "card.lock",
            str(card),
            {"reason": "key_compromise"},
            by="principal:1",
            policy=Policy(),
            steps=LOCK_HELD,
        )
    with store.read() as s:
        assert s.scalar(select(func.count()).select_from(ApprovalRequest)) == 0


def test_a_request_that_became_impossible_fails_and_changes_nothing_else(store):
    card, cert = _active_card(store)
    held = pending.perform(
        store,
        "card.deactivate",
        str(card),
        {"reason": "on leave"},
        by="principal:1",
        policy=Policy(),
        steps=ApprovalSteps(card_deactivate=True),
    )
    assert not held.done
    pending.perform(
        store,
        "card.lock",
        str(card),
        {"reason": "key_compromise"},
        by="principal:3",
        policy=Policy(),
        steps=ApprovalSteps(),
    )
    decision = pending.approve(store, held.request_id, by="principal:2", policy=Policy())
    assert decision.state == "failed"
    assert "locked" in decision.outcome
    assert _states(store, card, cert) == ("locked", "revoked")
    with store.read() as s:
        row = s.get(ApprovalRequest, held.request_id)
        assert (row.state, row.decided_by) == ("failed", "principal:2")


def test_a_rejected_request_needs_a_reason_and_is_never_carried_out(store):
    card, cert = _active_card(store)
    held = pending.perform(
        store,
        "card.lock",
        str(card),
        {"reason": "key_compromise"},
        by="principal:1",
        policy=Policy(),
        steps=LOCK_HELD,
    )
    with pytest.raises(FourEyesViolation):
        pending.reject(store, held.request_id, by="principal:1", reason="mine")
    decision = pending.reject(store, held.request_id, by="principal:2", reason="not lost")
    assert decision.state == "rejected"
    assert _states(store, card, cert) == ("active", "valid")


def test_only_the_requester_may_cancel_and_a_second_request_for_the_same_card_waits(store):
    card, _cert = _active_card(store)

    def lock(by: str):
        return pending.perform(
            store,
            "card.lock",
            str(card),
            {"reason": "key_compromise"},
            by=by,
            policy=Policy(),
            steps=LOCK_HELD,
        )

    held = lock("principal:1")
    with pytest.raises(StateConflict, match="already waits"):
        lock("principal:2")
    with pytest.raises(Refused):
        pending.cancel(store, held.request_id, by="principal:2")
    assert pending.cancel(store, held.request_id, by="principal:1").state == "cancelled"
    assert not lock("principal:2").done  # the card may be asked for again


def test_validated_issuance_refuses_to_issue_a_card_without_an_approver(store, tmp_path):
    with store.tx() as s:
        user = factories.user(s)
        user_id = user.id
    olga = _bearer(store, "olga", "operator")
    validated = _client(store, tmp_path, steps=ApprovalSteps())
    refused = validated.post("/cards/issue", json={"users": [str(user_id)]}, headers=olga)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "approval_required"
    with store.read() as s:
        assert s.scalar(select(func.count()).select_from(Credential)) == 0
    local = _client(store, tmp_path, steps=ApprovalSteps(), policy=Policy(approval_required=False))
    issued = local.post("/cards/issue", json={"users": [str(user_id)]}, headers=olga)
    assert issued.status_code == 201, issued.json()


def test_with_the_card_lock_step_on_cardline_card_lock_becomes_a_pending_request(tmp_path):
    data = tmp_path / "d"
    config = tmp_path / "cardline.toml"
    config.write_text("[approvals]\ncard_lock = true\n", encoding="utf-8")
    env = {"CARDLINE_CONFIG": str(config)}
    runner = CliRunner()
    assert runner.invoke(main, ["db", "upgrade", "--data-dir", str(data)]).exit_code == 0
    store = open_store(sqlite_url(data))
    card, cert = _active_card(store)
    olga = {**env, "CARDLINE_TOKEN": token_for(store, "olga", ["operator"])}
    bob = {**env, "CARDLINE_TOKEN": token_for(store, "bob", ["approver"])}

    def cli(*args: str, as_: dict[str, str]):
        return runner.invoke(main, [*args, "--data-dir", str(data)], env=as_)

    held = cli("card", "lock", str(card), "--reason", "key_compromise", as_=olga)
    assert held.exit_code == 0, held.output
    assert "waits for an approver" in held.output
    assert _states(store, card, cert) == ("active", "valid")
    listed = cli("approvals", "list", "--json", as_=bob)
    (item,) = json.loads(listed.output.splitlines()[-1])["waiting"]
    own = cli("approvals", "approve", str(item["id"]), as_=olga)
    assert own.exit_code == 2  # olga is no approver
    approved = cli("approvals", "approve", str(item["id"]), as_=bob)
    assert approved.exit_code == 0, approved.output
    assert _states(store, card, cert) == ("locked", "revoked")
    store.dispose()


# --- a card in someone else's name (issue 17, point 1) ---------------------------------


HOLDER = {
    "first_name": "Grace",
    "last_name": "Hopper",
    "email": "grace@example.org",
    "upn": "grace@corp.example.org",
    "organization": "Navy",
    "org_unit": "Computing",
}


def test_a_user_carrying_another_holders_upn_is_refused_in_any_case(store, tmp_path):
    client = _client(store, tmp_path, steps=ApprovalSteps())
    rita = _bearer(store, "rita", "requester", "operator")
    assert client.post("/users", json=HOLDER, headers=rita).status_code == 201
    twin = {**HOLDER, "email": "mallory@example.org", "upn": "GRACE@corp.example.org"}
    refused = client.post("/users", json=twin, headers=rita)
    assert refused.status_code == 409, refused.json()
    assert "upn" in refused.json()["error"]["message"]
    other = client.post("/users", json={**twin, "upn": "mallory@corp.example.org"}, headers=rita)
    assert other.status_code == 201
    taken = client.patch(
        f"/users/{other.json()['id']}", json={"upn": "grace@corp.example.org"}, headers=rita
    )
    assert taken.status_code == 409


def test_renaming_a_holder_with_live_certificates_waits_for_an_approver(store, tmp_path):
    client = _client(store, tmp_path, steps=ApprovalSteps())  # user_edit itself is off
    olga = _bearer(store, "olga", "operator")
    bob = _bearer(store, "bob", "approver")
    card, _cert = _active_card(store)
    with store.read() as s:
        user = s.get(Credential, card).user
        user_id, old_upn = user.id, user.upn
    held = client.patch(f"/users/{user_id}", json={"upn": "new@corp.example.org"}, headers=olga)
    assert held.status_code == 202, held.json()
    # A title is on no certificate: it changes at once.
    assert client.patch(f"/users/{user_id}", json={"title": "Dr"}, headers=olga).status_code == 200
    with store.read() as s:
        assert s.get(Credential, card).user.upn == old_upn
    done = client.post(f"/approvals/requests/{held.json()['request_id']}/approve", headers=bob)
    assert done.json()["state"] == "approved"
    with store.read() as s:
        assert s.get(Credential, card).user.upn == "new@corp.example.org"


# --- escrow exports under dual control (issue 17, point 8) ------------------------------


ESCROW_HELD = ApprovalSteps(escrow_export=True)


def _escrowed_card(store, box: SecretBox) -> int:
    """An active card with a sealed escrowed key and that key's certificate."""
    with store.tx() as s:
        cert = factories.certificate(s, "valid")
        cert.usage = "encryption"
        card = s.get(Credential, cert.credential_id)
        card.escrow_key_sealed = box.seal(
            "-----BEGIN PRIVATE KEY-----", context=f"credential:{card.id}:escrow_key"
        )
        return card.id


def test_under_dual_control_an_escrowed_key_leaves_only_by_its_requesters_approved_grant(
    store, box
):
    card, other = _escrowed_card(store, box), _escrowed_card(store, box)

    def collect(card_id: int, by: str, request_id: int | None):
        return escrow.escrowed_key(
            store, box, str(card_id), by=by, steps=ESCROW_HELD, request_id=request_id
        )

    with pytest.raises(Refused, match="dual control"):
        collect(card, "principal:1", None)
    held = pending.perform(
        store, "escrow.export", str(card), {}, by="principal:1", policy=Policy(), steps=ESCROW_HELD
    )
    assert not held.done
    with pytest.raises(StateConflict, match="pending"):
        collect(card, "principal:1", held.request_id)
    assert pending.approve(store, held.request_id, by="principal:2", policy=Policy()).state == (
        "approved"
    )
    with pytest.raises(Refused, match="not card"):
        collect(other, "principal:1", held.request_id)
    with pytest.raises(Refused, match="only they"):
        collect(card, "principal:2", held.request_id)
    assert collect(card, "principal:1", held.request_id).key_pem.reveal().startswith("-----")
    with pytest.raises(StateConflict, match="collected"):
        collect(card, "principal:1", held.request_id)
    with store.read() as s:
        actions = [
            e.action
            for e in s.scalars(select(AuditEvent).where(AuditEvent.action == "escrow_export"))
        ]
    assert actions == ["escrow_export"]


def test_an_export_of_a_card_without_an_escrowed_key_is_refused_as_a_request(store):
    card, _cert = _active_card(store)
    with pytest.raises(PermanentError, match="no escrowed key"):
        pending.perform(
            store,
            "escrow.export",
            str(card),
            {},
            by="principal:1",
            policy=Policy(),
            steps=ESCROW_HELD,
        )
    with store.read() as s:
        assert s.scalar(select(func.count()).select_from(ApprovalRequest)) == 0
