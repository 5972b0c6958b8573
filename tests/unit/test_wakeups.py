"""A waiter is woken when what it waits for is committed, not when it next polls
(issue 16 point 3: no busy waiting)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from db import wakeups
from db.engine import open_store
from tests.conftest import _database_url


def test_a_waiter_is_woken_when_the_writers_transaction_commits(store):
    with wakeups.waiting(store, "certificates", 41) as waiter:
        with store.tx(audited=False) as s:
            wakeups.notify(s, "certificates", 41)
            assert not waiter.wait(0.0)  # not before the commit
        assert waiter.wait(5.0)


def test_a_rolled_back_write_wakes_no_one_and_others_keys_are_not_ours(store):
    with wakeups.waiting(store, "certificates", 42) as waiter:
        with contextlib.suppress(RuntimeError), store.tx(audited=False) as s:
            wakeups.notify(s, "certificates", 42)
            raise RuntimeError("rolled back")
        with store.tx(audited=False) as s:
            wakeups.notify(s, "certificates", 43)
        started = time.monotonic()
        assert not waiter.wait(0.3)  # nothing for us: the timeout runs out
        assert time.monotonic() - started >= 0.29


@pytest.fixture
def pg_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from _database_url("postgres", tmp_path, request)


def test_on_postgresql_another_process_wakes_this_one(pg_url):
    database_url = pg_url
    store = open_store(database_url, pool_size=1)
    try:
        with wakeups.waiting(store, "certificates", 44) as waiter:
            time.sleep(0.5)  # the listener thread is LISTENing
            script = (
                "from db.engine import open_store; from db import wakeups\n"
                f"st = open_store({database_url!r}, pool_size=1)\n"
                "with st.tx(audited=False) as s:\n"
                "    wakeups.notify(s, 'certificates', 44)\n"
            )
            done = threading.Event()

            def other() -> None:
                subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
                done.set()

            threading.Thread(target=other, daemon=True).start()
            started = time.monotonic()
            assert waiter.wait(30.0)
            assert time.monotonic() - started < 30.0
    finally:
        store.dispose()
