"""The real services Cardline's tests and chaos runs use, and how to start each.

``python -m ops.services`` reports which are reachable. With CI=true a missing service
is an error (exit 1); otherwise it is a warning with the command that starts it.
"""

from __future__ import annotations

import os
import socket
import sys
from urllib.parse import urlsplit

PG_URL = os.environ.get("CARDLINE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
AMQP_URL = os.environ.get("CARDLINE_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672/%2F")
REDIS_URL = os.environ.get("CARDLINE_TEST_REDIS", "redis://127.0.0.1:6379/0")

URLS = {"postgres": PG_URL, "rabbitmq": AMQP_URL, "redis": REDIS_URL}
HOW_TO_START = {
    "postgres": "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
    "rabbitmq": "rabbitmq-server -detached",
    "redis": "redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save '' --appendonly no",
}


def reachable(service: str) -> bool:
    parts = urlsplit(URLS[service].replace("postgresql+psycopg", "postgresql"))
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 0), 1):
            return True
    except OSError:
        return False


def missing_message(service: str) -> str:
    return f"{service} is not running at {URLS[service]}; start it with: {HOW_TO_START[service]}"


def main() -> int:
    ci = os.environ.get("CI", "").lower() == "true"
    missing = [s for s in URLS if not reachable(s)]
    for service in URLS:
        print(f"{service:9} {'ok' if service not in missing else 'MISSING'}  {URLS[service]}")
    for service in missing:
        print(("error: " if ci else "warning: ") + missing_message(service), file=sys.stderr)
    if missing and not ci:
        print(
            "tests that need these services will be skipped (under CI=true they fail)",
            file=sys.stderr,
        )
    return 1 if (missing and ci) else 0


if __name__ == "__main__":
    raise SystemExit(main())
