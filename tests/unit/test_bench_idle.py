"""The idle-station bench runs and reports its figures with its floor (never a speed
check: benchmarks measure, tests only see that they run)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from ops import bench_idle
from ops.bench import main


def test_the_idle_bench_reports_the_stations_share_of_a_core_beside_its_floor():
    result = bench_idle.run(seconds=1.0)
    assert result["seconds"] == 1.0
    assert result["station_cpu_long_s"] > 0  # a real process ran and was measured
    for key in ("station_idle_core_pct", "floor_sleep_core_pct", "station_start_cpu_s"):
        assert result[key] >= 0, key


def test_ops_bench_idle_prints_a_table_and_one_json_line():
    out = CliRunner().invoke(main, ["--idle", "1"])
    assert out.exit_code == 0, out.output
    line = out.output.strip().splitlines()[-1]
    assert set(json.loads(line)["idle"]) >= {"station_idle_core_pct", "floor_sleep_core_pct"}
