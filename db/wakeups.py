"""Wake a waiter when what it waits for is in the store, instead of having it poll.

A station holding a card waits for its certificates; an update desk for an update's.
Polling the store every 20 ms for that was most of an idle line's CPU (issue 16). Now
the writer calls ``notify(session, topic, key)`` in the transaction that stores the
thing, and the waiter sleeps on ``Waiter.wait`` until it is woken or its timeout (the
time after which it would have looked anyway) runs out. A wake-up only says "look
again": the waiter always reads the store to see what is there, so a lost or spurious
wake-up costs at most one timeout, never a wrong answer.

Within one process (the embedded line) the wake-up is delivered when the writer's
transaction commits. Across processes on PostgreSQL it travels as ``NOTIFY`` (sent at
commit, like the data) to a ``LISTEN``-ing thread each waiting process runs, one
connection per process. SQLite across processes has no such channel: waiters there
fall back on their timeout.
"""

from __future__ import annotations

import contextlib
import threading
from collections import defaultdict
from collections.abc import Iterator

import structlog
from sqlalchemy import event, text
from sqlalchemy.orm import Session

from db.engine import Store

log = structlog.get_logger(__name__)

CHANNEL = "cardline_wakeups"

_lock = threading.Lock()
_waiters: dict[str, set[threading.Event]] = defaultdict(set)
_listeners: dict[str, _Listener] = {}


def _name(topic: str, key: object) -> str:
    return f"{topic}:{key}"


def _wake(name: str) -> None:
    with _lock:
        events = list(_waiters.get(name, ()))
    for ev in events:
        ev.set()


def notify(session: Session, topic: str, key: object) -> None:
    """Wake whoever waits for ``topic``/``key`` once this transaction commits (in this
    process; on PostgreSQL in every process listening)."""
    name = _name(topic, key)
    event.listen(session, "after_commit", lambda _s: _wake(name), once=True)
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            text("SELECT pg_notify(:channel, :name)"), {"channel": CHANNEL, "name": name}
        )


class Waiter:
    """One waiter for ``topic``/``key``: register first, then read the store, then
    ``wait`` — a wake-up between the read and the wait is not lost."""

    def __init__(self, topic: str, key: object) -> None:
        self.name = _name(topic, key)
        self._event = threading.Event()

    def __enter__(self) -> Waiter:
        with _lock:
            _waiters[self.name].add(self._event)
        return self

    def __exit__(self, *exc: object) -> None:
        with _lock:
            _waiters[self.name].discard(self._event)
            if not _waiters[self.name]:
                del _waiters[self.name]

    def wait(self, timeout_s: float) -> bool:
        """Sleep until woken or ``timeout_s``; True when woken. Re-armed after."""
        woken = self._event.wait(timeout_s)
        self._event.clear()
        return woken


@contextlib.contextmanager
def waiting(store: Store, topic: str, key: object) -> Iterator[Waiter]:
    """A registered ``Waiter``, with this process listening on PostgreSQL."""
    listen(store)
    with Waiter(topic, key) as waiter:
        yield waiter


class _Listener(threading.Thread):
    """LISTENs on one PostgreSQL database for this process's waiters."""

    def __init__(self, dsn: str) -> None:
        super().__init__(name="wakeups", daemon=True)
        self.dsn = dsn

    def run(self) -> None:
        import psycopg

        pause = 0.5
        while True:
            try:
                with psycopg.connect(self.dsn, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    pause = 0.5
                    for note in conn.notifies():
                        _wake(note.payload)
            except psycopg.Error as exc:  # the server restarted: waiters time out meanwhile
                detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
                if "does not exist" in detail:  # the database is gone: nothing to hear
                    with _lock:
                        _listeners.pop(self.dsn, None)
                    return
                log.info("wakeups.reconnect", detail=detail)
                threading.Event().wait(pause)
                pause = min(pause * 2, 30.0)


def listen(store: Store) -> None:
    """Start this process's listener for ``store`` (PostgreSQL only; once)."""
    url = store.engine.url
    if url.get_backend_name() != "postgresql":
        return
    dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with _lock:
        if dsn in _listeners:
            return
        listener = _Listener(dsn)
        _listeners[dsn] = listener
    listener.start()
