"""The console's login through HTTP: a session cookie the page's scripts cannot read and
other sites cannot send, a CSRF token for every change, a lockout, sessions that end
(logout, lifetime, idle, a disabled principal), and a password that is never echoed or
logged; on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update
from structlog.testing import capture_logs

from db.models import AuditEvent, ConsoleSession, Principal, User, utcnow
from db.secrets import Secret, SecretBox
from producers import console_auth
from producers import principals as p
from producers.api.app import create_app
from producers.api.auth import CSRF_HEADER, SESSION_COOKIE
from producers.api.context import ApiContext
from schemas.pki import PkiConfig
from schemas.policy import Policy

PASSWORD = "correct horse battery staple"
USER = {
    "first_name": "Grace",
    "last_name": "Hopper",
    "email": "grace@example.org",
    "upn": "grace@corp.example.org",
    "organization": "Navy",
    "org_unit": "Computing",
}


def _client(store, tmp_path: Path, *, base_url: str = "http://testserver") -> TestClient:
    ctx = ApiContext(
        store=store,
        box=SecretBox(os.urandom(32)),
        policy=Policy(),
        pki=PkiConfig(),
        crl_dir=tmp_path / "crl",
        ca_chain=tmp_path / "ca-chain.pem",
        rejects_dir=tmp_path / "rejects",
    )
    return TestClient(create_app(ctx), base_url=base_url, raise_server_exceptions=False)


def _principal(store, name: str = "rita", roles: tuple[str, ...] = ("requester",)) -> int:
    pid = p.create_principal(store, name, roles=roles, by="tests")
    p.set_password(store, pid, Secret(PASSWORD), by="tests")
    return pid


def _login(client: TestClient, name: str = "rita") -> str:
    """Log the client in (its cookie jar keeps the session); the CSRF token."""
    response = client.post("/console/login", json={"name": name, "password": PASSWORD})
    assert response.status_code == 200, response.text
    token: str = response.json()["csrf_token"]
    return token


def _users(store) -> int:
    with store.read() as s:
        return s.scalar(select(func.count()).select_from(User)) or 0


def _move_session(store, **values: dt.datetime) -> None:
    with store.tx(audited=False) as s:
        s.execute(update(ConsoleSession).values(**values))


def _actions(store) -> list[str]:
    with store.read() as s:
        return list(
            s.scalars(
                select(AuditEvent.action)
                .where(AuditEvent.entity == "console_session")
                .order_by(AuditEvent.seq)
            )
        )


def test_a_login_sets_an_httponly_samesite_strict_cookie_for_the_whole_site(store, tmp_path):
    _principal(store)
    client = _client(store, tmp_path)
    response = client.post("/console/login", json={"name": "Rita", "password": PASSWORD})
    assert response.status_code == 200
    assert response.json()["name"] == "rita"
    assert response.json()["roles"] == ["requester"]
    assert response.headers["Cache-Control"] == "no-store"
    attributes = [a.strip().lower() for a in response.headers["set-cookie"].split(";")]
    assert attributes[0].startswith(f"{SESSION_COOKIE}=")
    assert {"httponly", "samesite=strict", "path=/", "max-age=28800"} <= set(attributes)
    assert "secure" not in attributes  # plain http: a Secure cookie would never come back
    assert client.get("/console/session").json() == {"name": "rita", "roles": ["requester"]}
    assert _actions(store) == ["login"]


def test_a_login_over_https_sets_a_secure_cookie(store, tmp_path):
    _principal(store)
    client = _client(store, tmp_path, base_url="https://testserver")
    response = client.post("/console/login", json={"name": "rita", "password": PASSWORD})
    attributes = [a.strip().lower() for a in response.headers["set-cookie"].split(";")]
    assert "secure" in attributes
    assert client.get("/console/session").status_code == 200


def test_the_session_and_csrf_tokens_are_stored_only_as_their_digests(store, tmp_path):
    _principal(store)
    client = _client(store, tmp_path)
    csrf = _login(client)
    cookie = client.cookies[SESSION_COOKIE]
    with store.read() as s:
        row = s.scalars(select(ConsoleSession)).one()
        stored = (row.token_hash, row.csrf_hash)
        reasons = " ".join(e.reason or "" for e in s.scalars(select(AuditEvent)))
    digest = [hashlib.sha256(t.encode()).hexdigest() for t in (cookie, csrf)]
    assert stored == tuple(digest)
    assert cookie not in reasons
    assert csrf not in reasons
    assert min(len(cookie), len(csrf)) >= 43  # 32 random bytes, base64url


def test_five_wrong_passwords_lock_the_login_even_for_the_right_one_and_it_is_audited(
    store, tmp_path
):
    pid = _principal(store)
    client = _client(store, tmp_path)
    refusals = [
        client.post("/console/login", json={"name": "rita", "password": "wrong password!"})
        for _ in range(p.MAX_FAILED_LOGINS)
    ]
    refusals.append(client.post("/console/login", json={"name": "rita", "password": PASSWORD}))
    refusals.append(client.post("/console/login", json={"name": "nobody", "password": PASSWORD}))
    assert {r.status_code for r in refusals} == {401}
    assert len({r.text for r in refusals}) == 1  # the same answer for every failure
    assert all("set-cookie" not in r.headers for r in refusals)
    assert SESSION_COOKIE not in client.cookies
    with store.read() as s:
        reasons = list(
            s.scalars(
                select(AuditEvent.reason).where(
                    AuditEvent.entity == "principal",
                    AuditEvent.entity_id == str(pid),
                    AuditEvent.action == "login_failed",
                )
            )
        )
        assert s.scalar(select(func.count()).select_from(ConsoleSession)) == 0
    assert reasons[-1] == "locked out for 15 minutes"
    assert len(reasons) == p.MAX_FAILED_LOGINS


def test_a_cookie_request_that_changes_something_needs_the_sessions_csrf_token(store, tmp_path):
    _principal(store, "rita", ("requester",))
    _principal(store, "other", ("requester",))
    other_csrf = _login(_client(store, tmp_path), "other")
    client = _client(store, tmp_path)
    csrf = _login(client)
    for headers in ({}, {CSRF_HEADER: "not-the-token"}, {CSRF_HEADER: other_csrf}):
        refused = client.post("/users", json=USER, headers=headers)
        assert refused.status_code == 403, headers
        assert refused.json()["error"]["code"] == "forbidden"
        assert CSRF_HEADER in refused.json()["error"]["message"]
    assert _users(store) == 0
    assert client.get("/users").status_code == 200  # reading needs no CSRF token
    created = client.post("/users", json=USER, headers={CSRF_HEADER: csrf})
    assert created.status_code == 201, created.text
    assert _users(store) == 1


def test_a_cookie_grants_only_what_the_principals_roles_grant(store, tmp_path):
    _principal(store, "aud", ("auditor",))
    client = _client(store, tmp_path)
    csrf = _login(client, "aud")
    refused = client.post("/users", json=USER, headers={CSRF_HEADER: csrf})
    assert refused.status_code == 403
    assert "requester" in refused.json()["error"]["message"]
    assert _users(store) == 0


def test_a_bearer_request_needs_no_csrf_token(store, tmp_path):
    pid = p.create_principal(store, "robot", roles=["requester"], by="tests")
    _, token = p.issue_token(store, pid, by="tests")
    client = _client(store, tmp_path)
    headers = {"Authorization": f"Bearer {token.reveal()}"}
    assert client.post("/users", json=USER, headers=headers).status_code == 201


def test_logout_needs_the_csrf_token_and_then_the_cookie_no_longer_works(store, tmp_path):
    _principal(store)
    client = _client(store, tmp_path)
    csrf = _login(client)
    cookie = client.cookies[SESSION_COOKIE]
    assert client.post("/console/logout").status_code == 403
    assert client.get("/console/session").status_code == 200
    response = client.post("/console/logout", headers={CSRF_HEADER: csrf})
    assert response.status_code == 204
    assert "max-age=0" in response.headers["set-cookie"].lower()
    replayed = _client(store, tmp_path)
    replayed.cookies.set(SESSION_COOKIE, cookie)
    assert replayed.get("/console/session").status_code == 401
    assert replayed.post("/users", json=USER, headers={CSRF_HEADER: csrf}).status_code == 401
    assert _users(store) == 0
    assert _actions(store) == ["login", "logout"]


@pytest.mark.parametrize(
    ("moved", "why"),
    [
        ({"expires_at": -dt.timedelta(seconds=1)}, "expired"),
        ({"last_seen_at": -console_auth.IDLE - dt.timedelta(seconds=1)}, "idle"),
    ],
)
def test_an_expired_or_idle_session_is_refused(store, tmp_path, moved, why):
    _principal(store)
    client = _client(store, tmp_path)
    csrf = _login(client)
    _move_session(store, **{column: utcnow() + delta for column, delta in moved.items()})
    refused = client.get("/console/session")
    assert refused.status_code == 401
    assert why in refused.json()["error"]["message"]
    assert client.post("/users", json=USER, headers={CSRF_HEADER: csrf}).status_code == 401
    assert _users(store) == 0


def test_a_session_used_within_the_idle_timeout_stays_alive_writing_once_a_minute(store, tmp_path):
    _principal(store)
    client = _client(store, tmp_path)
    _login(client)
    almost_idle = utcnow() - console_auth.IDLE + dt.timedelta(seconds=30)
    _move_session(store, last_seen_at=almost_idle)
    assert client.get("/console/session").status_code == 200
    with store.read() as s:
        refreshed = s.scalars(select(ConsoleSession.last_seen_at)).one()
    assert refreshed > almost_idle + dt.timedelta(minutes=1)
    assert client.get("/console/session").status_code == 200
    with store.read() as s:
        assert s.scalars(select(ConsoleSession.last_seen_at)).one() == refreshed
    assert _actions(store) == ["login"]  # use is not audited


def test_a_disabled_principals_session_stops_working(store, tmp_path):
    pid = _principal(store)
    client = _client(store, tmp_path)
    csrf = _login(client)
    with store.tx(audited=False) as s:
        s.execute(update(Principal).where(Principal.id == pid).values(disabled_at=utcnow()))
    assert client.get("/console/session").status_code == 401
    assert client.post("/users", json=USER, headers={CSRF_HEADER: csrf}).status_code == 401
    assert _users(store) == 0


def test_a_principal_without_roles_may_still_see_who_is_signed_in_and_log_out(store, tmp_path):
    _principal(store, "nobody-special", ())
    client = _client(store, tmp_path)
    csrf = _login(client, "nobody-special")
    assert client.get("/console/session").json() == {"name": "nobody-special", "roles": []}
    assert client.get("/users").status_code == 403
    assert client.post("/console/logout", headers={CSRF_HEADER: csrf}).status_code == 204


def test_the_password_never_appears_in_a_response_or_a_log(store, tmp_path, caplog):
    secret = "hunter2-but-longer-" + os.urandom(8).hex()
    _principal(store)
    client = _client(store, tmp_path)
    attempts = [
        {"name": "rita", "password": secret},  # wrong
        {"name": "nobody", "password": secret},  # unknown name
        {"name": "rita", "password": secret, "remember": True},  # an unknown field
        {"name": "rita", "password": secret * 100},  # too long
        {"name": ["rita"], "password": secret},  # a malformed name
        {"password": secret},  # no name
    ]
    caplog.set_level(logging.DEBUG)
    with capture_logs() as events:
        responses = [client.post("/console/login", json=body) for body in attempts]
        responses.append(
            client.post(
                "/console/login",
                content=f'{{"name": "rita", "password": "{secret}"',  # not JSON
                headers={"Content-Type": "application/json"},
            )
        )
    assert [r.status_code for r in responses] == [401, 401] + [422] * 5
    for response in responses:
        assert secret not in response.text
        assert secret not in str(response.headers)
    assert secret not in repr(events)
    assert secret not in caplog.text
    with store.read() as s:
        audited = repr([(e.reason, e.actor) for e in s.scalars(select(AuditEvent))])
    assert secret not in audited


def test_a_password_in_the_url_is_not_taken(store, tmp_path):
    _principal(store)
    client = _client(store, tmp_path)
    response = client.post(f"/console/login?password={PASSWORD}", json={"name": "rita"})
    assert response.status_code == 422
    assert PASSWORD not in response.text
    assert SESSION_COOKIE not in client.cookies
