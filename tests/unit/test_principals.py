"""Principals: names compared as people read them, roles that grant from one table,
tokens that expire and can be revoked, passwords with a lockout, the administrator's
bootstrap; on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import os

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from db.models import ApiToken, AuditEvent, Principal, utcnow
from db.secrets import Secret, SecretBox
from producers import principals as p
from producers.api.app import create_app
from producers.api.context import ApiContext
from schemas.errors import Unauthorized, ValidationFailed
from schemas.permissions import USE_CASES, markdown_table, roles_for
from schemas.pki import PkiConfig
from schemas.policy import Policy
from schemas.roles import Role


@pytest.mark.parametrize(
    ("raw", "stored"),
    [
        ("Ops-A", "ops-a"),
        ("\uff2f\uff50\uff53-\uff21", "ops-a"),
        ("  Ada Lovelace ", "ada lovelace"),
    ],
)
def test_names_are_stored_as_people_read_them(raw, stored):
    assert p.normalise_name(raw) == stored


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("ops\u200b-a", "invisible"),  # zero-width space
        ("ops\u0007a", "control"),
        ("ops-\u0430", "script"),  # Cyrillic a among Latin letters
        ("station:ST1", "Cardline's own"),
        ("policy:x", "Cardline's own"),
        ("", "1 to 100"),
    ],
)
def test_confusable_invisible_and_reserved_names_are_refused(raw, why):
    with pytest.raises(ValidationFailed, match=why):
        p.normalise_name(raw)


def test_two_spellings_of_one_name_are_one_principal(store):
    p.create_principal(store, "Ops-A", roles=["requester"], by="tests")
    with pytest.raises(ValidationFailed, match="exists"):
        p.create_principal(store, "\uff2f\uff50\uff53-\uff21", roles=["approver"], by="tests")


def test_a_token_grants_what_its_principals_roles_grant_and_nothing_else(store):
    pid = p.create_principal(store, "ops-a", roles=["requester"], by="tests")
    _, token = p.issue_token(store, pid, by="tests")
    caller = p.authenticate(store, token.reveal())
    assert caller.actor == f"principal:{pid}"
    assert caller.may("card.request")
    assert not caller.may("card.decide")
    p.set_roles(store, pid, ["approver"], by="tests")  # the same token, the new roles
    caller = p.authenticate(store, token.reveal())
    assert caller.may("card.decide")
    assert not caller.may("card.request")


def test_expired_and_revoked_tokens_are_refused(store):
    pid = p.create_principal(store, "ops-b", roles=["operator"], by="tests")
    tid, token = p.issue_token(store, pid, by="tests", expires_days=1)
    with store.tx() as s:
        s.execute(
            update(ApiToken)
            .where(ApiToken.id == tid)
            .values(expires_at=utcnow() - dt.timedelta(seconds=1))
        )
    with pytest.raises(Unauthorized, match="expired"):
        p.authenticate(store, token.reveal())
    tid2, token2 = p.issue_token(store, pid, by="tests")
    p.revoke_token(store, tid2, by="tests")
    with pytest.raises(Unauthorized, match="revoked"):
        p.authenticate(store, token2.reveal())


def _expire(store, token_id: int) -> None:
    with store.tx() as s:
        s.execute(
            update(ApiToken)
            .where(ApiToken.id == token_id)
            .values(expires_at=utcnow() - dt.timedelta(seconds=1))
        )


def _disable(store, token_id: int) -> None:
    with store.tx() as s:
        row = s.get(ApiToken, token_id)
        assert row is not None
        s.execute(
            update(Principal).where(Principal.id == row.principal_id).values(disabled_at=utcnow())
        )


@pytest.mark.parametrize(
    ("end", "why"),
    [
        (_expire, "token expired"),
        (lambda store, tid: p.revoke_token(store, tid, by="tests"), "unknown or revoked token"),
        (_disable, "principal disabled"),
    ],
    ids=["expired", "revoked", "principal-disabled"],
)
def test_over_http_an_expired_revoked_or_disabled_token_is_401_at_once_never_echoing_it(
    store, tmp_path, end, why
):
    ctx = ApiContext(
        store=store,
        box=SecretBox(os.urandom(32)),
        policy=Policy(),
        pki=PkiConfig(),
        crl_dir=tmp_path / "crl",
        ca_chain=tmp_path / "chain.pem",
        rejects_dir=tmp_path / "rejects",
    )
    client = TestClient(create_app(ctx), raise_server_exceptions=False)
    pid = p.create_principal(store, "ops-e", roles=["operator"], by="tests")
    tid, token = p.issue_token(store, pid, by="tests")
    headers = {"Authorization": f"Bearer {token.reveal()}"}
    assert client.get("/status", headers=headers).status_code == 200
    end(store, tid)  # no restart, no cache to wait out: the next request is refused
    refused = client.get("/status", headers=headers)
    assert refused.status_code == 401
    assert refused.json()["error"] == {"code": "unauthorized", "message": why}
    assert refused.headers["WWW-Authenticate"] == "Bearer"
    secret = token.reveal()
    assert secret not in refused.text
    assert secret.removeprefix(p.PREFIX) not in refused.text
    assert not any(secret in value for value in refused.headers.values())


def test_a_token_is_stored_only_as_its_digest(store):
    pid = p.create_principal(store, "ops-c", roles=[], by="tests")
    _, token = p.issue_token(store, pid, by="tests")
    with store.read() as s:
        stored = s.scalars(select(ApiToken.token_hash)).all()
        audit = " ".join(e.reason or "" for e in s.scalars(select(AuditEvent)))
    assert token.reveal() not in stored
    assert token.reveal() not in audit


def test_five_wrong_passwords_lock_the_account_even_for_the_right_one(store):
    pid = p.create_principal(store, "ops-d", roles=["operator"], by="tests")
    p.set_password(store, pid, Secret("correct horse battery"), by="tests")
    assert p.login(store, "OPS-D", Secret("correct horse battery")).id == pid
    for _ in range(p.MAX_FAILED_LOGINS):
        with pytest.raises(Unauthorized):
            p.login(store, "ops-d", Secret("wrong password here"))
    with pytest.raises(Unauthorized):
        p.login(store, "ops-d", Secret("correct horse battery"))
    with store.read() as s:
        row = s.get(Principal, pid)
        assert row.locked_until is not None
        assert row.locked_until > utcnow()
        assert "correct horse" not in (row.password_hash or "")
        failures = s.scalar(
            select(func.count()).select_from(AuditEvent).where(AuditEvent.action == "login_failed")
        )
    assert failures == p.MAX_FAILED_LOGINS


def test_short_passwords_are_refused():
    with pytest.raises(ValidationFailed, match="12"):
        p.hash_password("short")


def test_bootstrap_creates_the_administrator_once_and_recovers_it_when_run_again(store):
    pid, token = p.bootstrap_admin(store, by="host:root")
    again, token2 = p.bootstrap_admin(store, by="host:root")
    assert again == pid
    assert token.reveal() != token2.reveal()
    for t in (token, token2):
        assert p.authenticate(store, t.reveal()).roles == frozenset({Role.ADMIN})
    with store.read() as s:
        assert s.scalar(select(func.count()).select_from(Principal)) == 1
        actors = set(s.scalars(select(AuditEvent.actor)))
    assert actors == {"host:root"}


def test_every_use_case_admits_admin_and_the_table_renders():
    assert all(Role.ADMIN in roles_for(u.name) for u in USE_CASES)
    table = markdown_table()
    assert all(f"`{u.name}`" in table for u in USE_CASES)
    assert roles_for("principal.admin") == {Role.ADMIN}


def test_the_readme_role_table_is_generated_from_the_table_the_code_checks():
    from pathlib import Path

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert markdown_table() in readme
