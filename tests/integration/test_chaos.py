"""Chaos: SIGKILL at random moments across the whole life of a card — import, approval,
preparation, production, letters, CRL publication — on the embedded default and on
PostgreSQL with each broker (each restarted once, PostgreSQL too). With no device
faults, every card must come out active exactly once, no blank may be spoiled beyond
the cards physically in the stations killed, and nothing may be left waiting."""

from __future__ import annotations

import pytest

from ops.chaos import ChaosOptions, run_chaos, run_outages
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


@pytest.mark.slow
def test_pki_broker_and_postgres_outages_with_cards_in_the_stations_spoil_no_blank(tmp_path):
    require("postgres")
    require("rabbitmq")
    results = {r.outage: r for r in run_outages("rabbitmq", tmp_path, pki_s=8.0)}
    assert list(results) == ["pki worker", "broker", "postgres"]
    assert {name: r.blanks_spoiled for name, r in results.items()} == {
        "pki worker": 0,
        "broker": 0,
        "postgres": 0,
    }
    assert all(r.cards_in_stations > 0 for r in results.values())
    assert "waiting_for_pki" in results["pki worker"].station_statuses
    assert "waiting_for_store" in results["postgres"].station_statuses
