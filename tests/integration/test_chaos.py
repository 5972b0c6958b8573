"""Chaos: SIGKILL at random moments across the whole life of a card — import, approval,
preparation, production, letters, CRL publication — on the embedded default and on
PostgreSQL with each broker (each restarted once, PostgreSQL too). With no device
faults, every card must come out active exactly once, no blank may be spoiled beyond
the cards physically in the stations killed, and nothing may be left waiting."""

from __future__ import annotations

import pytest

from ops.chaos import ChaosOptions, run_chaos
from tests.backends import require

KILLS = {"embedded": 10, "rabbitmq": 20, "redis": 20}


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["embedded", "rabbitmq", "redis"])
def test_random_kills_and_restarts_lose_nothing_and_spoil_only_the_cards_in_killed_stations(
    tmp_path, backend
):
    if backend != "embedded":
        require("postgres")
        require(backend)
    options = ChaosOptions(
        backend=backend,
        batches=3,
        cards_per_batch=40,
        stations=3,
        lifecycle=3,
        kills=KILLS[backend],
        timeout_s=420,
        seed=7,
    )
    result = run_chaos(options, tmp_path)
    assert result.books_balanced, "\n".join(result.problems)
    assert result.card_states == {"active": options.cards}
    assert (result.failed, result.lost, result.duplicated) == (0, 0, 0)
    assert result.needs_attention == 0
    assert result.spoiled <= result.blanks_allowed
    assert result.kills == KILLS[backend]
    if backend != "embedded":
        assert result.restarts == ["broker", "postgres"]
    assert result.recovery_after_last_kill_s is not None
