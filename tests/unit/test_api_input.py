"""Bad input at the API's edge (issue 17, points 7 and 8): refused with a 4xx naming the
field, never a 5xx, on SQLite and PostgreSQL. NUL bytes anywhere, repeated JSON keys,
batch names that are not plain file names, page numbers past any offset, photos in an
upload; and reject reports and the status that tell the truth."""

from __future__ import annotations

import csv
import io

import pytest
from sqlalchemy import func, select

from db.models import AuditEvent, BatchOrder, User
from schemas.batch import COLUMNS
from tests.unit.test_api import USER, _app, _auth


def _refused(response, field: str | None) -> str:
    """The answer is a 422 validation error naming ``field``; its message."""
    assert response.status_code == 422, (response.status_code, response.text)
    error = response.json()["error"]
    assert error["code"] == "validation_failed", error
    assert error.get("field") == field, error
    return str(error["message"])


def _count(store, model) -> int:
    with store.read() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def _csv(*rows: dict[str, str]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([row.get(column, "") for column in COLUMNS])
    return out.getvalue().encode()


def _person(n: int, **overrides: str) -> dict[str, str]:
    return {
        **USER,
        "email": f"person{n}@example.org",
        "upn": f"person{n}@corp.example.org",
        **overrides,
    }


@pytest.fixture
def client(store, tmp_path):
    return _app(store, tmp_path)


@pytest.fixture
def admin(store):
    return _auth(store, "ada", "admin")


def _upload(client, headers, data: bytes, name: str | None = "staff.csv"):
    params = {} if name is None else {"name": name}
    return client.post(
        "/batches",
        content=data,
        params=params,
        headers={**headers, "Content-Type": "text/csv"},
    )


# --- batch names ---------------------------------------------------------------------


@pytest.mark.parametrize("name", [".", "..", "a/b.csv", "..%2Fx", "x" * 101, "é" * 90, "a\x00"])
def test_a_batch_name_that_is_not_a_plain_file_name_is_refused_naming_name(
    store, client, admin, name
):
    response = _upload(client, admin, _csv(_person(1)), name=name)
    _refused(response, "name")
    assert _count(store, BatchOrder) == 0


# --- page bounds ---------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/users", "/cards"])
@pytest.mark.parametrize("page", ["99999999999999999999", str(10**6 + 1)])
def test_a_page_number_past_any_offset_is_refused_naming_page(client, admin, path, page):
    _refused(client.get(path, params={"page": page}, headers=admin), "page")
    _refused(client.get(path, params={"per_page": page}, headers=admin), "per_page")


@pytest.mark.parametrize("path", ["/users", "/cards"])
def test_the_last_page_number_allowed_is_an_empty_page(client, admin, path):
    response = client.get(path, params={"page": 10**6, "per_page": 500}, headers=admin)
    assert response.status_code == 200, response.text
    assert response.json()["items"] == []


# --- NUL bytes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "field"),
    [
        ("GET", "/users/a%00b", "user"),
        ("GET", "/cards/%00", "card"),
        ("PATCH", "/users/x%00@example.org", "user"),
        ("POST", "/certificates/ab%00/revoke", "serial"),
    ],
)
def test_a_nul_byte_in_a_path_is_refused_naming_the_parameter(client, admin, method, path, field):
    response = client.request(method, path, json={}, headers=admin)
    assert "NUL" in _refused(response, field)
    # A path no route serves reaches nothing that stores it: a plain 404.
    assert client.get("/nowhere/%00", headers=admin).status_code == 404


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("/users", {"text": "gr\x00ace"}, "text"),
        ("/users", {"state": "\x00"}, "state"),
        ("/cards", {"user": "a\x00@example.org"}, "user"),
        ("/cards", {"kind": "card", "x\x00": "1"}, None),
    ],
)
def test_a_nul_byte_in_a_query_is_refused_naming_the_parameter(client, admin, path, params, field):
    assert "NUL" in _refused(client.get(path, params=params, headers=admin), field)


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/users", {**USER, "first_name": "Gr\x00ace"}, "first_name"),
        ("/users", {**USER, "x": [{"y": "\x00"}]}, "x.0.y"),
        ("/cards", {"users": ["grace@example.org", "a\x00@example.org"]}, "users.1"),
        ("/console/login", {"name": "ada\x00", "password": "secret"}, "name"),
        ("/users", {**USER, "a\x00": 1}, None),
        ("/cards", "\x00", None),
    ],
)
def test_a_nul_byte_in_a_json_string_is_refused_naming_the_field_and_nothing_is_stored(
    store, client, admin, path, body, field
):
    response = client.post(path, json=body, headers=admin)
    assert "NUL" in _refused(response, field)
    assert _count(store, User) == 0


# --- repeated JSON keys --------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (
            '{"first_name": "Grace", "last_name": "Hopper", "email": "grace@example.org", '
            '"upn": "grace@corp.example.org", "organization": "Navy", "org_unit": "C", '
            '"email": "mallory@example.org"}',
            "email",
        ),
        ('{"first_name": "Grace", "x": [1, {"y": 1, "y": 2}]}', "x.1.y"),
    ],
)
def test_a_repeated_key_in_a_json_body_is_refused_naming_the_key(store, client, admin, body, field):
    response = client.post(
        "/users", content=body, headers={**admin, "Content-Type": "application/json"}
    )
    assert "repeated" in _refused(response, field)
    assert _count(store, User) == 0


def test_a_repeated_key_is_refused_under_any_json_media_type_and_without_one(client, admin):
    body = '{"users": ["a@example.org"], "users": ["b@example.org"]}'
    for content_type in ("application/json; charset=utf-8", "application/merge-patch+json"):
        response = client.post(
            "/cards", content=body, headers={**admin, "Content-Type": content_type}
        )
        _refused(response, "users")
    bare = client.post("/cards", content=body, headers=admin)  # FastAPI parses it as JSON
    _refused(bare, "users")


def test_a_large_csv_upload_is_streamed_past_the_json_checks_and_imported(store, client, admin):
    data = _csv(*(_person(n) for n in range(2000)))
    assert len(data) > 150_000
    response = _upload(client, admin, data)
    assert response.status_code == 201, response.text
    assert response.json()["cards_requested"] == 2000


# --- photos in uploads ---------------------------------------------------------------


def test_an_upload_naming_a_photo_is_refused_naming_line_and_photo_and_imports_nothing(
    store, client, admin
):
    data = _csv(_person(1), _person(2, photo="faces/grace.jpg"), _person(3))
    response = _upload(client, admin, data)
    message = _refused(response, "photo")
    assert "line 3" in message
    assert _count(store, User) == 0
    assert _count(store, BatchOrder) == 0
    empty = _upload(client, admin, _csv(_person(1), _person(2)))  # the column, no photo
    assert empty.status_code == 201, empty.text


# --- reject reports ------------------------------------------------------------------


def test_two_uploads_named_alike_keep_both_reject_reports(store, client, admin, tmp_path):
    first = _upload(client, admin, _csv(_person(1), _person(2, email="bad-one")))
    second = _upload(client, admin, _csv(_person(3), _person(4, email="bad-two")))
    names = [r.json()["reject_report"] for r in (first, second)]
    assert names[0] != names[1]
    assert all(name.startswith("staff-") and name.endswith("-rejects.csv") for name in names)
    reports = sorted((tmp_path / "rejects").iterdir())
    assert sorted(p.name for p in reports) == sorted(names)
    texts = [(tmp_path / "rejects" / name).read_text(encoding="utf-8-sig") for name in names]
    assert ("bad-one" in texts[0], "bad-two" in texts[0]) == (True, False)
    assert ("bad-one" in texts[1], "bad-two" in texts[1]) == (False, True)


# --- the status ----------------------------------------------------------------------


def test_the_status_says_the_audit_chain_was_not_checked_rather_than_broken(store, client):
    operator = _auth(store, "olga", "operator")
    created = client.post("/users", json=USER, headers=_auth(store, "rita", "requester"))
    assert created.status_code == 201
    status = client.get("/status", headers=operator).json()
    assert status["audit_chain_ok"] is None
    assert status["audit_chain_checked"] is False
    assert status["audit_events"] == _count(store, AuditEvent) > 0


def test_any_write_to_a_busy_store_is_answered_503_with_retry_after_not_500(sqlite_store, tmp_path):
    import sqlite3

    from sqlalchemy import event

    client, headers = _app(sqlite_store, tmp_path), _auth(sqlite_store, "rita", "requester")

    @event.listens_for(sqlite_store.engine, "connect")
    def _short_wait(dbapi_conn, _record):
        dbapi_conn.execute("PRAGMA busy_timeout = 50")

    sqlite_store.engine.dispose()
    holder = sqlite3.connect(sqlite_store.engine.url.database, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another writer holds SQLite's write lock
    try:
        busy = client.post("/users", json=USER, headers=headers)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert busy.status_code == 503, busy.text
    assert int(busy.headers["Retry-After"]) > 0
    assert busy.json()["error"]["code"] == "unavailable"
    assert _count(sqlite_store, User) == 0
    assert client.post("/users", json=USER, headers=headers).status_code == 201
