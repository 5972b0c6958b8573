"""Schemathesis over the API's own OpenAPI document: every operation, fed generated
requests with the token of a real principal holding the admin role (so no request stops
at the role check), never answers 5xx, and a refused request writes nothing but the
record of its refusal: no other audit event, no outbox message, no row of its own.

The store holds a few users, cards and a batch first, so generated ids sometimes hit.
The fuzzer is fed the principal endpoints too, so it can revoke its own token or take
its own admin role away; each case starts by putting both back (behind the API's back,
unaudited), and a case answered 401, or 403 at the role check, fails: every case is
heard as the admin, or the test would only be fuzzing the refusal.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.transport import Response
from sqlalchemy import func, select, update

from db.engine import open_store, sqlite_url
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

_folder = Path(tempfile.mkdtemp(prefix="cardline-schemathesis-"))
STORE = open_store(sqlite_url(_folder))
upgrade(STORE)
with STORE.tx() as _s:
    for state in ("active", "inactive", "locked"):
        factories.user(_s, state)
    for state in ("requested", "approved", "active", "inactive"):
        factories.credential(_s, state)
    factories.credential(_s, "unassigned", "temp_card")
    factories.batch(_s, "requested")
    factories.certificate(_s, "valid")
(_folder / "crl").mkdir()
(_folder / "ca-chain.pem").write_text("-----BEGIN CERTIFICATE-----\n")
APP = create_app(
    ApiContext(
        store=STORE,
        box=SecretBox(os.urandom(32)),
        policy=Policy(),
        pki=PkiConfig(),
        crl_dir=_folder / "crl",
        ca_chain=_folder / "ca-chain.pem",
        rejects_dir=_folder / "rejects",
    )
)
TOKEN_ID, _token = create_token(STORE, name="fuzz-admin", role="admin", by="tests")
ADMIN_ID = authenticate(STORE, _token.reveal()).id
HEADERS = {"Authorization": f"Bearer {_token.reveal()}"}
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)
# The console's own endpoints take a session cookie (or a name and password), not a token.
COOKIE_ONLY = "/console/"


def _restore_admin() -> None:
    with STORE.tx() as s:
        s.execute(
            update(Principal)
            .where(Principal.id == ADMIN_ID)
            .values(roles=["admin"], disabled_at=None, locked_until=None)
        )
        s.execute(update(ApiToken).where(ApiToken.id == TOKEN_ID).values(revoked_at=None))


def _footprint() -> tuple[int, ...]:
    with STORE.read() as s:
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


def test_the_fuzzed_schema_is_every_operation_and_the_token_is_what_lets_it_in():
    spec = APP.openapi()
    documented = {(m.upper(), path) for path, item in spec["paths"].items() for m in item}
    served = {(m, r.path) for r in api_routes(APP.routes) for m in r.methods or ()}
    assert served - {("HEAD", path) for _, path in served} == documented
    client = TestClient(APP)
    assert client.get("/status").status_code == 401
    assert client.get("/status", headers=HEADERS).status_code == 200


@schema.parametrize()
@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_no_operation_answers_5xx_and_a_refused_request_writes_nothing(case):
    _restore_admin()
    before = _footprint()
    response = case.call_and_validate(headers=HEADERS, checks=[not_a_server_error])
    where = (case.method, case.formatted_path, response.status_code, response.text[:300])
    if not case.path.startswith(COOKIE_ONLY):
        assert response.status_code != 401, where
        assert _code(response) != "forbidden", where
    if response.status_code >= 400:
        assert _footprint() == before, where
