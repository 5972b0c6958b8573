"""A production line of separate processes on this host, for chaos runs and benchmarks.

Each role (relay, workers, stations) is a real ``cardline`` process; this module starts,
kills and restarts them and knows nothing of what they do. Databases are created from
an admin URL so every run starts from an empty store.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg

CARDLINE = [sys.executable, "-m", "ops.cli"]


@dataclass(frozen=True)
class Role:
    name: str
    args: tuple[str, ...]


@dataclass(frozen=True)
class LineShape:
    workers: int = 2
    stations: int = 4
    time_scale: float = 0.0
    fault_rate: float = 0.0
    lease_s: float = 5.0
    heartbeat_s: float = 1.0
    cert_timeout_s: float = 60.0
    approved_stall_s: float = 5.0
    ready_stall_s: float = 10.0
    reconcile_s: float = 1.0

    def roles(self) -> list[Role]:
        roles = [
            Role(
                "relay",
                (
                    "relay",
                    "--approved-stall-s",
                    str(self.approved_stall_s),
                    "--ready-stall-s",
                    str(self.ready_stall_s),
                    "--reconcile-s",
                    str(self.reconcile_s),
                ),
            )
        ]
        roles += [Role(f"worker{i + 1}", ("worker", "--threads", "4")) for i in range(self.workers)]
        roles += [
            Role(
                f"ST{i + 1}",
                (
                    "station",
                    "--id",
                    f"ST{i + 1}",
                    "--lease-s",
                    str(self.lease_s),
                    "--heartbeat-s",
                    str(self.heartbeat_s),
                    "--cert-timeout-s",
                    str(self.cert_timeout_s),
                    "--time-scale",
                    str(self.time_scale),
                    "--fault-rate",
                    str(self.fault_rate),
                ),
            )
            for i in range(self.stations)
        ]
        return roles


def line_env(*, database_url: str, broker_url: str, data_dir: Path) -> dict[str, str]:
    """The environment every process of one line shares (one master key for all)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARDLINE_")}
    env.update(
        CARDLINE_DATABASE_URL=database_url,
        CARDLINE_BROKER_URL=broker_url,
        CARDLINE_DATA_DIR=str(data_dir),
        CARDLINE_MASTER_KEY=base64.b64encode(os.urandom(32)).decode(),
        PYTHONUNBUFFERED="1",
    )
    return env


@dataclass
class ProcessLine:
    env: dict[str, str]
    roles: list[Role]
    log_dir: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    restarts: int = 0

    def cardline(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run a one-shot ``cardline`` command in the line's environment."""
        return subprocess.run(
            [*CARDLINE, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        )

    def start(self, role: Role) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with (self.log_dir / f"{role.name}.log").open("ab") as log:
            self.procs[role.name] = subprocess.Popen(
                [*CARDLINE, *role.args], env=self.env, stdout=log, stderr=subprocess.STDOUT
            )

    def start_all(self) -> None:
        for role in self.roles:
            self.start(role)

    def kill(self, name: str) -> None:
        """SIGKILL one process and start it again with the same arguments."""
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        self.start(next(r for r in self.roles if r.name == name))
        self.restarts += 1

    def stop_all(self, timeout_s: float = 60) -> dict[str, int | None]:
        """SIGTERM every process, wait for each; return their exit codes."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        codes: dict[str, int | None] = {}
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = None
        return codes

    def dead(self) -> list[str]:
        return [n for n, p in self.procs.items() if p.poll() is not None]


class PgDatabase:
    """A throwaway PostgreSQL database, created from an admin URL and dropped after."""

    def __init__(self, admin_url: str, name: str) -> None:
        self.admin_url, self.name = admin_url, name
        self.url = f"{admin_url.rsplit('/', 1)[0]}/{name}"

    def _admin(self) -> psycopg.Connection[Any]:

        parts = urlsplit(self.admin_url.replace("postgresql+psycopg", "postgresql"))
        return psycopg.connect(
            f"host={parts.hostname} port={parts.port or 5432} "
            f"user={parts.username or 'postgres'} dbname={parts.path[1:] or 'postgres'}",
            autocommit=True,
        )

    def create(self) -> PgDatabase:
        with self._admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{self.name}"')
        return self

    def drop(self) -> None:
        with self._admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
