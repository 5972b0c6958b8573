"""``python -m ops.chaos``: SIGKILL at random moments across the whole life of a card.

Three backends: ``embedded`` (one ``cardline demo`` process on SQLite with the
in-process broker, resumed with ``cardline run`` after each kill) and ``rabbitmq`` /
``redis`` (PostgreSQL and a real broker, one process per role). Besides the line, a
*feeder* process imports batch files, approves them, and later deactivates and
reactivates some cards (which holds and releases certificates, so CRLs are published):
kills therefore land during import, approval, preparation, production, letter writing
and CRL publication. On the process backends the broker and PostgreSQL are each
restarted once mid-run.

No device faults are injected, so after the last kill the line must drain with: every
ordered card ``active`` exactly once (none lost, none duplicated, none failed), at most
one spoiled blank per station process killed (the card physically in it; the embedded
process holds one per station), the audit chain verified, the outbox drained and
nothing needing attention. Prints a table and one JSON line.

``python -m ops.chaos feed`` is the feeder itself (idempotent: killed and started
again, it carries on where the store says it is).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table
from sqlalchemy import func, select

from db.attention import open_count
from db.books import check_books
from db.engine import Store, open_store, sqlite_url
from db.models import AuditEvent, BatchOrder, Credential
from db.summary import blocked_in_production, progress
from ops.brokers import broker_outage, flush
from ops.procline import CARDLINE, LineShape, PgDatabase, ProcessLine, line_env
from schemas.policy import Policy
from schemas.roles import Role
from workers.broker import WORKER_QUEUES

PG_ADMIN = os.environ.get("CARDLINE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
BROKERS = {
    "rabbitmq": os.environ.get("CARDLINE_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672/%2F"),
    "redis": os.environ.get("CARDLINE_TEST_REDIS", "redis://127.0.0.1:6379/0"),
}
BACKENDS = ("embedded", "rabbitmq", "redis")
REQUESTER, APPROVER, OPERATOR = "chaos-requester", "chaos-approver", "chaos-operator"


@dataclass(frozen=True)
class ChaosOptions:
    backend: str = "embedded"
    batches: int = 4
    cards_per_batch: int = 50
    stations: int = 3
    lifecycle: int = 4  # cards deactivated and reactivated once each (CRLs)
    kills: int = 20
    # Seconds between kills; None: 1-4 s embedded (a restart takes ~1.5 s), else 0.5-2 s.
    kill_interval: tuple[float, float] | None = None
    restarts: bool = True  # restart the broker and PostgreSQL once each (process backends)
    timeout_s: float = 900.0
    seed: int = 0

    @property
    def cards(self) -> int:
        return self.batches * self.cards_per_batch

    @property
    def interval(self) -> tuple[float, float]:
        if self.kill_interval is not None:
            return self.kill_interval
        return (1.0, 4.0) if self.backend == "embedded" else (0.5, 2.0)


@dataclass
class ChaosResult:
    backend: str
    cards: int
    kills: int
    kills_by_target: dict[str, int]
    restarts: list[str]
    blanks_allowed: int  # spoils a kill may cost: the cards physically in killed stations
    spoiled: int
    spoiled_per_kill: float
    failed: int
    lost: int
    duplicated: int
    needs_attention: int
    books_balanced: bool
    problems: list[str]
    card_states: dict[str, int]
    recovery_after_last_kill_s: float | None
    elapsed_s: float
    cpu_s_children: float

    @property
    def ok(self) -> bool:
        return (
            self.books_balanced
            and self.failed == 0
            and self.lost == 0
            and self.duplicated == 0
            and self.needs_attention == 0
            and self.spoiled <= self.blanks_allowed
            and set(self.card_states) <= {"active"}
        )


# --- the feeder -----------------------------------------------------------------------


def batch_file(folder: Path, index: int, cards: int) -> Path:
    from producers.generate import write_users_csv

    path = folder / f"batch-{index:03d}.csv"
    if not path.exists():
        write_users_csv(path, cards, seed=1000 + index)  # atomic: whole or absent
    return path


def feed(store: Store, folder: Path, *, batches: int, cards: int, lifecycle: int) -> None:
    """Import and approve every batch, then deactivate and reactivate ``lifecycle``
    cards once each. Every step looks at the store first, so a restarted feeder goes on
    where the killed one stopped and never does a step twice."""
    from producers.approvals import approve_batch
    from producers.batch_import import import_batch

    requester, approver, operator = _principals(store)
    policy = Policy()
    for index in range(batches):
        csv = batch_file(folder, index, cards)
        report = import_batch(
            store, csv, policy=policy, requested_by=requester, reject_dir=folder / "rejects"
        )
        assert report.batch_id is not None, f"{csv}: nothing to import"
        with store.read() as s:
            batch = s.get(BatchOrder, report.batch_id)
            waiting = batch is not None and batch.state == "requested"
        if waiting:
            approve_batch(store, report.batch_id, by=approver)
    _cycle_some_cards(store, lifecycle, operator)


def _principals(store: Store) -> tuple[str, str, str]:
    """The feeder's requester, approver and operator principals (found again by a
    restarted feeder)."""
    from producers.principals import ensure_principal

    return (
        ensure_principal(store, REQUESTER, roles=[Role.REQUESTER], by="host:chaos"),
        ensure_principal(store, APPROVER, roles=[Role.APPROVER], by="host:chaos"),
        ensure_principal(store, OPERATOR, roles=[Role.OPERATOR], by="host:chaos"),
    )


def _cycle_some_cards(store: Store, count: int, operator: str) -> None:
    from producers.lifecycle import deactivate_card, reactivate_card

    done: set[int] = set()
    while len(done) < count:
        with store.read() as s:
            cards = s.execute(
                select(Credential.id, Credential.state, Credential.card_number)
                .order_by(Credential.id)
                .limit(count)
            ).all()
            deactivated = set(
                s.scalars(
                    select(AuditEvent.entity_id).where(
                        AuditEvent.entity == "card", AuditEvent.action == "deactivate"
                    )
                )
            )
        for cid, state, number in cards:
            if number is None:
                continue  # not prepared yet
            if state == "active" and str(cid) not in deactivated:
                deactivate_card(store, number, by=operator, reason="chaos: deactivated")
            elif state == "inactive":
                reactivate_card(store, number, by=operator, reason="chaos: reactivated")
            elif state == "active":
                done.add(cid)
        time.sleep(0.2)


# --- running it -----------------------------------------------------------------------


@dataclass
class _Run:
    options: ChaosOptions
    work: Path
    rng: random.Random
    kills: Counter[str] = field(default_factory=Counter)
    allowed: int = 0
    restarts: list[str] = field(default_factory=list)
    last_kill: float | None = None


def _drained(url: str) -> bool:
    """Nothing waits for the line (a card waiting for a person does not count), no
    message is unsent, no letter is due; False while the schema does not exist yet."""
    store = open_store(url, readonly=url.startswith("sqlite"), pool_size=1)
    try:
        with store.read() as s:
            cards, unsent, letters = progress(s)
            blocked = blocked_in_production(s)
        busy = sum(cards.get(k, 0) for k in (*BUSY_STATES,))
        return busy - blocked == 0 and unsent == 0 and letters == 0
    except Exception:
        return False
    finally:
        store.dispose()


# Cards in these states are still on their way (inactive: the feeder reactivates them).
BUSY_STATES = ("requested", "approved", "ready", "producing", "inactive")


def _env(base: dict[str, str]) -> dict[str, str]:
    return {**base, "PYTHONUNBUFFERED": "1"}


def _popen(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)


def _feeder_args(o: ChaosOptions, folder: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "ops.chaos",
        "feed",
        "--dir",
        str(folder),
        "--batches",
        str(o.batches),
        "--cards",
        str(o.cards_per_batch),
        "--lifecycle",
        str(o.lifecycle),
    ]


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait()


def run_embedded(run: _Run) -> tuple[str, float | None]:
    """One ``cardline`` process (demo, then run) and the feeder, both SIGKILLed."""
    o, data = run.options, run.work / "data"
    env = _env({k: v for k, v in os.environ.items() if not k.startswith("CARDLINE_")})
    env["CARDLINE_DATA_DIR"] = str(data)
    url = sqlite_url(data)
    line_args = ["--stations", str(o.stations), "--time-scale", "0", "--data-dir", str(data)]
    logs = run.work / "logs"
    # The demo's own batch is the first; the feeder orders the rest into its store.
    line = _popen(
        [*CARDLINE, "demo", "--cards", str(o.cards_per_batch), *line_args], env, logs / "line.log"
    )
    feeder_folder = run.work / "orders"
    feeder: subprocess.Popen[bytes] | None = None
    next_kill = time.monotonic() + run.rng.uniform(0.3, 3.0)  # early: import, approval
    deadline = time.monotonic() + o.timeout_s
    while time.monotonic() < deadline:
        if feeder is None and (data / "cardline.db").exists() and line.poll() is None:
            time.sleep(0.5)  # let the demo create its store first
            feeder = _popen(_feeder_args(_minus_one(o), feeder_folder), env, logs / "feed.log")
        kills = sum(run.kills.values())
        if kills < o.kills and time.monotonic() >= next_kill:
            target = (
                "line"
                if feeder is None or feeder.poll() is not None
                else run.rng.choice(["line", "line", "feeder"])
            )
            if target == "line" and line.poll() is None:
                _kill(line)
                run.allowed += o.stations  # each simulated station may hold a card
                line = _resume(o, data, line_args, env, logs)
            elif target == "feeder" and feeder is not None:
                _kill(feeder)
                feeder = _popen(_feeder_args(_minus_one(o), feeder_folder), env, logs / "feed.log")
            run.kills[target] += 1
            run.last_kill = time.monotonic()
            next_kill = run.last_kill + run.rng.uniform(*o.interval)
        if line.poll() is not None:
            finished = sum(run.kills.values()) >= o.kills and (
                feeder is not None and feeder.poll() is not None
            )
            if finished and _drained(url):
                break
            # Drained for now, but more work is coming (the feeder) or kills remain.
            line = _resume(o, data, line_args, env, logs)
        time.sleep(0.1)
    recovery = None if run.last_kill is None else time.monotonic() - run.last_kill
    _kill(line)
    if feeder is not None:
        _kill(feeder)
    return url, recovery


def _resume(
    o: ChaosOptions, data: Path, line_args: list[str], env: dict[str, str], logs: Path
) -> subprocess.Popen[bytes]:
    """``cardline run``, as a user resumes a killed demo; only a demo killed before it
    wrote its plan (it had not ordered anything yet) is started again as a demo."""
    if (data / "demo-plan.json").exists():
        return _popen([*CARDLINE, "run", *line_args], env, logs / "line.log")
    demo = [*CARDLINE, "demo", "--cards", str(o.cards_per_batch), *line_args]
    return _popen(demo, env, logs / "line.log")


def _minus_one(o: ChaosOptions) -> ChaosOptions:
    """The feeder's share on the embedded backend: the demo brings the first batch."""
    from dataclasses import replace

    return replace(o, batches=o.batches - 1)


def _pg_restart(down_s: float = 0.0) -> None:
    """Restart PostgreSQL; with ``down_s``, keep it stopped that long in between."""
    version = sorted(os.listdir("/etc/postgresql"))[-1]

    def ctl(action: str) -> None:
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action],
            check=True,
            capture_output=True,
            timeout=120,
        )

    if not down_s:
        ctl("restart")
        return
    ctl("stop")
    try:
        time.sleep(down_s)
    finally:
        ctl("start")


def run_processes(run: _Run) -> tuple[str, float | None, PgDatabase]:
    o = run.options
    broker_url = BROKERS[o.backend]
    db = PgDatabase(PG_ADMIN, f"cardline_chaos_{os.getpid()}_{o.backend}").create()
    flush(broker_url, [*WORKER_QUEUES, "line.default"])
    env = line_env(database_url=db.url, broker_url=broker_url, data_dir=run.work / "data")
    shape = LineShape(stations=o.stations)
    line = ProcessLine(env=env, roles=shape.roles(), log_dir=run.work / "logs")
    line.cardline("db", "upgrade")
    line.start_all()
    feeder = _popen(_feeder_args(o, run.work / "orders"), env, run.work / "logs" / "feed.log")
    restarts = ["broker", "postgres"] if o.restarts else []
    restart_at = {name: (i + 1) * o.kills // (len(restarts) + 1) for i, name in enumerate(restarts)}
    next_kill = time.monotonic() + run.rng.uniform(0.3, 2.0)
    deadline = time.monotonic() + o.timeout_s
    while time.monotonic() < deadline:
        kills = sum(run.kills.values())
        for name, at in restart_at.items():
            if kills >= at and name not in run.restarts:
                if name == "broker":
                    broker_outage(broker_url, 3.0)
                else:
                    _pg_restart()
                run.restarts.append(name)
        if kills < o.kills and time.monotonic() >= next_kill:
            alive = [r.name for r in shape.roles()] + (["feeder"] if feeder.poll() is None else [])
            target = run.rng.choice(alive)
            if target == "feeder":
                _kill(feeder)
                feeder = _popen(
                    _feeder_args(o, run.work / "orders"), env, run.work / "logs" / "feed.log"
                )
            else:
                line.kill(target)
                if target.startswith("ST"):
                    run.allowed += 1
            run.kills[target.rstrip("0123456789") or target] += 1
            run.last_kill = time.monotonic()
            next_kill = run.last_kill + run.rng.uniform(*o.interval)
        if kills >= o.kills and feeder.poll() is not None and _drained(db.url):
            break
        time.sleep(0.1)
    recovery = None if run.last_kill is None else time.monotonic() - run.last_kill
    line.stop_all(timeout_s=30)
    _kill(feeder)
    return db.url, recovery, db


def run_chaos(options: ChaosOptions, work: Path) -> ChaosResult:
    run = _Run(options, work, random.Random(options.seed))
    import resource

    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    db: PgDatabase | None = None
    if options.backend == "embedded":
        url, recovery = run_embedded(run)
    else:
        url, recovery, db = run_processes(run)
    elapsed = time.monotonic() - start
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        return _result(
            run,
            url,
            recovery,
            elapsed,
            cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime,
        )
    finally:
        if db is not None:
            db.drop()


def _result(run: _Run, url: str, recovery: float | None, elapsed: float, cpu: float) -> ChaosResult:
    o = run.options
    store = open_store(url, pool_size=1)
    try:
        with store.read() as s:
            books = check_books(s, Policy())
            per_batch = s.execute(
                select(Credential.batch_id, func.count()).group_by(Credential.batch_id)
            ).all()
            attention = open_count(s)
    finally:
        store.dispose()
    total = sum(int(n) for _, n in per_batch)
    duplicated = sum(max(0, int(n) - o.cards_per_batch) for _, n in per_batch)
    kills = sum(run.kills.values())
    return ChaosResult(
        backend=o.backend,
        cards=o.cards,
        kills=kills,
        kills_by_target=dict(run.kills),
        restarts=run.restarts,
        blanks_allowed=run.allowed,
        spoiled=books.spoiled,
        spoiled_per_kill=round(books.spoiled / kills, 3) if kills else 0.0,
        failed=books.cards.get("failed", 0),
        lost=max(0, o.cards - total + duplicated),
        duplicated=duplicated,
        needs_attention=attention,
        books_balanced=books.balanced,
        problems=books.problems[:20],
        card_states=books.cards,
        recovery_after_last_kill_s=None if recovery is None else round(recovery, 2),
        elapsed_s=round(elapsed, 2),
        cpu_s_children=round(cpu, 2),
    )


@dataclass
class OutageResult:
    backend: str
    outage: str
    seconds: float
    cards_in_stations: int  # cards in an encoder when the outage began
    blanks_spoiled: int
    station_statuses: list[str]  # what the stations said while it lasted


def run_outages(backend: str, work: Path, *, pki_s: float = 15.0) -> list[OutageResult]:
    """Take the PKI worker, the broker and PostgreSQL away in turn while cards are in the
    stations; measure the blanks each outage spoils (it should be none)."""
    broker_url = BROKERS[backend]
    db = PgDatabase(PG_ADMIN, f"cardline_outage_{os.getpid()}_{backend}").create()
    flush(broker_url, [*WORKER_QUEUES, "line.default"])
    env = line_env(database_url=db.url, broker_url=broker_url, data_dir=work / "data")
    shape = LineShape(stations=3, time_scale=0.02, cert_timeout_s=3.0)
    line = ProcessLine(env=env, roles=shape.roles(), log_dir=work / "logs")
    line.cardline("db", "upgrade")
    line.start_all()
    feeder = _popen(
        [*_feeder_args(ChaosOptions(batches=6, cards_per_batch=50, lifecycle=0), work / "o")],
        env,
        work / "logs" / "feed.log",
    )
    store = open_store(db.url, pool_size=2)
    results = []
    try:
        for outage in ("pki worker", "broker", "postgres"):
            in_stations = _wait_for_cards_in_stations(store)
            before = _spoiled_count(store)
            log = work / "data" / "logs" / "cardline.log"
            offset = log.stat().st_size if log.exists() else 0
            seen: set[str] = set()
            started = time.monotonic()
            if outage == "pki worker":
                workers = [p for n, p in line.procs.items() if n.startswith("worker")]
                for proc in workers:
                    proc.send_signal(signal.SIGSTOP)
                end = time.monotonic() + pki_s
                while time.monotonic() < end:
                    seen |= _statuses(store)
                    time.sleep(0.2)
                for proc in workers:
                    proc.send_signal(signal.SIGCONT)
            elif outage == "broker":
                broker_outage(broker_url, 5.0)
            else:
                # Down long enough that every station holding a card meets it (a quick
                # restart under load can fall between two of their store calls).
                _pg_restart(down_s=4.0)
            seconds = time.monotonic() - started
            time.sleep(8.0)  # let the stations finish what they held
            seen |= _statuses(store) | _logged_waits(log, offset)
            results.append(
                OutageResult(
                    backend=backend,
                    outage=outage,
                    seconds=round(seconds, 1),
                    cards_in_stations=in_stations,
                    blanks_spoiled=_spoiled_count(store) - before,
                    station_statuses=sorted(seen & {"waiting_for_pki", "waiting_for_store"}),
                )
            )
    finally:
        store.dispose()
        line.stop_all(timeout_s=30)
        _kill(feeder)
        db.drop()
    return results


def _wait_for_cards_in_stations(store: Store, timeout_s: float = 120) -> int:
    from db.models import ProductionAttempt

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with store.read() as s:
            n = int(
                s.scalar(
                    select(func.count())
                    .select_from(ProductionAttempt)
                    .where(ProductionAttempt.state == "in_progress")
                )
                or 0
            )
        if n:
            return n
        time.sleep(0.02)
    raise RuntimeError("no card reached a station")


def _spoiled_count(store: Store) -> int:
    from db.models import ProductionAttempt

    with store.read() as s:
        return int(
            s.scalar(
                select(func.count())
                .select_from(ProductionAttempt)
                .where(ProductionAttempt.state == "spoiled")
            )
            or 0
        )


def _statuses(store: Store) -> set[str]:
    from db.models import Station

    try:
        with store.read() as s:
            return set(s.scalars(select(Station.status)))
    except Exception:
        return set()  # the store is away: the log file says what the stations did


def _logged_waits(log: Path, offset: int) -> set[str]:
    """The waits stations logged since ``offset`` (the log is shared by every process)."""
    if not log.exists():
        return set()
    with log.open("rb") as fh:
        fh.seek(offset)
        text = fh.read().decode(errors="replace")
    return {w for w in ("waiting_for_pki", "waiting_for_store") if f"station.{w}" in text}


def outage_table(results: list[OutageResult]) -> Table:
    t = Table(title="Outages while cards are in the stations: blanks spoiled")
    for col in ("backend", "outage", "s", "cards in stations", "blanks spoiled", "stations said"):
        t.add_column(col)
    for r in results:
        t.add_row(
            r.backend,
            r.outage,
            f"{r.seconds:.1f}",
            str(r.cards_in_stations),
            str(r.blanks_spoiled),
            ", ".join(r.station_statuses) or "-",
        )
    return t


def table(results: list[ChaosResult]) -> Table:
    t = Table(title="Cardline chaos: SIGKILL at random moments, broker and PostgreSQL restarts")
    cols = (
        "backend", "cards", "kills", "restarts", "spoiled", "allowed", "spoiled/kill",
        "failed", "lost", "dup", "attention", "drained after last kill s", "books",
    )  # fmt: skip
    for col in cols:
        t.add_column(col)
    for r in results:
        t.add_row(
            r.backend,
            str(r.cards),
            str(r.kills),
            ",".join(r.restarts) or "-",
            str(r.spoiled),
            str(r.blanks_allowed),
            f"{r.spoiled_per_kill:.2f}",
            str(r.failed),
            str(r.lost),
            str(r.duplicated),
            str(r.needs_attention),
            str(r.recovery_after_last_kill_s),
            "balanced" if r.books_balanced else "UNBALANCED",
        )
    return t


@click.group(invoke_without_command=True)
@click.option("--backend", type=click.Choice([*BACKENDS, "all"]), default="all")
@click.option("--kills", default=1000, show_default=True, help="Kills per backend.")
@click.option("--batches", default=20, show_default=True)
@click.option("--cards-per-batch", default=100, show_default=True)
@click.option("--stations", default=3, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.pass_context
def main(
    ctx: click.Context,
    backend: str,
    kills: int,
    batches: int,
    cards_per_batch: int,
    stations: int,
    seed: int,
) -> None:
    """A long chaos run (1,000 kills per backend by default); a table and one JSON line."""
    if ctx.invoked_subcommand is not None:
        return
    chosen = list(BACKENDS) if backend == "all" else [backend]
    results = []
    for name in chosen:
        options = ChaosOptions(
            backend=name,
            batches=batches,
            cards_per_batch=cards_per_batch,
            stations=stations,
            kills=kills,
            seed=seed,
            timeout_s=4 * 3600,
        )
        with tempfile.TemporaryDirectory(prefix=f"cardline-chaos-{name}-") as tmp:
            results.append(run_chaos(options, Path(tmp)))
    Console().print(table(results))
    print(json.dumps({"chaos": [asdict(r) for r in results]}, sort_keys=True))
    raise SystemExit(0 if all(r.ok for r in results) else 1)


@main.command("outages")
@click.option("--backend", type=click.Choice(["rabbitmq", "redis", "both"]), default="both")
def outages_command(backend: str) -> None:
    """PKI worker, broker and PostgreSQL outages with cards in the stations; blanks spoiled."""
    chosen = ["rabbitmq", "redis"] if backend == "both" else [backend]
    results: list[OutageResult] = []
    for name in chosen:
        with tempfile.TemporaryDirectory(prefix=f"cardline-outage-{name}-") as tmp:
            results += run_outages(name, Path(tmp))
    Console().print(outage_table(results))
    print(json.dumps({"outages": [asdict(r) for r in results]}, sort_keys=True))
    raise SystemExit(0 if all(r.blanks_spoiled == 0 for r in results) else 1)


@main.command("feed")
@click.option("--dir", "folder", type=click.Path(path_type=Path), required=True)
@click.option("--batches", type=int, required=True)
@click.option("--cards", type=int, required=True)
@click.option("--lifecycle", type=int, default=0)
def feed_command(folder: Path, batches: int, cards: int, lifecycle: int) -> None:
    """The feeder: import and approve batches, then cycle some cards (CARDLINE_* env)."""
    from ops.config import load

    settings = load(None)
    while not _schema_ready(settings.db_url):
        time.sleep(0.2)
    store = open_store(settings.db_url, pool_size=2)
    try:
        feed(store, folder, batches=batches, cards=cards, lifecycle=lifecycle)
    finally:
        store.dispose()


def _schema_ready(url: str) -> bool:
    try:
        store = open_store(url, pool_size=1)
        try:
            with store.read() as s:
                s.scalar(select(func.count()).select_from(BatchOrder))
            return True
        finally:
            store.dispose()
    except Exception:
        return False


if __name__ == "__main__":
    main()
