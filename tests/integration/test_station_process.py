"""A station process on a real broker: SIGTERM lets it finish the card in its printer."""

from __future__ import annotations

import signal
import time

import pytest
from sqlalchemy import select

from db.engine import open_store
from db.models import Credential, Station
from ops.brokers import flush
from ops.procline import PgDatabase, ProcessLine, Role, line_env
from ops.services import AMQP_URL, PG_URL
from tests.backends import require
from workers.broker import WORKER_QUEUES


@pytest.mark.slow
def test_sigterm_lets_a_station_finish_the_card_in_hand_and_go_offline(tmp_path):
    require("postgres")
    require("rabbitmq")
    db = PgDatabase(PG_URL, "cardline_sigterm_test").create()
    flush(AMQP_URL, [*WORKER_QUEUES, "line.default"])
    env = line_env(database_url=db.url, broker_url=AMQP_URL, data_dir=tmp_path / "data")
    # At time scale 0.1 a card takes ~2.4 s at the station: long enough to catch it.
    roles = [
        Role("relay", ("relay",)),
        Role("worker", ("worker",)),
        Role("ST1", ("station", "--id", "ST1", "--time-scale", "0.1")),
    ]
    line = ProcessLine(env=env, roles=roles, log_dir=tmp_path / "logs")
    store = None
    try:
        line.cardline("db", "upgrade")
        line.cardline("demo", "--seed-only", "--cards", "3")
        store = open_store(db.url, pool_size=1)
        line.start_all()
        deadline = time.monotonic() + 60
        held = None
        while held is None and time.monotonic() < deadline:
            with store.read() as s:
                held = s.scalars(
                    select(Credential.id).where(Credential.state == "producing")
                ).first()
            time.sleep(0.05)
        assert held is not None, "no card reached the station"
        station = line.procs["ST1"]
        station.send_signal(signal.SIGTERM)
        assert station.wait(timeout=30) == 0
        with store.read() as s:
            assert s.get(Credential, held).state == "active"
            assert s.get(Station, "ST1").status == "offline"
    finally:
        line.stop_all(timeout_s=10)
        if store is not None:
            store.dispose()
        db.drop()
