"""``python -m ops.bench``: throughput of the embedded line against its floors.

Absolute times on shared machines vary from run to run, so each run also measures, on
the same machine and backend, the floors the line is compared with: the raw
``transition()`` rate on the store, the raw certificate build+sign rate of the CA, and
the raw message rate of the broker. Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import json
import resource
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import dramatiq
from dramatiq.brokers.stub import StubBroker
from rich.console import Console
from rich.table import Table
from sqlalchemy import func, select

from db.models import AuditEvent, Credential, User
from db.secrets import SecretBox
from db.transition import create, transition
from ops.config import Settings
from ops.line import EmbeddedLine, LineOptions, open_migrated
from ops.logging import configure
from producers.approvals import approve_batch
from producers.batch_import import import_batch
from producers.generate import write_users_csv
from schemas.policy import Policy
from schemas.states import CertUsage
from workers import keys
from workers.ca import CertificateAuthority, Holder


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class LineResult:
    cards: int
    stations: int
    elapsed_s: float
    cpu_ms_per_card: float
    transitions_per_card: float

    @property
    def cards_per_s(self) -> float:
        return self.cards / self.elapsed_s


def bench_line(work: Path, cards: int, stations: int) -> LineResult:
    settings = Settings(data_dir=work / "line")
    policy = Policy()
    store = open_migrated(settings)
    csv = write_users_csv(work / "users.csv", cards, seed=1)
    report = import_batch(
        store, csv, policy=policy, requested_by="bench", reject_dir=work / "rejects"
    )
    assert report.batch_id is not None
    approve_batch(store, report.batch_id, by="bench-approver")
    with store.read() as s:
        events_before = s.scalar(select(func.count()).select_from(AuditEvent)) or 0
    line = EmbeddedLine(settings, policy, LineOptions(stations=stations, time_scale=0))
    cpu0, t0 = _cpu_s(), time.perf_counter()
    line.start()
    line.wait_drained(poll_s=0.05)
    elapsed, cpu = time.perf_counter() - t0, _cpu_s() - cpu0
    line.stop()
    with store.read() as s:
        events = (s.scalar(select(func.count()).select_from(AuditEvent)) or 0) - events_before
        active = (
            s.scalar(
                select(func.count()).select_from(Credential).where(Credential.state == "active")
            )
            or 0
        )
    if active != cards:
        raise RuntimeError(f"bench line produced {active} of {cards} cards")
    return LineResult(cards, stations, elapsed, cpu * 1000 / cards, events / cards)


def bench_transitions(work: Path, count: int) -> float:
    """Transitions per second, one per transaction, as the line commits them."""
    store = open_migrated(Settings(data_dir=work / "floor"))
    with store.tx() as s:
        user = create(
            s,
            User(
                state="active",
                email="b@example.org",
                first_name="B",
                last_name="B",
                upn="b@example.org",
                organization="O",
                org_unit="U",
            ),
            actor="bench",
        )
        card = create(
            s, Credential(state="requested", user_id=user.id, requested_by="bench"), actor="bench"
        )
    t0 = time.perf_counter()
    for _ in range(count):
        with store.tx() as s:
            row = s.get(Credential, card.id)
            assert row is not None
            transition(s, row, "postpone", actor="bench")
    return count / (time.perf_counter() - t0)


def bench_signing(work: Path, count: int) -> float:
    """Certificates built and signed per second by the CA (CSR verification included)."""
    ca = CertificateAuthority.load_or_create(work / "ca", SecretBox(b"\0" * 32))
    csr = keys.csr_pem(keys.generate("ec-p256"), "bench")
    holder = Holder(
        common_name="Bench", email="b@example.org", upn="b@example.org", organization="O"
    )
    t0 = time.perf_counter()
    for _ in range(count):
        ca.issue(csr, usage=CertUsage.AUTHENTICATION, holder=holder, validity_days=365)
    return count / (time.perf_counter() - t0)


def bench_broker(count: int, threads: int = 4) -> float:
    """Messages per second through the in-process broker to a no-op actor."""
    broker = StubBroker()
    done = threading.Semaphore(0)

    @dramatiq.actor(broker=broker, queue_name="bench", actor_name="bench_noop")
    def noop(n: int) -> None:
        done.release()

    worker = dramatiq.Worker(broker, worker_threads=threads)
    worker.start()
    t0 = time.perf_counter()
    for i in range(count):
        noop.send(i)
    for _ in range(count):
        done.acquire()
    rate = count / (time.perf_counter() - t0)
    worker.stop()
    return rate


def run(cards: int, stations: int) -> dict[str, Any]:
    configure(log_file=None, console_level="CRITICAL")
    with tempfile.TemporaryDirectory(prefix="cardline-bench-") as tmp:
        work = Path(tmp)
        transitions = bench_transitions(work, 1000)
        signing = bench_signing(work, 500)
        broker = bench_broker(5000)
        line = bench_line(work, cards, stations)
    return {
        "backend": "sqlite+memory",
        "cards": line.cards,
        "stations": line.stations,
        "elapsed_s": round(line.elapsed_s, 3),
        "cards_per_s": round(line.cards_per_s, 2),
        "cpu_ms_per_card": round(line.cpu_ms_per_card, 1),
        "transitions_per_card": round(line.transitions_per_card, 1),
        "floor_transitions_per_s": round(transitions, 1),
        "floor_signs_per_s": round(signing, 1),
        "floor_broker_msgs_per_s": round(broker, 1),
        # The card rate the store alone would allow, given what one card writes.
        "store_bound_cards_per_s": round(transitions / line.transitions_per_card, 2),
    }


def table(result: dict[str, Any]) -> Table:
    t = Table(
        title=f"Cardline bench: {result['backend']}, {result['stations']} zero-delay "
        f"stations, {result['cards']} cards"
    )
    t.add_column("measure")
    t.add_column("value", justify="right")
    rows = [
        ("line: cards/s", result["cards_per_s"]),
        ("line: CPU ms per card", result["cpu_ms_per_card"]),
        ("line: audited transitions per card", result["transitions_per_card"]),
        ("floor: transition() per s (1 per transaction)", result["floor_transitions_per_s"]),
        ("floor: certificate build+sign per s", result["floor_signs_per_s"]),
        ("floor: broker messages per s", result["floor_broker_msgs_per_s"]),
        ("store-bound cards/s (floor / transitions per card)", result["store_bound_cards_per_s"]),
    ]
    for name, value in rows:
        t.add_row(name, str(value))
    return t


@click.command()
@click.option("--cards", default=300, show_default=True)
@click.option("--stations", default=4, show_default=True)
def main(cards: int, stations: int) -> None:
    """Benchmark the embedded line and its floors; print a table and one JSON line."""
    result = run(cards, stations)
    Console().print(table(result))
    click.echo(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
