"""Schemathesis over the API's own OpenAPI document: every operation, fed generated
requests as an admin (so no request stops at the role check), never answers 5xx, and a
refused request writes nothing: no audit event, no outbox message, no row of its own.

The store holds a few users, cards and a batch first, so generated ids sometimes hit.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from sqlalchemy import func, select

from db.engine import open_store, sqlite_url
from db.migrate import upgrade
from db.models import AuditEvent, Credential, Incident, OutboxMessage, SoftToken, User
from db.secrets import SecretBox
from producers.api.app import create_app
from producers.api.context import ApiContext
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
_, _token = create_token(STORE, name="fuzz-admin", role="admin", by="tests")
HEADERS = {"Authorization": f"Bearer {_token.reveal()}"}
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


def _footprint() -> tuple[int, ...]:
    with STORE.read() as s:
        return tuple(
            int(s.scalar(select(func.count()).select_from(model)) or 0)
            for model in (AuditEvent, OutboxMessage, User, Credential, SoftToken, Incident)
        )


@schema.parametrize()
@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_no_operation_answers_5xx_and_a_refused_request_writes_nothing(case):
    before = _footprint()
    response = case.call_and_validate(headers=HEADERS, checks=[not_a_server_error])
    if response.status_code >= 400:
        assert _footprint() == before, (case.method, case.formatted_path, response.text)
