"""Only ``cardline db upgrade`` (and the demo, on its own fresh data dir) changes the
status store's schema; every other process checks it at start-up and refuses a store
that is behind, in one line, with exit code 3."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from sqlalchemy import text
from sqlalchemy.engine import make_url

from db.engine import open_store, sqlite_url
from db.migrate import current_revision, head_revision
from ops.cli import main
from ops.demo import DemoPlan
from producers.generate import write_users_csv
from tests.principals import token_for

HEAD = head_revision()
PASSWORD = "hunter2"  # trust authentication here ignores it; it must never be shown


def _invoke(*args, env=None):
    return CliRunner().invoke(main, [str(a) for a in args], env=env, catch_exceptions=False)


def _set_revision(url: str, revision: str) -> None:
    store = open_store(url, pool_size=1)
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = :r"), {"r": revision})
    store.dispose()


def _with_password(url: str) -> str:
    parsed = make_url(url)
    if parsed.drivername.startswith("sqlite"):
        return url
    return parsed.set(password=PASSWORD).render_as_string(hide_password=False)


COMMANDS = [
    ("status",),
    ("run",),
    ("relay",),
    ("worker",),
    ("station", "--id", "ST1"),
    ("api", "routes"),
    ("batch", "approve", "1"),  # no token: the schema check comes first
    ("card", "list"),
    ("token", "list"),
    ("expiry", "check"),
    ("demo", "--seed-only", "--cards", "1"),
]


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_a_process_refuses_a_store_behind_its_schema_in_one_line(database_url, tmp_path, args):
    _set_revision(database_url, "0008")
    url = _with_password(database_url)
    env = {"CARDLINE_DATABASE_URL": url, "CARDLINE_DATA_DIR": str(tmp_path / "d")}

    result = _invoke(*args, env=env)

    assert result.exit_code == 3, result.output
    shown = make_url(url).render_as_string(hide_password=True)
    assert result.stderr == (
        f"the status store at {shown} is at revision 0008, this Cardline needs {HEAD}: "
        "run `cardline db upgrade`\n"
    )
    assert PASSWORD not in result.output
    store = open_store(database_url, pool_size=1)
    assert current_revision(store) == "0008", "a process other than db upgrade migrated"
    store.dispose()


def test_a_missing_store_is_refused_and_not_created_and_db_upgrade_makes_it(tmp_path):
    data = tmp_path / "d"
    refused = _invoke("card", "list", "--data-dir", data)
    assert refused.exit_code == 3
    assert "is at revision none" in refused.stderr
    assert "run `cardline db upgrade`" in refused.stderr
    assert not (data / "cardline.db").exists()

    upgraded = _invoke("db", "upgrade", "--data-dir", data)
    assert upgraded.exit_code == 0, upgraded.output
    assert upgraded.output == f"status store at revision {HEAD}\n"
    store = open_store(sqlite_url(data))
    try:
        env = {"CARDLINE_TOKEN": token_for(store, "audrey", ["auditor"])}
    finally:
        store.dispose()
    listed = _invoke("card", "list", "--data-dir", data, env=env)
    assert listed.exit_code == 0, listed.output


def test_a_store_at_a_revision_this_cardline_does_not_know_asks_for_a_newer_cardline(
    database_url,
):
    _set_revision(database_url, "9999")
    result = _invoke("status", env={"CARDLINE_DATABASE_URL": database_url})
    assert result.exit_code == 3
    assert "is at revision 9999, unknown to this Cardline" in result.stderr


def test_run_works_on_the_demo_data_dir_the_demo_migrated(tmp_path):
    data = tmp_path / "d"
    demo = _invoke(
        "demo", "--cards", "1", "--stations", "1", "--time-scale", "0", "--data-dir", data
    )
    assert demo.exit_code == 0, demo.output
    run = _invoke("run", "--stations", "1", "--time-scale", "0", "--json", "--data-dir", data)
    assert run.exit_code == 0, run.output
    assert json.loads(run.output.strip().splitlines()[-1])["cards"] == {"active": 1}


def test_run_carries_out_a_demo_killed_before_it_made_its_store(tmp_path):
    """The demo writes its plan first: killed before its store existed, ``cardline run``
    does the demo's own steps, creating the store of the demo's data dir included."""
    data = tmp_path / "d"
    data.mkdir()
    csv = write_users_csv(data / "input" / "users.csv", 2, seed=1)
    DemoPlan(csv=str(csv), requester="demo-requester", approver="demo-approver").write(data)

    run = _invoke("run", "--stations", "1", "--time-scale", "0", "--json", "--data-dir", data)

    assert run.exit_code == 0, run.output
    assert json.loads(run.output.strip().splitlines()[-1])["cards"] == {"active": 2}
