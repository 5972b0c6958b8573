"""Alerts (``db.alerts``): each condition opens one alert that says what to do, the
limits come from ``[alerts]``, the queries read indexes, and ``cardline alerts``,
``GET /alerts`` and ``cardline status --watch`` show them."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import event, text, update

from db import attention
from db.alerts import open_alerts
from db.engine import open_store, sqlite_url
from db.models import Credential, OutboxMessage, Station, utcnow
from ops.cli import main
from ops.config import ConfigFile
from schemas.alerts import ALERT_KINDS, KINDS, STUCK_ACTIONS, WATCHED_STATES, AlertConfig
from schemas.errors import ConfigurationError
from tests import factories
from tests.principals import token_for
from tests.unit.test_api import _app, _auth

# Rows made by the factories changed "now": the tests age the ones that matter.
NOW = utcnow()


def _aged(s, model, ids, **ago):
    """Make rows look as if they last changed ``ago`` before NOW."""
    column = "heartbeat_at" if model is Station else "updated_at"
    s.execute(update(model).where(model.id.in_(ids)).values({column: NOW - dt.timedelta(**ago)}))


def _names(alerts):
    return [(a.name, a.subject) for a in alerts]


def test_every_alert_kind_says_what_to_do_and_every_watched_state_has_its_advice():
    for kind in ALERT_KINDS:
        assert kind.action.endswith("."), kind.name
        assert len(kind.action.split()) >= 8, f"{kind.name}: say what the operator does"
    assert set(STUCK_ACTIONS) == set(WATCHED_STATES)
    assert set(AlertConfig().card_state_s.limits()) == {s.value for s in WATCHED_STATES}


def test_cards_past_their_states_limit_are_one_alert_naming_the_oldest_and_the_count(store):
    config = AlertConfig()
    with store.tx() as s:
        ready = [factories.credential(s, "ready") for _ in range(3)]
        fresh = factories.credential(s, "ready")
        _aged(s, Credential, [c.id for c in ready[:2]], hours=5)
        _aged(s, Credential, [ready[2].id], hours=6)
        _aged(s, Credential, [fresh.id], minutes=1)
        s.execute(update(Credential).where(Credential.id == ready[2].id).values(card_number="9001"))
    with store.read() as s:
        found = open_alerts(s, config, now=NOW)
    assert _names(found) == [("card_stuck", "card 9001")]
    alert = found[0]
    assert "and 2 more have been ready longer than 4.0 h" in alert.detail
    assert alert.since == NOW - dt.timedelta(hours=6)
    assert alert.what_to_do == STUCK_ACTIONS["ready"]
    assert alert.as_dict()["severity"] == "warning"


def test_a_state_whose_limit_is_zero_raises_nothing(store):
    config = ConfigFile.model_validate({"alerts": {"card_state_s": {"ready": 0}}}).alerts
    with store.tx() as s:
        card = factories.credential(s, "ready")
        _aged(s, Credential, [card.id], days=3)
    with store.read() as s:
        assert open_alerts(s, config, now=NOW) == []
        assert _names(open_alerts(s, AlertConfig(), now=NOW)) == [
            ("card_stuck", f"card #{card.id}")
        ]


def test_the_alerts_table_refuses_an_unknown_key_and_a_state_that_is_not_watched(tmp_path):
    path = tmp_path / "cardline.toml"
    path.write_text("[alerts]\nspoil_rat = 0.2\n[alerts.card_state_s]\nactive = 60\n")
    with pytest.raises(ConfigurationError) as err:
        ConfigFile.read(path)
    assert "alerts.spoil_rat: unknown key" in str(err.value)
    assert "alerts.card_state_s.active: unknown key" in str(err.value)


def test_a_silent_station_is_critical_and_a_station_that_stopped_cleanly_is_not(store):
    with store.tx() as s:
        for sid, status in (("ST1", "busy"), ("ST2", "offline"), ("ST3", "idle")):
            s.add(Station(id=sid, line="default", instance="i", status=status))
        s.flush()
        _aged(s, Station, ["ST1", "ST2"], minutes=5)
        _aged(s, Station, ["ST3"], seconds=2)
    with store.read() as s:
        found = open_alerts(s, AlertConfig(), now=NOW)
    assert _names(found) == [("station_silent", "station ST1")]
    assert found[0].severity == "critical"
    assert "last busy" in found[0].detail
    assert "sent no heartbeat for 5 min" in found[0].detail


def _finished(s, station, outcomes, *, ago):
    for outcome in outcomes:
        row = factories.attempt(s, outcome)
        row.station_id = station
        row.finished_at = NOW - ago
    s.flush()


def test_a_station_spoiling_more_than_the_rate_in_the_window_raises_an_alert(store):
    config = AlertConfig(spoil_rate=0.2, spoil_min_attempts=5, spoil_window_s=600)
    recent = dt.timedelta(minutes=2)
    with store.tx() as s:
        _finished(s, "ST1", ["spoiled"] * 2 + ["succeeded"] * 3, ago=recent)  # 40 %
        _finished(s, "ST2", ["spoiled"] + ["succeeded"] * 9, ago=recent)  # 10 %
        _finished(s, "ST3", ["spoiled"] * 3, ago=recent)  # too few to say
        _finished(s, "ST4", ["spoiled"] * 9, ago=dt.timedelta(hours=1))  # before the window
    with store.read() as s:
        found = open_alerts(s, config, now=NOW)
    assert _names(found) == [("spoil_rate_high", "station ST1")]
    assert "spoiled 2 of the 5 blanks it finished in the last 10 min (40%" in found[0].detail


def test_an_outbox_backlog_and_a_queue_backlog_raise_alerts(store):
    config = AlertConfig(outbox_backlog=2, outbox_age_s=3600, queue_backlog=2)
    with store.tx() as s:
        for _ in range(3):
            s.add(OutboxMessage(queue="pki", actor="pki", payload={}, created_at=NOW))
        cards = [factories.credential(s, "ready") for _ in range(3)]
        _aged(s, Credential, [c.id for c in cards], minutes=1)
    with store.read() as s:
        found = open_alerts(s, config, now=NOW)
    # Oldest first: the cards have waited a minute, the messages since NOW.
    assert _names(found) == [("queue_backlog", "queue line.default"), ("outbox_backlog", "outbox")]
    assert "3 items wait in line.default (limit 2), the oldest for 60 s" in found[0].detail
    assert found[1].detail.startswith("3 messages unsent")


def test_an_old_unsent_message_alone_is_an_outbox_alert(store):
    with store.tx() as s:
        s.add(OutboxMessage(queue="pki", actor="pki", payload={}, created_at=NOW))
    with store.read() as s:
        assert open_alerts(s, AlertConfig(), now=NOW + dt.timedelta(seconds=30)) == []
        late = open_alerts(s, AlertConfig(), now=NOW + dt.timedelta(minutes=10))
    assert _names(late) == [("outbox_backlog", "outbox")]


def _flag(s, card_id, reason):
    return attention.flag(
        s, entity="credential", entity_id=card_id, wait="card ready", reason=reason, actor="t"
    )


def test_each_open_attention_item_is_an_alert_and_a_resolved_one_is_not(store):
    with store.tx() as s:
        a = attention.flag(
            s, entity="credential", entity_id=7, wait="card ready", reason="bad", actor="t"
        )
        b = attention.flag(
            s, entity="credential", entity_id=8, wait="card ready", reason="worse", actor="t"
        )
    with store.tx() as s:
        attention.resolve(s, a.id, by="tests")
    with store.read() as s:
        found = open_alerts(s, AlertConfig())
    assert _names(found) == [("needs_attention", f"attention {b.id}")]
    assert found[0].detail == "credential 8 (card ready): worse"
    assert "cardline attention resolve ID" in found[0].what_to_do


def test_the_alert_queries_read_indexes_not_whole_tables(sqlite_store):
    """On 100,000 cards a table scan per refresh would cost; every query of a large
    table must be an index search (SQLite's plan says SCAN for a full read, also of a
    whole index)."""
    statements: list[tuple[str, object]] = []

    def keep(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append((statement, parameters))

    event.listen(sqlite_store.engine, "before_cursor_execute", keep)
    with sqlite_store.tx() as s:
        factories.credential(s, "ready")
        s.add(Station(id="ST1", line="default", instance="i"))
        s.add(OutboxMessage(queue="pki", actor="pki", payload={}))
    with sqlite_store.read() as s:
        open_alerts(s, AlertConfig(), now=NOW)
    event.remove(sqlite_store.engine, "before_cursor_execute", keep)
    large = ("credentials", "production_attempts", "outbox")
    with sqlite_store.engine.connect() as conn:
        for statement, parameters in statements:
            plan = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters).all()
            for row in plan:
                # A scan of a partial index reads only its rows (the unsent messages).
                scanned = re.match(
                    r"SCAN (\w+)(?! USING (?:COVERING )?INDEX ix_outbox_unsent)", row[-1]
                )
                assert not (scanned and scanned.group(1) in large), (statement, row[-1])


def test_cardline_alerts_exits_1_with_an_open_alert_and_0_without(tmp_path):
    data = tmp_path / "d"
    runner = CliRunner()
    assert runner.invoke(main, ["db", "upgrade", "--data-dir", str(data)]).exit_code == 0
    store = open_store(sqlite_url(data))
    try:
        env = {"CARDLINE_TOKEN": token_for(store, "mona", ["monitoring"])}
        quiet = runner.invoke(main, ["alerts", "--data-dir", str(data)], env=env)
        assert quiet.exit_code == 0, quiet.output
        assert "no open alerts" in quiet.output
        with store.tx() as s:
            s.add(Station(id="ST9", line="default", instance="i", status="busy"))
            s.flush()
            _aged(s, Station, ["ST9"], days=1)
        shown = runner.invoke(main, ["alerts", "--json", "--data-dir", str(data)], env=env)
        assert shown.exit_code == 1, shown.output
        body = json.loads(shown.stdout.splitlines()[-1])
        assert body["count"] == 1
        assert body["alerts"][0]["name"] == "station_silent"
        assert body["alerts"][0]["action"] == KINDS["station_silent"].action
        table = runner.invoke(main, ["alerts", "--data-dir", str(data)], env=env)
        assert table.exit_code == 1
        assert "station ST9" in table.output
        refused = runner.invoke(
            main,
            ["alerts", "--data-dir", str(data)],
            env={"CARDLINE_TOKEN": token_for(store, "stan", ["station"])},
        )
        assert refused.exit_code == 2
    finally:
        store.dispose()


def test_get_alerts_lists_them_for_a_reader_and_refuses_a_station(store, tmp_path):
    client = _app(store, tmp_path)
    with store.tx() as s:
        attention.flag(
            s, entity="credential", entity_id=3, wait="card ready", reason="x", actor="t"
        )
    ok = client.get("/alerts", headers=_auth(store, "mona", "monitoring"))
    assert ok.status_code == 200, ok.text
    assert ok.json()["count"] == 1
    assert ok.json()["alerts"][0]["name"] == "needs_attention"
    assert client.get("/alerts", headers=_auth(store, "op", "operator")).status_code == 200
    assert client.get("/alerts", headers=_auth(store, "st", "station")).status_code == 403
    assert client.get("/alerts").status_code == 401


def _watch(data: Path, *args: str):
    return CliRunner().invoke(
        main, ["status", "--watch", "--data-dir", str(data), *args], catch_exceptions=False
    )


def test_status_watch_shows_the_tables_and_the_open_alerts_and_stops_after_count(tmp_path):
    data = tmp_path / "d"
    assert CliRunner().invoke(main, ["db", "upgrade", "--data-dir", str(data)]).exit_code == 0
    store = open_store(sqlite_url(data))
    try:
        with store.tx() as s:
            s.add(Station(id="ST9", line="default", instance="i", status="busy"))
            s.flush()
            s.execute(text("UPDATE stations SET heartbeat_at = '2020-01-01 00:00:00.000000'"))
    finally:
        store.dispose()
    result = _watch(data, "--interval", "0.1", "--count", "3")
    assert result.exit_code == 0, result.output
    for title in ("Cards", "Line", "Stations", "Open alerts (1)", "station_silent"):
        assert title in result.output
    assert "not verified here" in result.output  # --watch does not recompute the chain


def test_status_watch_ends_cleanly_with_exit_0_on_ctrl_c(tmp_path, monkeypatch):
    data = tmp_path / "d"
    assert CliRunner().invoke(main, ["db", "upgrade", "--data-dir", str(data)]).exit_code == 0

    def interrupted(_seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr("time.sleep", interrupted)
    result = _watch(data)
    assert result.exit_code == 0, result.output
    assert "no open alerts" in result.output


def test_status_watch_takes_no_json(tmp_path):
    result = CliRunner().invoke(main, ["status", "--watch", "--json", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "takes no --json" in result.output
