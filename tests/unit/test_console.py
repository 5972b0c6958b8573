"""The console's pages and actions through HTTP, on SQLite and PostgreSQL: each page
renders for the roles of its use case and is refused to the others (audited), a browser
without a session is sent to the login form, the live part comes alone for the poller,
the actions change state only with the CSRF header and are audited; and over 100,000
cards every query a page makes is an index read (SQLite's query plans)."""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, insert, select, text

from db.engine import open_store, sqlite_url
from db.migrate import upgrade
from db.models import (
    AuditEvent,
    BatchOrder,
    Credential,
    LinePause,
    ProductionAttempt,
    Station,
    User,
)
from db.secrets import Secret, SecretBox
from producers import principals as p
from producers.api.app import create_app
from producers.api.auth import CSRF_HEADER
from producers.api.console.pages import FRAGMENT_HEADER
from producers.api.context import ApiContext
from schemas.permissions import may
from schemas.pki import PkiConfig
from schemas.policy import Policy
from schemas.roles import Role
from schemas.states import AttemptState
from tests import factories

PASSWORD = "correct horse battery staple"
HTML = {"Accept": "text/html"}
# Each page and the use case whose roles may see it.
PAGES = {
    "/console": "line.status",
    "/console/stations": "line.status",
    "/console/batches": "batch.read",
    "/console/cards?q=Lovelace": "card.read",
    "/console/alerts": "alerts.read",
}


def _client(store, tmp_path: Path) -> TestClient:
    ctx = ApiContext(
        store=store,
        box=SecretBox(os.urandom(32)),
        policy=Policy(),
        pki=PkiConfig(),
        crl_dir=tmp_path / "crl",
        ca_chain=tmp_path / "ca-chain.pem",
        rejects_dir=tmp_path / "rejects",
    )
    return TestClient(create_app(ctx), raise_server_exceptions=False, follow_redirects=False)


def _login(store, client: TestClient, name: str, roles: tuple[str, ...]) -> str:
    pid = p.create_principal(store, name, roles=roles, by="tests")
    p.set_password(store, pid, Secret(PASSWORD), by="tests")
    response = client.post("/console/login", json={"name": name, "password": PASSWORD})
    assert response.status_code == 200, response.text
    return str(response.json()["csrf_token"])


def _seed(store) -> dict[str, int]:
    with store.tx() as s:
        batch = factories.batch(s, "approved")
        card = factories.credential(s, "failed")
        card.batch_id = batch.id
        card.card_number = "8999000000000017"
        card.user.first_name, card.user.last_name = "Grace", "Hopper"
        s.add(Station(id="ST1", line="default", instance="x", status="idle"))
        s.flush()
        s.add(
            ProductionAttempt(
                state=AttemptState.SPOILED,
                credential_id=card.id,
                number=1,
                station_id="ST1",
                station_instance="x",
                fault="chip_failure",
                fault_detail="chip_failure: no answer to SELECT [6A82]",
                lease_expires_at=dt.datetime.now(dt.UTC),
                finished_at=dt.datetime.now(dt.UTC),
                version=1,
            )
        )
        return {"batch": batch.id, "card": card.id}


@pytest.fixture
def console(store, tmp_path):
    ids = _seed(store)
    return store, _client(store, tmp_path), ids


@pytest.mark.parametrize("role", [r.value for r in Role if r != Role.ADMIN])
def test_each_page_renders_for_the_roles_of_its_use_case_and_is_refused_to_the_others(
    console, role
):
    store, client, _ = console
    _login(store, client, f"{role}-person", (role,))
    for path, use_case in PAGES.items():
        before = _refusals(store)
        response = client.get(path, headers=HTML)
        if may(frozenset({Role(role)}), use_case):
            assert response.status_code == 200, (role, path, response.status_code)
            assert "text/html" in response.headers["content-type"]
            assert "default-src 'self'" in response.headers["content-security-policy"]
        else:
            assert response.status_code == 403, (role, path)
            assert "Not allowed" in response.text
            assert _refusals(store) == before + 1, "a refused page is audited"


def _refusals(store) -> int:
    with store.read() as s:
        return len(s.scalars(select(AuditEvent.seq).where(AuditEvent.action == "refused")).all())


def test_a_browser_without_a_session_is_sent_to_the_login_form_and_a_script_gets_401(console):
    _, client, _ = console
    response = client.get("/console/stations", headers=HTML)
    assert response.status_code == 303
    assert response.headers["location"] == "/console/login?next=/console/stations"
    assert client.get("/console/login").status_code == 200
    assert client.get("/console/stations").status_code == 401  # no Accept: text/html
    assert client.get("/console", headers={**HTML, FRAGMENT_HEADER: "1"}).status_code == 401
    script = client.get("/console/static/console.js")
    assert script.status_code == 200
    assert "X-CSRF-Token" in script.text
    assert "http" not in re.sub(r"//.*", "", script.text), "the script loads nothing from elsewhere"


def test_the_pages_show_what_the_store_holds_and_the_poller_gets_the_live_part_alone(console):
    store, client, ids = console
    _login(store, client, "olga", ("operator",))
    page = client.get("/console", headers=HTML).text
    assert 'id="live"' in page
    assert "console.js" in page
    assert re.search(r'data-state="failed">1<', page)
    fragment = client.get("/console", headers={**HTML, FRAGMENT_HEADER: "1"}).text
    assert "<html" not in fragment
    assert 'data-state="failed"' in fragment
    stations = client.get("/console/stations", headers=HTML).text
    assert "chip_failure \u00d71 [6A82]" in stations
    batches = client.get("/console/batches", headers=HTML).text
    assert f'id="batch-{ids["batch"]}"' in batches
    assert "<progress" in batches
    # Found by holder name, e-mail and card number: one card, so straight to it.
    for q in ("Grace Hopper", "hopper", "8999000000000017"):
        found = client.get("/console/cards", params={"q": q}, headers=HTML)
        assert found.status_code == 303, q
        assert found.headers["location"] == f"/console/cards/{ids['card']}"
    card = client.get(f"/console/cards/{ids['card']}", headers=HTML).text
    assert "6A82" in card
    assert "chip_failure" in card
    assert 'data-post="/cards/' in card


def test_actions_need_the_csrf_header_change_state_and_are_audited(console):
    store, client, ids = console
    csrf = _login(store, client, "olga", ("operator",))
    assert client.post("/stations/ST1/pause", json={}).status_code == 403  # no CSRF token
    with store.read() as s:
        assert s.scalars(select(LinePause)).first() is None
    headers = {CSRF_HEADER: csrf}
    assert client.post("/stations/ST1/pause", json={"reason": "jam"}, headers=headers).json() == {
        "state": "paused"
    }
    assert client.post("/stations/ST1/pause", json={}, headers=headers).status_code == 409
    assert "paused" in client.get("/console/stations", headers=HTML).text
    assert client.post("/lines/default/pause", json={}, headers=headers).status_code == 200
    assert client.post("/lines/default/resume", json={}, headers=headers).status_code == 200
    assert client.post("/stations/ST1/resume", json={}, headers=headers).status_code == 200
    assert client.post("/stations/NOPE/pause", json={}, headers=headers).status_code == 404
    retried = client.post(f"/cards/{ids['card']}/retry", json={}, headers=headers)
    assert retried.json() == {"state": "approved"}
    assert client.post(f"/cards/{ids['card']}/retry", json={}, headers=headers).status_code == 409
    cancelled = client.post(f"/batches/{ids['batch']}/cancel", json={}, headers=headers)
    assert cancelled.status_code == 200
    assert cancelled.json()["cancelled"] == 1
    with store.read() as s:
        events = [
            (e.entity, e.action, e.actor.startswith("principal:"))
            for e in s.scalars(select(AuditEvent).order_by(AuditEvent.seq))
            if e.action in ("pause", "resume", "retry", "cancel")
        ]
    assert events == [
        ("station", "pause", True),
        ("line", "pause", True),
        ("line", "resume", True),
        ("station", "resume", True),
        ("card", "retry", True),
        ("batch", "cancel", True),
        ("card", "cancel", True),
    ]


def test_raising_a_batch_priority_is_refused_to_its_requester(store, tmp_path):
    client = _client(store, tmp_path)
    csrf = _login(store, client, "rita", ("requester", "approver"))
    rita = p.find_principal(store, "rita")
    with store.tx() as s:
        batch = factories.batch(s, "approved")
        batch.requested_by = f"principal:{rita}"
        s.flush()
        batch_id = batch.id
    response = client.post(
        f"/batches/{batch_id}/priority", json={"priority": 5}, headers={CSRF_HEADER: csrf}
    )
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "four_eyes"
    with store.read() as s:
        assert s.get(BatchOrder, batch_id).priority == 0


# --- 100,000 cards ---------------------------------------------------------------------

CARDS = 100_000


@pytest.fixture(scope="module")
def big_store(tmp_path_factory):
    """A SQLite store with 100,000 cards of 100 batches (bulk-inserted: the pages read
    rows, how they came is not what is tested), attempts and a station."""
    folder = tmp_path_factory.mktemp("big")
    store = open_store(sqlite_url(folder))
    upgrade(store)
    now = dt.datetime.now(dt.UTC)
    states = ["active"] * 6 + ["ready", "approved", "requested", "failed"]
    with store.tx(audited=False) as s:
        s.add(Station(id="ST1", line="default", instance="x", status="busy"))
        s.execute(
            insert(BatchOrder),
            [
                {
                    "id": b,
                    "state": "approved",
                    "name": f"b{b}.csv",
                    "requested_by": "rita",
                    "version": 1,
                    "created_at": now,
                    "updated_at": now,
                }
                for b in range(1, 101)
            ],
        )
        s.execute(
            insert(User),
            [
                {
                    "id": i,
                    "state": "active",
                    "email": f"u{i}@example.org",
                    "upn": f"u{i}@x",
                    "first_name": "Ada",
                    "last_name": f"L{i}",
                    "organization": "E",
                    "org_unit": "U",
                    "version": 1,
                    "created_at": now,
                    "updated_at": now,
                }
                for i in range(1, CARDS + 1)
            ],
        )
        s.execute(
            insert(Credential),
            [
                {
                    "id": i,
                    "kind": "card",
                    "state": states[i % 10],
                    "user_id": i,
                    "batch_id": 1 + i % 100,
                    "line": "default",
                    "requested_by": "rita",
                    "card_number": f"8999{i:012d}",
                    "version": 1,
                    "created_at": now,
                    "updated_at": now,
                }
                for i in range(1, CARDS + 1)
            ],
        )
        s.execute(
            insert(ProductionAttempt),
            [
                {
                    "credential_id": i,
                    "number": 1,
                    "station_id": "ST1",
                    "station_instance": "x",
                    "state": "succeeded",
                    "lease_expires_at": now,
                    "version": 1,
                    "finished_at": now - dt.timedelta(seconds=i),
                    "created_at": now,
                    "updated_at": now,
                }
                for i in range(1, CARDS + 1, 2)
            ],
        )
    yield store
    store.dispose()


def _plans(store, statements: list[tuple[str, object]]) -> list[str]:
    found = []
    with store.engine.connect() as conn:
        for sql, params in statements:
            rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", params).all()
            found.append((sql, " / ".join(str(r[-1]) for r in rows)))
    return found


BIG = ("credentials", "users", "production_attempts", "audit_events")


def test_every_query_of_every_page_is_an_index_read_over_100000_cards(big_store, tmp_path):
    client = _client(big_store, tmp_path)
    _login(big_store, client, "olga", ("operator",))
    statements: list[tuple[str, object]] = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append((statement, parameters))

    event.listen(big_store.engine, "before_cursor_execute", capture)
    try:
        for path in (
            *PAGES,
            "/console/cards?q=u77@example.org",
            "/console/cards/777",
            "/console/cards?q=Ada+L777",
            "/console/batches?page=3",
        ):
            response = client.get(path, headers=HTML)
            assert response.status_code in (200, 303), path
    finally:
        event.remove(big_store.engine, "before_cursor_execute", capture)
    assert len(statements) > 20
    scans = [
        (sql, plan)
        for sql, plan in _plans(big_store, statements)
        for table in BIG
        # A SCAN of a big table without an index reads every row.
        if re.search(rf"SCAN {table}(?! USING)", plan)
    ]
    assert not scans, "\n\n".join(f"{plan}\n{sql}" for sql, plan in scans)
    with big_store.read() as s:
        assert s.scalar(text("SELECT count(*) FROM credentials")) == CARDS
