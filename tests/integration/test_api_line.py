"""The operator's use cases end to end through HTTP, with the embedded line running:
cards requested, approved and produced; renewal; a temporary-card stock run, assigned,
extended, withdrawn and locked; a lost card replaced; a user deactivated and the CRL
the API serves listing the held certificates."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from fastapi.testclient import TestClient

from ops.api import build_app
from ops.config import Settings
from ops.line import EmbeddedLine, LineOptions
from ops.store import open_migrated
from producers.tokens import create_token

PERSON = {
    "first_name": "Hedy",
    "last_name": "Lamarr",
    "email": "hedy@example.org",
    "upn": "hedy@corp.example.org",
    "organization": "Inventors",
    "org_unit": "Radio",
}


class Http:
    def __init__(self, settings: Settings, line: EmbeddedLine) -> None:
        self.client = TestClient(build_app(settings), raise_server_exceptions=False)
        self.line = line
        self.as_role = {}
        for name, role in (
            ("rita", "requester"),
            ("bob", "approver"),
            ("olga", "operator"),
            ("audrey", "auditor"),
        ):
            _, token = create_token(line.store, name=name, role=role, by="tests")
            self.as_role[role] = {"Authorization": f"Bearer {token.reveal()}"}

    def call(self, role: str, method: str, path: str, body: object = None, ok: int = 200):
        response = self.client.request(method, path, json=body, headers=self.as_role[role])
        assert response.status_code == ok, (path, response.json())
        return response.json()

    def drained(self) -> None:
        assert self.line.wait_drained(timeout_s=120)


@pytest.fixture
def http(tmp_path: Path) -> Iterator[Http]:
    settings = Settings(data_dir=tmp_path / "data")
    open_migrated(settings).dispose()
    line = EmbeddedLine(settings, settings.policy, LineOptions(stations=2, time_scale=0, seed=5))
    line.start()
    try:
        yield Http(settings, line)
    finally:
        line.stop()


def test_a_card_is_requested_approved_produced_and_renewed_over_http(http):
    user = http.call("requester", "POST", "/users", PERSON, ok=201)
    (card_id,) = http.call("requester", "POST", "/cards", {"users": [user["email"]]}, ok=201)["ids"]
    http.call("approver", "POST", f"/cards/{card_id}/approve", {"comment": "ok"})
    http.drained()
    card = http.call("auditor", "GET", f"/cards/{card_id}")
    assert card["state"] == "active"
    assert list(card["certificates"].values()).count("valid") == 3
    http.call("operator", "POST", f"/cards/{card_id}/renew")
    http.drained()  # the renewal is applied at the line's desk
    renewed = http.call("auditor", "GET", f"/cards/{card_id}")["certificates"]
    assert list(renewed.values()).count("valid") == 3
    # New keys for the two made on the chip; the escrowed encryption key stays.
    assert list(renewed.values()).count("revoked") == 2


def test_a_temporary_card_stock_run_is_assigned_extended_withdrawn_and_locked_over_http(http):
    stock = http.call("operator", "POST", "/tempcards/stock", {"count": 2}, ok=201)
    http.call("approver", "POST", f"/batches/{stock['batch_id']}/approve")
    http.drained()
    found = http.call("auditor", "GET", "/cards", None)["items"]
    assert {c["state"] for c in found} == {"unassigned"}
    user = http.call("requester", "POST", "/users", PERSON, ok=201)
    card = stock["ids"][0]
    http.call("operator", "POST", f"/tempcards/{card}/assign", {"user": user["email"]})
    http.drained()
    assigned = http.call("auditor", "GET", f"/cards/{card}")
    assert (assigned["state"], assigned["user_email"]) == ("assigned", PERSON["email"])
    http.call("operator", "POST", f"/tempcards/{card}/extend", {"days": 3})
    withdrawn = http.call("operator", "POST", f"/tempcards/{card}/withdraw", {})
    assert withdrawn == {"certificates": 3}
    locked = http.call("operator", "POST", f"/tempcards/{card}/lock", {"reason": "unspecified"})
    assert locked == {"certificates": 0}
    assert http.call("auditor", "GET", f"/cards/{card}")["state"] == "locked"


def test_a_lost_card_is_replaced_and_a_deactivated_user_shows_on_the_served_crl(http):
    user = http.call("requester", "POST", "/users", PERSON, ok=201)
    (card_id,) = http.call("requester", "POST", "/cards", {"users": [user["email"]]}, ok=201)["ids"]
    http.call("approver", "POST", f"/cards/{card_id}/approve", {})
    http.drained()
    incident = http.call(
        "operator", "POST", f"/cards/{card_id}/incidents", {"kind": "lost"}, ok=201
    )
    assert http.call("auditor", "GET", f"/cards/{card_id}")["state"] == "inactive"
    http.call("approver", "POST", f"/incidents/{incident['id']}/approve")
    http.drained()
    replacement = http.call("auditor", "GET", f"/cards/{incident['replacement_id']}")
    assert replacement["state"] == "active"
    held = http.call("operator", "POST", f"/users/{user['id']}/deactivate", {"reason": "leave"})
    assert held == {"certificates": 3}  # the replacement's; the lost card's were held already
    http.drained()
    wanted = set()
    for card in (card_id, incident["replacement_id"]):
        serials = http.call("auditor", "GET", f"/cards/{card}")["certificates"]
        wanted |= {s for s, state in serials.items() if state == "hold"}
    assert len(wanted) == 6
    deadline = time.monotonic() + 20  # the pki worker publishes the CRL after the change
    listed: set[str] = set()
    while not wanted <= listed and time.monotonic() < deadline:
        crl = x509.load_der_x509_crl(http.client.get("/crl/issuing.crl").content)
        listed = {f"{r.serial_number:x}" for r in crl}
        time.sleep(0.1)
    assert wanted <= listed
    chain = http.client.get("/ca/chain.pem")
    assert chain.status_code == 200
    assert chain.text.count("BEGIN CERTIFICATE") == 2
