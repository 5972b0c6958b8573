"""The HTTP API: roles on every endpoint, four-eyes, errors as JSON naming the field,
and the card and user use cases through HTTP on SQLite and PostgreSQL."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from db.engine import open_store, sqlite_url
from db.migrate import upgrade
from db.models import ApiToken, AuditEvent, Certificate, Credential
from db.secrets import SecretBox
from producers.api.app import api_routes, create_app, roles_of
from producers.api.context import ApiContext
from producers.tokens import create_token
from schemas.permissions import roles_for
from schemas.pki import PkiConfig
from schemas.policy import Policy
from schemas.roles import Role
from tests import factories

USER = {
    "first_name": "Grace",
    "last_name": "Hopper",
    "email": "grace@example.org",
    "upn": "grace@corp.example.org",
    "organization": "Navy",
    "org_unit": "Computing",
}


def _app(store, tmp_path: Path, policy: Policy | None = None) -> TestClient:
    chain = tmp_path / "ca-chain.pem"
    if tmp_path.is_dir():
        chain.write_text("-----BEGIN CERTIFICATE-----\n")
    ctx = ApiContext(
        store=store,
        box=SecretBox(os.urandom(32)),
        policy=policy or Policy(),
        pki=PkiConfig(),
        crl_dir=tmp_path / "crl",
        ca_chain=chain,
        rejects_dir=tmp_path / "rejects",
    )
    return TestClient(create_app(ctx), raise_server_exceptions=False)


def _auth(store, name: str, role: str) -> dict[str, str]:
    _, secret = create_token(store, name=name, role=role, by="tests")
    return {"Authorization": f"Bearer {secret.reveal()}"}


@pytest.fixture
def client(store, tmp_path):
    return _app(store, tmp_path)


# --- the role matrix -------------------------------------------------------------------


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    folder = tmp_path_factory.mktemp("matrix")
    store = open_store(sqlite_url(folder))
    upgrade(store)
    client = _app(store, folder)
    headers = {role: _auth(store, f"{role.value}-person", role.value) for role in Role}
    yield client, headers, store
    store.dispose()


def _operations() -> list[tuple[str, str, frozenset[Role] | None]]:
    app = _app(None, Path("/nonexistent"))
    found = []
    for route in api_routes(app.app.routes):  # type: ignore[attr-defined]  # TestClient.app
        for method in sorted(route.methods or ()):
            found.append((method, route.path, roles_of(route)))
    return found


OPERATIONS = _operations()
PUBLIC = None
# Which use case each endpoint runs, written down by hand: a new endpoint, or one that
# moves to another use case, is a decision made here. The roles come from the one table
# (schemas.permissions), which the CLI and the console check too.
USE_CASES: dict[tuple[str, str], str | None] = {
    ("GET", "/health"): PUBLIC,
    ("GET", "/status"): "line.status",
    ("GET", "/alerts"): "alerts.read",
    ("GET", "/metrics"): "metrics.read",
    ("POST", "/users"): "user.create",
    ("GET", "/users"): "user.read",
    ("GET", "/users/{user}"): "user.read",
    ("PATCH", "/users/{user}"): "user.edit",
    ("POST", "/users/{user}/deactivate"): "user.deactivate",
    ("POST", "/users/{user}/reactivate"): "user.reactivate",
    ("POST", "/users/{user}/lock"): "user.lock",
    ("DELETE", "/users/{user}"): "user.delete",
    ("POST", "/bulk/users/deactivate"): "user.bulk",
    ("POST", "/bulk/users/lock"): "user.bulk",
    ("POST", "/bulk/users/delete"): "user.bulk",
    ("POST", "/cards"): "card.request",
    ("POST", "/cards/issue"): "card.issue",
    ("GET", "/cards"): "card.read",
    ("GET", "/cards/{card}"): "card.read",
    ("POST", "/cards/{card}/approve"): "card.decide",
    ("POST", "/cards/{card}/reject"): "card.decide",
    ("POST", "/cards/{card}/postpone"): "card.decide",
    ("POST", "/cards/{card}/cancel"): "card.cancel",
    ("POST", "/cards/{card}/activate"): "card.activate",
    ("POST", "/cards/{card}/deactivate"): "card.deactivate",
    ("POST", "/cards/{card}/reactivate"): "card.reactivate",
    ("POST", "/cards/{card}/lock"): "card.lock",
    ("POST", "/cards/{card}/recover-escrow"): "card.recover",
    ("POST", "/batches"): "batch.import",
    ("POST", "/batches/{batch_id}/approve"): "batch.decide",
    ("POST", "/batches/{batch_id}/reject"): "batch.decide",
    ("POST", "/certificates/{serial}/revoke"): "certificate.revoke",
    ("POST", "/certificates/{serial}/hold"): "certificate.hold",
    ("POST", "/certificates/{serial}/release"): "certificate.hold",
    ("GET", "/crl/issuing.crl"): PUBLIC,
    ("GET", "/crl/root.crl"): PUBLIC,
    ("GET", "/ca/chain.pem"): PUBLIC,
    ("POST", "/softtokens"): "softtoken.request",
    ("GET", "/softtokens"): "softtoken.read",
    ("POST", "/softtokens/{token_id}/approve"): "softtoken.decide",
    ("POST", "/softtokens/{token_id}/reject"): "softtoken.decide",
    ("POST", "/softtokens/{token_id}/cancel"): "softtoken.manage",
    ("POST", "/softtokens/{token_id}/revoke"): "softtoken.manage",
    ("POST", "/softtokens/{token_id}/passphrase"): "softtoken.password",
    ("POST", "/cpr"): "cpr.submit",
    ("POST", "/tempcards/stock"): "tempcard.stock",
    ("POST", "/tempcards/{card}/assign"): "tempcard.assign",
    ("POST", "/tempcards/{card}/extend"): "tempcard.extend",
    ("POST", "/tempcards/{card}/withdraw"): "tempcard.withdraw",
    ("POST", "/tempcards/{card}/lock"): "card.lock",
    ("GET", "/batches"): "batch.read",
    ("GET", "/batches/{batch_id}"): "batch.read",
    ("POST", "/cards/{card}/renew"): "card.renew",
    ("POST", "/cards/{card}/unblock"): "card.unblock",
    ("POST", "/cards/{card}/pin-reset"): "card.unblock",
    ("POST", "/bureaus/{name}/orders"): "bureau.export",
    ("POST", "/bureaus/{name}/deliveries"): "bureau.import",
    ("GET", "/bureaus/report"): "bureau.read",
    ("PATCH", "/cards/{card}"): "card.edit",
    ("POST", "/cards/{card}/incidents"): "card.incident",
    ("GET", "/incidents"): "incident.read",
    ("POST", "/incidents/{incident_id}/approve"): "incident.decide",
    ("POST", "/incidents/{incident_id}/cancel"): "card.incident",
    ("GET", "/approvals"): "approvals.read",
    ("GET", "/approvals/requests"): "approvals.read",
    ("POST", "/approvals/requests/{request_id}/approve"): "request.decide",
    ("POST", "/approvals/requests/{request_id}/reject"): "request.decide",
    ("POST", "/approvals/requests/{request_id}/cancel"): "request.cancel",
    ("GET", "/principals"): "principal.admin",
    ("POST", "/principals"): "principal.admin",
    ("PUT", "/principals/{principal_id}/roles"): "principal.roles",
    ("POST", "/principals/{principal_id}/tokens"): "principal.admin",
    ("DELETE", "/tokens/{token_id}"): "principal.admin",
    ("POST", "/console/login"): PUBLIC,
    ("GET", "/console/session"): PUBLIC,
    ("POST", "/console/logout"): PUBLIC,
    ("POST", "/lines/{line}/pause"): "line.pause",
    ("POST", "/lines/{line}/resume"): "line.pause",
    ("POST", "/stations/{station_id}/pause"): "line.pause",
    ("POST", "/stations/{station_id}/resume"): "line.pause",
    ("POST", "/cards/{card}/retry"): "card.retry",
    ("POST", "/batches/{batch_id}/cancel"): "batch.cancel",
    ("POST", "/batches/{batch_id}/priority"): "batch.priority",
    ("GET", "/console/login"): PUBLIC,
    ("GET", "/console"): "line.status",
    ("GET", "/console/stations"): "line.status",
    ("GET", "/console/batches"): "batch.read",
    ("GET", "/console/batches/{batch_id}/rejects"): "batch.read",
    ("GET", "/console/cards"): "card.read",
    ("GET", "/console/cards/{card}"): "card.read",
    ("GET", "/console/alerts"): "alerts.read",
}
# Public to every role, but only with a console session (who am I, log out): a principal
# with no role at all may still see who is signed in and log out.
SIGNED_IN = {("GET", "/console/session"), ("POST", "/console/logout")}


def test_every_endpoint_declares_the_roles_of_its_use_case_in_the_one_table():
    declared = {(m, p): roles for m, p, roles in OPERATIONS}
    assert set(declared) == set(USE_CASES)
    for key, use_case in USE_CASES.items():
        expected = None if use_case is None else roles_for(use_case)
        assert declared[key] == expected, key


def _call(client: TestClient, method: str, path: str, headers: dict[str, str]):
    concrete = (
        path.replace("{user}", "1")
        .replace("{card}", "1")
        .replace("{serial}", "ab")
        .replace("{token_id}", "1")
        .replace("{batch_id}", "1")
        .replace("{incident_id}", "1")
        .replace("{request_id}", "1")
        .replace("{principal_id}", "1")
    )
    body = b"" if method in ("GET", "DELETE") else b"{}"
    return client.request(
        method, concrete, content=body, headers={**headers, "Content-Type": "application/json"}
    )


@pytest.mark.parametrize(
    ("method", "path", "roles"), OPERATIONS, ids=[f"{m} {p}" for m, p, _ in OPERATIONS]
)
def test_every_endpoint_admits_exactly_its_roles_and_audits_each_refusal(
    matrix, method, path, roles
):
    client, headers, store = matrix
    if roles is None:  # public: the CRL, the CA chain, liveness, the console's login
        refused = _call(client, method, path, {}).status_code == 401
        assert refused == ((method, path) in SIGNED_IN)
        return
    anonymous = _call(client, method, path, {})
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"] == "Bearer"
    assert Role.ADMIN in roles
    for role in Role:
        if role in roles:
            response = _call(client, method, path, headers[role])
            assert response.status_code not in (401, 403), (role, response.json())
            continue
        before = _rows(store)
        response = _call(client, method, path, headers[role])
        assert response.status_code == 403, (role, response.status_code)
        assert response.json()["error"]["code"] == "forbidden"
        # A refused call writes nothing but the audit event saying it was refused.
        after = _rows(store)
        assert {t: n for t, n in after.items() if t not in _AUDIT} == {
            t: n for t, n in before.items() if t not in _AUDIT
        }, (role, method, path)
        assert after["audit_events"] == before["audit_events"] + 1
        with store.read() as s:
            last = s.scalars(select(AuditEvent).order_by(AuditEvent.seq.desc()).limit(1)).one()
        assert (last.action, last.entity) == ("refused", "principal"), (role, method, path)
        assert path.split("{")[0].rstrip("/") in (last.reason or "")


_AUDIT = ("audit_events", "audit_head")


def _rows(store) -> dict[str, int]:
    from db.models import Base

    with store.read() as s:
        return {
            t.name: int(s.scalar(select(func.count()).select_from(t)) or 0)
            for t in Base.metadata.sorted_tables
        }


def test_the_openapi_document_lists_the_roles_of_each_operation(client):
    spec = client.get("/openapi.json").json()
    assert spec["paths"]["/cards/{card}/approve"]["post"]["x-roles"] == ["admin", "approver"]
    assert spec["paths"]["/crl/issuing.crl"]["get"]["x-roles"] == ["public"]


# --- tokens ----------------------------------------------------------------------------


def test_a_token_is_stored_only_as_its_hash_and_a_revoked_one_stops_working(store, client):
    from producers.tokens import revoke_token

    token_id, secret = create_token(store, name="olga", role="operator", by="admin")
    headers = {"Authorization": f"Bearer {secret.reveal()}"}
    assert client.get("/status", headers=headers).status_code == 200
    with store.read() as s:
        row = s.get(ApiToken, token_id)
        assert row is not None
        assert secret.reveal() != row.token_hash
    revoke_token(store, token_id, by="admin")
    refused = client.get("/status", headers=headers)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "unauthorized"


def test_an_unknown_role_for_a_token_is_refused_naming_the_field(store):
    from schemas.errors import ValidationFailed

    with pytest.raises(ValidationFailed) as err:
        create_token(store, name="x", role="root", by="admin")
    assert err.value.field == "role"


# --- errors ----------------------------------------------------------------------------


def test_a_bad_attribute_is_refused_naming_the_field_and_nothing_is_stored(store, client):
    headers = _auth(store, "rita", "requester")
    response = client.post("/users", json={**USER, "email": "not-an-address"}, headers=headers)
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "email"
    missing = client.post("/users", json={**USER, "upn": None}, headers=headers)
    assert missing.status_code == 422
    assert missing.json()["error"]["field"] == "upn"
    assert client.get("/users", headers=headers).json()["total"] == 0


def test_an_unknown_entity_is_404_and_an_illegal_step_is_409_changing_nothing(store, client):
    operator = _auth(store, "olga", "operator")
    assert client.get("/users/999", headers=operator).json()["error"]["code"] == "not_found"
    with store.tx() as s:
        card = factories.credential(s, "requested")
        card_id = card.id
    response = client.post(f"/cards/{card_id}/deactivate", json={}, headers=operator)
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "state_conflict"
    with store.read() as s:
        assert s.get(Credential, card_id).state == "requested"


def test_an_existing_email_is_a_conflict(store, client):
    headers = _auth(store, "rita", "requester")
    assert client.post("/users", json=USER, headers=headers).status_code == 201
    again = client.post("/users", json={**USER, "external_id": "X1"}, headers=headers)
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "already_exists"


# --- users and cards through HTTP ------------------------------------------------------


def test_a_user_is_created_found_and_edited(store, client):
    requester = _auth(store, "rita", "requester")
    operator = _auth(store, "olga", "operator")
    created = client.post("/users", json=USER, headers=requester)
    assert created.status_code == 201
    user = created.json()
    assert (user["state"], user["cards"]) == ("active", 0)
    assert "roles" not in user  # roles belong to principals, not to holders
    found = client.get("/users", params={"text": "hopper"}, headers=requester).json()
    assert [u["email"] for u in found["items"]] == ["grace@example.org"]
    edited = client.patch(f"/users/{user['id']}", json={"title": "Rear Admiral"}, headers=operator)
    assert edited.json()["title"] == "Rear Admiral"
    by_email = client.get("/users/grace@example.org", headers=operator).json()
    assert by_email["id"] == user["id"]


def test_the_status_after_create_is_an_option(store, tmp_path):
    client = _app(store, tmp_path, Policy(user_status_after_create="inactive"))
    created = client.post("/users", json=USER, headers=_auth(store, "rita", "requester"))
    assert created.json()["state"] == "inactive"


def test_four_eyes_a_requester_never_approves_their_own_card_request(store, client):
    with store.tx() as s:
        email = factories.user(s).email
    asked = client.post(
        "/cards", json={"users": [email]}, headers=_auth(store, "alice", "requester")
    )
    assert asked.status_code == 201
    (card_id,) = asked.json()["ids"]
    own = client.post(
        f"/cards/{card_id}/approve", json={}, headers=_auth(store, "alice", "approver")
    )
    assert own.status_code == 403
    assert own.json()["error"]["code"] == "four_eyes"
    other = client.post(
        f"/cards/{card_id}/approve", json={"comment": "ok"}, headers=_auth(store, "bob", "approver")
    )
    assert other.json() == {"state": "approved"}


def test_several_users_make_one_batch_and_the_card_limit_refuses_all_or_nothing(store, client):
    requester = _auth(store, "rita", "requester")
    with store.tx() as s:
        emails = [factories.user(s).email for _ in range(3)]
    first = client.post("/cards", json={"users": emails[:2]}, headers=requester).json()
    assert len(first["ids"]) == 2
    batches = {c["batch_id"] for c in client.get("/cards", headers=requester).json()["items"]}
    assert len(batches) == 1
    assert None not in batches
    client.post("/cards", json={"users": [emails[0]]}, headers=requester)  # second card: ok
    over = client.post("/cards", json={"users": [emails[2], emails[0]]}, headers=requester)
    assert over.status_code == 400
    assert "allows 2" in over.json()["error"]["message"]
    assert client.get("/cards", params={"user": emails[2]}, headers=requester).json()["total"] == 0


def test_rejecting_and_postponing_need_a_reason_and_are_recorded(store, client):
    with store.tx() as s:
        email = factories.user(s).email
    requester, approver = _auth(store, "rita", "requester"), _auth(store, "bob", "approver")
    (card_id,) = client.post("/cards", json={"users": [email]}, headers=requester).json()["ids"]
    no_reason = client.post(f"/cards/{card_id}/reject", json={}, headers=approver)
    assert no_reason.status_code == 422
    assert no_reason.json()["error"]["field"] == "reason"
    later = client.post(
        f"/cards/{card_id}/postpone", json={"reason": "budget next quarter"}, headers=approver
    )
    assert later.json() == {"state": "requested"}
    rejected = client.post(
        f"/cards/{card_id}/reject",
        json={"reason": "duplicate", "comment": "has a card"},
        headers=approver,
    )
    assert rejected.json() == {"state": "rejected"}


def test_paging_through_cards_by_state(store, client):
    with store.tx() as s:
        for _ in range(5):
            factories.credential(s, "active")
        factories.credential(s, "requested")
    auditor = _auth(store, "audrey", "auditor")
    page = client.get(
        "/cards", params={"state": "active", "page": 2, "per_page": 2}, headers=auditor
    ).json()
    assert (page["total"], page["page"], len(page["items"])) == (5, 2, 2)
    assert all(c["state"] == "active" for c in page["items"])
    bad = client.get("/cards", params={"state": "shiny"}, headers=auditor)
    assert bad.json()["error"]["field"] == "state"


def test_deactivating_a_user_over_http_holds_their_certificates(store, client):
    with store.tx() as s:
        cert = factories.certificate(s, "valid")
        card = s.get(Credential, cert.credential_id)
        assert card is not None
        assert card.user is not None
        email, cert_id = card.user.email, cert.id
    operator = _auth(store, "olga", "operator")
    off = client.post(f"/users/{email}/deactivate", json={"reason": "leave"}, headers=operator)
    assert off.json() == {"certificates": 1}
    with store.read() as s:
        assert s.get(Certificate, cert_id).state == "hold"
    on = client.post(f"/users/{email}/reactivate", json={}, headers=operator)
    assert on.json() == {"certificates": 1}
    locked = client.post(
        f"/users/{email}/lock", json={"reason": "key_compromise"}, headers=operator
    )
    assert locked.json() == {"certificates": 1}
    gone = client.delete(f"/users/{email}", headers=operator)
    assert gone.json() == {"state": "deleted"}
    with store.read() as s:
        assert s.scalars(select(Certificate.state)).all() == ["revoked"]


def test_the_multi_user_form_deactivates_everyone_the_search_finds(store, client):
    with store.tx() as s:
        ids = [factories.user(s).id for _ in range(3)]
        factories.user(s, "inactive")
    operator = _auth(store, "olga", "operator")
    everyone = client.post("/bulk/users/deactivate", json={}, headers=operator)
    assert everyone.status_code == 422  # a search that narrows nothing is refused
    report = client.post(
        "/bulk/users/deactivate",
        json={"state": "active", "reason": "office closed"},
        headers=operator,
    ).json()
    assert sorted(report["done"]) == ids
    assert report["refused"] == {}


def test_a_reference_of_unicode_digits_is_not_found_rather_than_a_server_error(store, client):
    operator = _auth(store, "olga", "operator")
    for path in ("/cards/%C2%B9", "/users/%D9%A3"):  # "¹", "٣"
        response = client.get(path, headers=operator)
        assert response.status_code == 404, response.text


def test_a_card_not_yet_at_a_station_moves_to_another_line_and_a_produced_one_does_not(
    store, client
):
    with store.tx() as s:
        waiting = factories.credential(s, "requested").id
        produced = factories.credential(s, "active").id
    operator = _auth(store, "olga", "operator")
    moved = client.patch(f"/cards/{waiting}", json={"line": "east"}, headers=operator)
    assert moved.json()["line"] == "east"
    refused = client.patch(f"/cards/{produced}", json={"line": "east"}, headers=operator)
    assert refused.status_code == 409
    bad = client.patch(f"/cards/{waiting}", json={"line": "East Wing"}, headers=operator)
    assert bad.json()["error"]["field"] == "line"


def test_with_configured_reasons_a_deactivation_takes_only_one_of_them(store, tmp_path):
    reasons = ("left the organisation", "long leave")
    client = _app(store, tmp_path, Policy(deactivation_reasons=reasons))
    with store.tx() as s:
        email = factories.user(s).email
    operator = _auth(store, "olga", "operator")
    free = client.post(f"/users/{email}/deactivate", json={"reason": "bored"}, headers=operator)
    assert free.status_code == 422
    assert free.json()["error"]["field"] == "reason"
    assert "long leave" in free.json()["error"]["message"]
    listed = client.post(
        f"/users/{email}/deactivate", json={"reason": "Long Leave"}, headers=operator
    )
    assert listed.status_code == 200, listed.json()


def test_without_email_uniqueness_two_users_share_an_email_and_are_named_by_id(store, tmp_path):
    client = _app(store, tmp_path, Policy(email_unique=False))
    requester = _auth(store, "rita", "requester")
    first = client.post("/users", json=USER, headers=requester)
    other = {**USER, "first_name": "Amazing", "upn": "amazing@corp.example.org"}
    second = client.post("/users", json=other, headers=requester)
    assert (first.status_code, second.status_code) == (201, 201)
    ambiguous = client.get("/users/grace@example.org", headers=requester)
    assert ambiguous.status_code == 422
    assert ambiguous.json()["error"]["field"] == "user"
    by_id = client.get(f"/users/{second.json()['id']}", headers=requester)
    assert by_id.json()["first_name"] == "Amazing"
