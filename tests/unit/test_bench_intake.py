"""The intake benchmark runs (at a tiny size); how fast it is, is not a test."""

from __future__ import annotations

from ops.bench import INTAKE_COLUMNS, intake_table, run_intake


def test_the_intake_bench_runs_and_reports_every_column():
    rows = run_intake((20, 40), ("sqlite",))

    assert [(r["backend"], r["rows"]) for r in rows] == [("sqlite", 20), ("sqlite", 40)]
    for row in rows:
        assert {key for _, key in INTAKE_COLUMNS} <= set(row)
        assert row["peak_rss_mb"] > 0
        assert row["us_per_row"] > 0
    assert intake_table(rows).row_count == 2
