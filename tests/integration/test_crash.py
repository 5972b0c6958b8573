"""Crash safety: SIGKILL the embedded line mid-run, more than once, then resume it.

The line is a real ``cardline`` subprocess; nothing is mocked. After the last
``cardline run`` every card must be active exactly once (or failed after its allowed
attempts), and the books must balance.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from db.engine import open_store, sqlite_url
from db.models import Credential
from schemas.policy import Policy
from tests.invariants import assert_books_balance

CARDLINE = [sys.executable, "-m", "ops.cli"]
CARDS = 120


def _active(data_dir: Path) -> int:
    if not (data_dir / "cardline.db").exists():
        return 0
    store = open_store(sqlite_url(data_dir), readonly=True)
    try:
        with store.read() as s:
            return int(
                s.scalar(
                    select(func.count()).select_from(Credential).where(Credential.state == "active")
                )
                or 0
            )
    except Exception:  # the schema may not exist yet in the first second of a demo
        return 0
    finally:
        store.dispose()


def _start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("ab") as out:
        return subprocess.Popen(
            [*CARDLINE, *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=Path(__file__).parents[2],
        )


def _kill_when(proc: subprocess.Popen[bytes], data_dir: Path, active_at_least: int) -> int:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        active = _active(data_dir)
        if active >= active_at_least:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return active
        assert proc.poll() is None, "the line ended before it could be killed"
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"no progress to {active_at_least} active cards in 120 s")


@pytest.mark.slow
def test_sigkilled_line_resumes_and_every_card_is_produced_exactly_once(tmp_path):
    data = tmp_path / "data"
    log = tmp_path / "line.log"
    line = [
        "--data-dir",
        str(data),
        "--stations",
        "4",
        "--time-scale",
        "0.02",
        "--fault-rate",
        "0.15",
    ]
    demo = _start(["demo", "--cards", str(CARDS), "--seed", "5", *line], log)
    first = _kill_when(demo, data, 15)
    resumed = _start(["run", "--seed", "6", *line], log)
    second = _kill_when(resumed, data, first + 25)
    assert second < CARDS, "killed too late to prove anything"
    final = subprocess.run(
        [*CARDLINE, "run", "--json", "--data-dir", str(data), "--time-scale", "0"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).parents[2],
    )
    assert final.returncode == 0, final.stderr[-2000:]
    summary = json.loads(final.stdout.strip().splitlines()[-1])
    store = open_store(sqlite_url(data), readonly=True)
    books = assert_books_balance(store, Policy())
    assert sum(books["cards"].values()) == CARDS
    assert summary["cards"] == books["cards"]
    assert summary["blanks_used"] == (
        summary["attempts"]["succeeded"] + summary["attempts"]["spoiled"]
    )
    assert summary["audit_chain_ok"] is True
    # Each kill left a card in a station; the restarted stations handed them back.
    restarts = _count_faults(store, "station_restart")
    assert restarts >= 1
    store.dispose()


def _count_faults(store, fault: str) -> int:
    from db.models import ProductionAttempt

    with store.read() as s:
        return int(
            s.scalar(
                select(func.count())
                .select_from(ProductionAttempt)
                .where(ProductionAttempt.fault == fault)
            )
            or 0
        )
