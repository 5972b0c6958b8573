"""Chaos: a line of separate processes on PostgreSQL and a real broker, SIGKILLed at
random every 1-2 s, with the broker stopped and started once mid-run. Every card must
still come out exactly once and the books must balance."""

from __future__ import annotations

import pytest

from ops.chaos import ChaosOptions, run_chaos
from ops.procline import LineShape
from tests.backends import require


@pytest.mark.slow
@pytest.mark.parametrize("broker", ["rabbitmq", "redis"])
def test_a_line_under_sigkill_and_a_broker_outage_produces_every_card_once(tmp_path, broker):
    require("postgres")
    require(broker)
    options = ChaosOptions(
        broker=broker, cards=300, shape=LineShape(fault_rate=0.05), timeout_s=400
    )
    result = run_chaos(options, tmp_path)
    assert result.books_balanced, "\n".join(result.problems)
    assert sum(result.card_states.values()) == 300
    assert set(result.card_states) <= {"active", "failed"}
    assert result.blanks == result.card_states.get("active", 0) + result.spoiled
    assert result.kills >= 10, "too few kills to prove anything"
    assert result.outage
    assert result.recovery_after_last_kill_s is not None
    assert result.clean_exit, "a process did not stop cleanly on SIGTERM"
