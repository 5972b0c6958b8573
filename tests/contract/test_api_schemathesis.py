"""Schemathesis over the API's own OpenAPI document: every operation, fed generated
requests with the token of a real principal holding the admin role (so no request stops
at the role check), never answers 5xx, and a refused request writes nothing but the
record of its refusal: no other audit event, no outbox message, no row of its own.

The whole run is made on SQLite and on PostgreSQL (which refuses what SQLite lets by,
a NUL in text or a 20-digit integer). The store holds a few users, cards and a batch
first, so generated ids sometimes hit.
The fuzzer is fed the principal endpoints too, so it can revoke its own token or take
its own admin role away; each case starts by putting both back (behind the API's back,
unaudited), and a case answered 401, or 403 at the role check, fails: every case is
heard as the admin, or the test would only be fuzzing the refusal.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.transport import Response
from sqlalchemy import func, select, update

from db.engine import Store, open_store, sqlite_url
from db.migrate import upgrade
from db.models import (
    ApiToken,
    AuditEvent,
    Credential,
    Incident,
    OutboxMessage,
    Principal,
    SoftToken,
    User,
)
from db.secrets import SecretBox
from producers.api.app import api_routes, create_app
from producers.api.context import ApiContext
from producers.principals import authenticate
from producers.tokens import create_token
from schemas.pki import PkiConfig
from schemas.policy import Policy
from tests import factories
from tests.backends import PgDatabases

# The schema is read from one app; each backend's fixture hands that app its own store.
APP = create_app(None)  # type: ignore[arg-type]  # the fixture installs the context
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)
# The console's own endpoints take a session cookie (or a name and password), not a token.
COOKIE_ONLY = "/console/"


@dataclass(frozen=True)
class Fuzzed:
    """The app's store on one backend, seeded, and the admin token the fuzzer sends."""

    store: Store
    token_id: int
    admin_id: int
    headers: dict[str, str]


def _seed(store: Store) -> None:
    with store.tx() as s:
        for state in ("active", "inactive", "locked"):
            factories.user(s, state)
        for state in ("requested", "approved", "active", "inactive"):
            factories.credential(s, state)
        factories.credential(s, "unassigned", "temp_card")
        factories.batch(s, "requested")
        factories.certificate(s, "valid")


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def fuzzed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """A seeded store on SQLite or PostgreSQL (its own database, dropped afterwards)
    behind the app; PostgreSQL missing skips locally and fails under CI=true."""
    folder = tmp_path_factory.mktemp(f"schemathesis-{request.param}")
    dbs: PgDatabases | None = None
    if request.param == "sqlite":
        store = open_store(sqlite_url(folder))
        upgrade(store)
    else:
        dbs = request.getfixturevalue("pg_databases")
        name = dbs.create()
        store = open_store(dbs.url(name), pool_size=5)
    _seed(store)
    (folder / "crl").mkdir()
    (folder / "ca-chain.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    APP.state.ctx = ApiContext(
        store=store,
        box=SecretBox(os.urandom(32)),
        policy=Policy(),
        pki=PkiConfig(),
        crl_dir=folder / "crl",
        ca_chain=folder / "ca-chain.pem",
        rejects_dir=folder / "rejects",
    )
    token_id, token = create_token(store, name="fuzz-admin", role="admin", by="tests")
    headers = {"Authorization": f"Bearer {token.reveal()}"}
    yield Fuzzed(store, token_id, authenticate(store, token.reveal()).id, headers)
    store.dispose()
    if dbs is not None:
        dbs.drop(name)


def _restore_admin(fuzzed: Fuzzed) -> None:
    with fuzzed.store.tx() as s:
        s.execute(
            update(Principal)
            .where(Principal.id == fuzzed.admin_id)
            .values(roles=["admin"], disabled_at=None, locked_until=None)
        )
        s.execute(update(ApiToken).where(ApiToken.id == fuzzed.token_id).values(revoked_at=None))


def _footprint(store: Store) -> tuple[int, ...]:
    with store.read() as s:
        audit = select(func.count()).select_from(AuditEvent).where(AuditEvent.action != "refused")
        return (
            int(s.scalar(audit) or 0),
            *(
                int(s.scalar(select(func.count()).select_from(model)) or 0)
                for model in (OutboxMessage, User, Credential, SoftToken, Incident)
            ),
        )


def _code(response: Response) -> str | None:
    """The error code of a Cardline error answer, if it is one."""
    try:
        return str(response.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return None


def test_the_fuzzed_schema_is_every_operation_and_the_token_is_what_lets_it_in(fuzzed):
    spec = APP.openapi()
    documented = {(m.upper(), path) for path, item in spec["paths"].items() for m in item}
    served = {
        (m, r.path)
        for r in api_routes(APP.routes)
        if r.include_in_schema  # the console's pages are HTML, not API operations
        for m in r.methods or ()
    }
    assert served - {("HEAD", path) for _, path in served} == documented
    client = TestClient(APP)
    assert client.get("/status").status_code == 401
    assert client.get("/status", headers=fuzzed.headers).status_code == 200


@schema.parametrize()
@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_no_operation_answers_5xx_and_a_refused_request_writes_nothing(fuzzed, case):
    _restore_admin(fuzzed)
    before = _footprint(fuzzed.store)
    response = case.call_and_validate(headers=fuzzed.headers, checks=[not_a_server_error])
    where = (case.method, case.formatted_path, response.status_code, response.text[:300])
    if not case.path.startswith(COOKIE_ONLY):
        assert response.status_code != 401, where
        assert _code(response) != "forbidden", where
    if response.status_code >= 400:
        assert _footprint(fuzzed.store) == before, where


def _parameters() -> list[tuple[str, str, str, list[str]]]:
    """(method, path template, the parameter to spoil, every path parameter) for each
    path and query parameter of each operation in the OpenAPI document."""
    found = []
    for path, item in APP.openapi()["paths"].items():
        for method, operation in item.items():
            params = operation.get("parameters", [])
            in_path = [p["name"] for p in params if p["in"] == "path"]
            for p in params:
                if p["in"] in ("path", "query"):
                    found.append((method.upper(), path, p["name"], in_path))
    return found


def test_a_nul_byte_in_any_path_or_query_parameter_is_refused_naming_it(fuzzed):
    """The fuzzer seldom sends a NUL where PostgreSQL would see it; this sends one in
    every parameter of every operation. Refused before anything runs, so nothing is
    written."""
    _restore_admin(fuzzed)
    client = TestClient(APP, raise_server_exceptions=False)
    before = _footprint(fuzzed.store)
    cases = _parameters()
    assert len(cases) > 40
    for method, template, spoiled, in_path in cases:
        path = template
        for name in in_path:
            path = path.replace(f"{{{name}}}", "1%00" if name == spoiled else "1")
        params = {} if spoiled in in_path else {spoiled: "1\x00"}
        response = client.request(method, path, params=params, json={}, headers=fuzzed.headers)
        where = (method, template, spoiled, response.status_code, response.text[:200])
        assert response.status_code == 422, where
        assert response.json()["error"]["field"] == spoiled, where
    assert _footprint(fuzzed.store) == before
