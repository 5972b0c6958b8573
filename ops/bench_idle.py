"""What an idle station process costs (issue 16 point 3): ``python -m ops.bench --idle``.

A ``cardline station`` process (simulated drivers) runs on a migrated SQLite store
with nothing to produce, once for ``seconds`` and once for twice as long; each is
stopped with SIGTERM and its CPU time (user + system) read from ``getrusage`` of the
children. The difference, over ``seconds``, is what idling costs (start-up cancels
out), as a share of one core; beside it its floor, an interpreter that only sleeps, and
the start-up itself. A table and one JSON line.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

DEFAULT_SECONDS = 20.0


def _cpu_of(argv: list[str], env: dict[str, str], seconds: float) -> float:
    """CPU seconds the process ``argv`` used in ``seconds`` (from ready to SIGTERM)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(  # noqa: S603  (this interpreter, fixed arguments)
        argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    time.sleep(seconds)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def run(seconds: float = DEFAULT_SECONDS, broker_url: str = "memory://") -> dict[str, Any]:
    """The idle station's CPU share and its floors, start-up included in both."""
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        env = {
            **os.environ,
            "CARDLINE_DATA_DIR": str(data),
            "CARDLINE_BROKER_URL": broker_url,
            "CARDLINE_LOG_LEVEL": "WARNING",
        }
        env.pop("CARDLINE_DATABASE_URL", None)
        cli = [sys.executable, "-m", "ops.cli"]
        subprocess.run(  # noqa: S603  (this interpreter, fixed arguments)
            [*cli, "db", "upgrade"], env=env, check=True, capture_output=True
        )
        sleep_cpu = _cpu_of([sys.executable, "-c", "import time; time.sleep(3600)"], env, seconds)
        station = [*cli, "station", "--id", "IDLE1"]
        short = _cpu_of(station, env, seconds)
        long = _cpu_of(station, env, 2 * seconds)
    idle = max(0.0, long - short)
    return {
        "seconds": seconds,
        "broker": broker_url.split(":", 1)[0],
        "station_cpu_short_s": round(short, 3),
        "station_cpu_long_s": round(long, 3),
        "station_start_cpu_s": round(max(0.0, short - idle), 3),
        "station_idle_core_pct": round(100 * idle / seconds, 2),
        "floor_sleep_core_pct": round(100 * sleep_cpu / seconds, 2),
    }


def emit(result: dict[str, Any]) -> None:
    seconds = result["seconds"]
    table = Table(title=f"idle station ({result['broker']} broker)")
    for column in ("what", "CPU", "share of a core"):
        table.add_column(column)
    table.add_row(f"station process, {seconds:g} s", f"{result['station_cpu_short_s']} s", "")
    table.add_row(f"station process, {2 * seconds:g} s", f"{result['station_cpu_long_s']} s", "")
    table.add_row("station start-up", f"{result['station_start_cpu_s']} s", "")
    table.add_row("station idling (the difference)", "", f"{result['station_idle_core_pct']}%")
    table.add_row("floor: an interpreter that sleeps", "", f"{result['floor_sleep_core_pct']}%")
    Console().print(table)
    print(json.dumps({"idle": result}, sort_keys=True))
