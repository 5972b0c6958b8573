"""``python -m ops.bench``: throughput of the embedded line against its floors.

Absolute times on shared machines vary from run to run, so each run also measures, on
the same machine and backend, the floors the line is compared with: the raw
``transition()`` rate on the store, the raw certificate build+sign rate of the CA, and
the raw message rate of the broker. Prints a table and, last, one JSON line.

``--intake`` benchmarks batch intake instead: generated files of 1,000, 10,000 and
100,000 rows imported into SQLite and PostgreSQL, each import in a fresh process so
its peak RSS is its own, with the floor it is compared with (reading and validating
the rows, which no store can avoid) measured in that same process. Beside each import
a writer thread creates one audited row every 50 ms, as the line would, and reports
its longest wait: what the import costs everyone else.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import resource
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import dramatiq
from rich.console import Console
from rich.table import Table
from sqlalchemy import func, select

from db import keys
from db.engine import open_store
from db.models import AuditEvent, Credential, User
from db.secrets import SecretBox
from db.summary import progress
from db.transition import create, transition
from ops import bench_pki
from ops.brokers import flush
from ops.chaos import BROKERS, PG_ADMIN
from ops.config import Settings
from ops.line import EmbeddedLine, LineOptions
from ops.logging import configure
from ops.procline import LineShape, PgDatabase, ProcessLine, line_env
from ops.store import open_migrated
from producers.approvals import approve_batch
from producers.batch_import import import_batch
from producers.generate import write_users_csv
from schemas.policy import Policy
from schemas.states import CertUsage
from workers.broker import WORKER_QUEUES, make_broker
from workers.ca import CertificateAuthority, Holder

BACKENDS = ("sqlite+memory", "postgres+rabbitmq", "postgres+redis")


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


def bench_transitions(work: Path, count: int, database_url: str | None = None) -> float:
    """Transitions per second, one per transaction, as the line commits them."""
    store = open_migrated(Settings(data_dir=work / "floor", database_url=database_url))
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
    rate = count / (time.perf_counter() - t0)
    store.dispose()
    return rate


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


def bench_broker(count: int, broker_url: str = "memory://", threads: int = 4) -> float:
    """Messages per second through the broker to a no-op actor in this process."""
    broker = make_broker(broker_url)
    done = threading.Semaphore(0)

    @dramatiq.actor(broker=broker, queue_name="bench", actor_name="bench_noop")
    def noop(n: int) -> None:
        done.release()

    broker.flush_all()
    worker = dramatiq.Worker(broker, worker_threads=threads)
    worker.start()
    t0 = time.perf_counter()
    for i in range(count):
        noop.send(i)
    for _ in range(count):
        done.acquire()
    rate = count / (time.perf_counter() - t0)
    worker.stop()
    broker.close()
    return rate


def bench_process_line(work: Path, backend: str, cards: int, stations: int) -> LineResult:
    """The whole line as separate processes (relay, 2 workers, K stations) on PostgreSQL."""
    broker = backend.split("+", 1)[1]
    db = PgDatabase(PG_ADMIN, f"cardline_bench_{os.getpid()}_{broker}").create()
    try:
        flush(BROKERS[broker], [*WORKER_QUEUES, "line.default"])
        env = line_env(database_url=db.url, broker_url=BROKERS[broker], data_dir=work / broker)
        shape = LineShape(stations=stations, time_scale=0)
        line = ProcessLine(env=env, roles=shape.roles(), log_dir=work / f"{broker}-logs")
        line.cardline("db", "upgrade")
        line.cardline("demo", "--seed-only", "--cards", str(cards))
        store = open_store(db.url, pool_size=2)
        with store.read() as s:
            events_before = s.scalar(select(func.count()).select_from(AuditEvent)) or 0
        cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        line.start_all()
        while True:
            with store.read() as s:
                states, unsent, letters = progress(s)
            if states.get("active", 0) == cards and unsent == 0 and letters == 0:
                break
            if time.perf_counter() - t0 > 600:
                raise RuntimeError(f"bench line on {backend} did not finish: {states}")
            time.sleep(0.05)
        elapsed = time.perf_counter() - t0
        line.stop_all()
        cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        with store.read() as s:
            events = (s.scalar(select(func.count()).select_from(AuditEvent)) or 0) - events_before
        store.dispose()
    finally:
        db.drop()
    cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
    return LineResult(cards, stations, elapsed, cpu * 1000 / cards, events / cards)


def run(backend: str, cards: int, stations: int) -> dict[str, Any]:
    """One row: the line on ``backend`` and, in the same run, its floors."""
    configure(log_file=None, console_level="CRITICAL")
    db_kind, broker = backend.split("+", 1)
    with tempfile.TemporaryDirectory(prefix="cardline-bench-") as tmp:
        work = Path(tmp)
        floor_db = None
        if db_kind == "postgres":
            floor_db = PgDatabase(PG_ADMIN, f"cardline_bench_floor_{os.getpid()}").create()
        try:
            transitions = bench_transitions(work, 1000, floor_db.url if floor_db else None)
        finally:
            if floor_db:
                floor_db.drop()
        signing = bench_signing(work, 500)
        messages = bench_broker(3000, BROKERS.get(broker, "memory://"))
        if backend == "sqlite+memory":
            line = bench_line(work, cards, stations)
        else:
            line = bench_process_line(work, backend, cards, stations)
    return {
        "backend": backend,
        "processes": 1 if backend == "sqlite+memory" else 3 + stations,
        "cards": line.cards,
        "stations": line.stations,
        "elapsed_s": round(line.elapsed_s, 3),
        "cards_per_s": round(line.cards_per_s, 2),
        "cpu_ms_per_card": round(line.cpu_ms_per_card, 1),
        "transitions_per_card": round(line.transitions_per_card, 1),
        "floor_transitions_per_s": round(transitions, 1),
        "floor_signs_per_s": round(signing, 1),
        "floor_broker_msgs_per_s": round(messages, 1),
        # The card rate the store alone would allow, given what one card writes.
        "store_bound_cards_per_s": round(transitions / line.transitions_per_card, 2),
    }


INTAKE_SIZES = (1_000, 10_000, 100_000)
INTAKE_BACKENDS = ("sqlite", "postgres")


def _intake_once(database_url: str | None, data_dir: str, csv_path: str) -> dict[str, Any]:
    """In a fresh process: the floor (parse and validate every row), then the import."""
    from schemas.batch import BatchRow, header_columns

    configure(log_file=None, console_level="CRITICAL")
    store = open_migrated(Settings(data_dir=Path(data_dir), database_url=database_url))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    rows = 0
    with open(csv_path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        columns = header_columns(next(reader))
        for cells in reader:
            BatchRow.model_validate(dict(zip(columns, cells, strict=True)))
            rows += 1
    floor = time.perf_counter() - t0
    started = time.time()
    t0 = time.perf_counter()
    report = import_batch(
        store,
        Path(csv_path),
        policy=Policy(),
        requested_by="bench",
        reject_dir=Path(data_dir) / "rejects",
    )
    elapsed = time.perf_counter() - t0
    store.dispose()
    if report.cards_requested != rows or report.rejected:
        raise RuntimeError(f"intake bench imported {report.cards_requested} of {rows} rows")
    return {
        "rows": rows,
        "elapsed_s": round(elapsed, 3),
        "us_per_row": round(elapsed * 1e6 / rows, 1),
        "floor_validate_us_per_row": round(floor * 1e6 / rows, 1),
        # ru_maxrss is in KiB on Linux.
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_before_import_mb": round(rss_before / 1024, 1),
        "import_window": (started, started + elapsed),
    }


def _other_writer(database_url: str | None, data_dir: str, stop: Any, out: Any) -> None:
    """In its own process, beside an import: one audited row (a user, as an operator's
    would be) every 50 ms until ``stop`` is set; sends back (start, seconds) of each."""
    configure(log_file=None, console_level="CRITICAL")
    store = open_store(Settings(data_dir=Path(data_dir), database_url=database_url).db_url)
    writes = []
    n = 0
    while not stop.wait(0.05):
        started, t0 = time.time(), time.perf_counter()
        with store.tx() as s:
            create(
                s,
                User(
                    state="active",
                    first_name="Other",
                    last_name=f"Writer{n}",
                    email=f"other.writer{n}@bench.invalid",
                    upn=f"other.writer{n}@bench.invalid",
                    organization="bench",
                    org_unit="bench",
                ),
                actor="bench-writer",
            )
        writes.append((started, time.perf_counter() - t0))
        n += 1
    store.dispose()
    out.send(writes)


def bench_intake(work: Path, backend: str, rows: int) -> dict[str, Any]:
    """One generated file of ``rows`` rows into a fresh store on ``backend``."""
    csv_path = write_users_csv(work / f"users-{rows}.csv", rows, seed=1)
    db = (
        PgDatabase(PG_ADMIN, f"cardline_bench_intake_{os.getpid()}_{rows}")
        if backend == "postgres"
        else None
    )
    url = db.create().url if db else None
    data_dir = str(work / f"{backend}-{rows}")
    try:
        context = multiprocessing.get_context("spawn")
        open_migrated(Settings(data_dir=Path(data_dir), database_url=url)).dispose()
        stop = context.Event()
        mine, theirs = context.Pipe()
        writer = context.Process(target=_other_writer, args=(url, data_dir, stop, theirs))
        writer.start()
        try:
            with context.Pool(1) as pool:
                result = pool.apply(_intake_once, (url, data_dir, str(csv_path)))
        finally:
            stop.set()
            writes = mine.recv()
            writer.join()
    finally:
        if db:
            db.drop()
    begin, end = result.pop("import_window")
    during = [seconds for at, seconds in writes if begin <= at <= end]
    return {
        "backend": backend,
        **result,
        "other_writer_writes": len(during),
        "other_writer_max_wait_s": round(max(during, default=0.0), 3),
        "other_writer_p95_wait_s": round(_percentile(during, 0.95), 3),
    }


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_intake(sizes: tuple[int, ...], backends: tuple[str, ...]) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="cardline-bench-intake-") as tmp:
        rows = [bench_intake(Path(tmp), b, n) for b in backends for n in sizes]
    for backend in backends:
        mine = [r for r in rows if r["backend"] == backend]
        spread = max(r["us_per_row"] for r in mine) / min(r["us_per_row"] for r in mine)
        for r in mine:
            r["us_per_row_spread"] = round(spread, 2)  # largest over smallest, per backend
    return rows


INTAKE_COLUMNS = (
    ("backend", "backend"),
    ("rows", "rows"),
    ("time s", "elapsed_s"),
    ("µs/row", "us_per_row"),
    ("floor: validate µs/row", "floor_validate_us_per_row"),
    ("peak RSS MB", "peak_rss_mb"),
    ("RSS before import MB", "rss_before_import_mb"),
    ("µs/row max/min", "us_per_row_spread"),
    ("other writer: p95 wait s", "other_writer_p95_wait_s"),
    ("other writer: longest wait s", "other_writer_max_wait_s"),
)


def intake_table(rows: list[dict[str, Any]]) -> Table:
    t = Table(title="Cardline intake bench: generated files, one fresh process per import")
    for title, _ in INTAKE_COLUMNS:
        t.add_column(title, justify="left" if title == "backend" else "right")
    for row in rows:
        t.add_row(*(str(row[key]) for _, key in INTAKE_COLUMNS))
    return t


COLUMNS = (
    ("backend", "backend"),
    ("processes", "processes"),
    ("cards/s", "cards_per_s"),
    ("CPU ms/card", "cpu_ms_per_card"),
    ("transitions/card", "transitions_per_card"),
    ("floor: transition()/s", "floor_transitions_per_s"),
    ("floor: sign/s", "floor_signs_per_s"),
    ("floor: broker msg/s", "floor_broker_msgs_per_s"),
    ("store-bound cards/s", "store_bound_cards_per_s"),
)


def table(rows: list[dict[str, Any]]) -> Table:
    first = rows[0]
    t = Table(
        title=f"Cardline bench: {first['cards']} cards, {first['stations']} zero-delay "
        "stations; floors measured in the same run"
    )
    for title, _ in COLUMNS:
        t.add_column(title, justify="left" if title == "backend" else "right")
    for row in rows:
        t.add_row(*(str(row[key]) for _, key in COLUMNS))
    return t


def markdown(rows: list[dict[str, Any]]) -> str:
    head = "| " + " | ".join(title for title, _ in COLUMNS) + " |"
    rule = "|" + "---|" * len(COLUMNS)
    body = ["| " + " | ".join(str(row[key]) for _, key in COLUMNS) + " |" for row in rows]
    return "\n".join([head, rule, *body])


@click.command()
@click.option("--cards", default=300, show_default=True)
@click.option("--stations", default=4, show_default=True)
@click.option(
    "--backends",
    default=",".join(BACKENDS),
    show_default=True,
    help="Comma-separated: sqlite+memory, postgres+rabbitmq, postgres+redis.",
)
@click.option("--markdown", "as_markdown", is_flag=True, help="Also print a Markdown table.")
@click.option(
    "--pki",
    is_flag=True,
    help="Run the PKI worker bench instead (python -m ops.bench_pki --count N).",
)
@click.option("--intake", is_flag=True, help="Run the batch intake bench instead.")
@click.option(
    "--idle",
    "idle_s",
    type=click.FloatRange(min=1),
    default=None,
    help="Run the idle-station bench instead, for this many seconds.",
)
@click.option(
    "--intake-sizes",
    default=",".join(map(str, INTAKE_SIZES)),
    show_default=True,
    help="Comma-separated row counts for --intake.",
)
@click.option(
    "--intake-backends",
    default=",".join(INTAKE_BACKENDS),
    show_default=True,
    help="Comma-separated: sqlite, postgres (for --intake).",
)
def main(
    cards: int,
    stations: int,
    backends: str,
    as_markdown: bool,
    pki: bool,
    intake: bool,
    intake_sizes: str,
    intake_backends: str,
    idle_s: float | None,
) -> None:
    """Benchmark the line on each backend against its floors; a table and one JSON line."""
    if idle_s is not None:
        from ops import bench_idle

        bench_idle.emit(bench_idle.run(idle_s))
        return
    if pki:
        bench_pki.emit(bench_pki.run(bench_pki.DEFAULT_COUNT))
        return
    if intake:
        sizes = tuple(int(n) for n in intake_sizes.split(",") if n.strip())
        chosen_backends = tuple(b.strip() for b in intake_backends.split(",") if b.strip())
        if set(chosen_backends) - set(INTAKE_BACKENDS):
            raise click.BadParameter(f"unknown intake backends {chosen_backends}")
        results = run_intake(sizes, chosen_backends)
        Console().print(intake_table(results))
        click.echo(json.dumps({"intake": results}, sort_keys=True))
        return
    chosen = [b.strip() for b in backends.split(",") if b.strip()]
    unknown = set(chosen) - set(BACKENDS)
    if unknown:
        raise click.BadParameter(f"unknown backends {sorted(unknown)}")
    rows = [run(backend, cards, stations) for backend in chosen]
    Console().print(table(rows))
    if as_markdown:
        click.echo(markdown(rows))
    click.echo(json.dumps({"bench": rows}, sort_keys=True))


if __name__ == "__main__":
    main()
