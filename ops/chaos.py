"""``python -m ops.chaos``: a line of processes under SIGKILL, with a broker outage.

PostgreSQL plus a real broker; a relay, workers and stations as separate processes. A
random one is SIGKILLed every 1-2 s and started again; once, mid-run, the broker is
stopped and started (Redis comes back empty). At the end the books must balance:
every card active exactly once or failed after its attempts, one succeeded attempt per
active card, no valid certificate on a spoiled blank, blanks = succeeded + spoiled,
the audit chain intact and the outbox drained. Prints a table and one JSON line.
"""

from __future__ import annotations

import json
import os
import random
import resource
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from sqlalchemy import func, select

from db.books import check_books
from db.engine import open_store
from db.models import Credential
from db.summary import progress
from ops.brokers import broker_outage, flush
from ops.procline import LineShape, PgDatabase, ProcessLine, line_env
from schemas.policy import Policy
from workers.broker import WORKER_QUEUES

PG_ADMIN = os.environ.get("CARDLINE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
BROKERS = {
    "rabbitmq": os.environ.get("CARDLINE_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672/%2F"),
    "redis": os.environ.get("CARDLINE_TEST_REDIS", "redis://127.0.0.1:6379/0"),
}
FINISHED = ("active", "failed")


@dataclass(frozen=True)
class ChaosOptions:
    broker: str = "rabbitmq"
    cards: int = 300
    shape: LineShape = field(default_factory=LineShape)
    kill_interval: tuple[float, float] = (1.0, 2.0)
    stop_killing_at: float = 0.9  # fraction of cards finished
    outage_at: float = 0.4
    outage_s: float = 3.0
    timeout_s: float = 600.0
    seed: int = 0


@dataclass
class ChaosResult:
    broker: str
    cards: int
    kills: int
    outage: bool
    elapsed_s: float
    recovery_after_last_kill_s: float | None
    books_balanced: bool
    problems: list[str]
    card_states: dict[str, int]
    blanks: int
    spoiled: int
    cpu_s_children: float
    clean_exit: bool


def _finished(store: Any) -> int:
    with store.read() as s:
        return int(
            s.scalar(
                select(func.count()).select_from(Credential).where(Credential.state.in_(FINISHED))
            )
            or 0
        )


def _drained(store: Any) -> bool:
    with store.read() as s:
        cards, unsent, letters = progress(s)
    busy = sum(cards.get(k, 0) for k in ("approved", "ready", "producing"))
    return busy == 0 and unsent == 0 and letters == 0


def run_chaos(options: ChaosOptions, work: Path) -> ChaosResult:
    rng = random.Random(options.seed)
    broker_url = BROKERS[options.broker]
    db = PgDatabase(PG_ADMIN, f"cardline_chaos_{os.getpid()}_{options.broker}").create()
    flush(broker_url, [*WORKER_QUEUES, "line.default"])
    env = line_env(database_url=db.url, broker_url=broker_url, data_dir=work / "data")
    line = ProcessLine(env=env, roles=options.shape.roles(), log_dir=work / "logs")
    store = None
    try:
        line.cardline("demo", "--seed-only", "--cards", str(options.cards))
        store = open_store(db.url, pool_size=2)
        cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.monotonic()
        line.start_all()
        kills, outage_done, last_kill_at, recovery = 0, False, None, None
        next_kill = start + rng.uniform(*options.kill_interval)
        done_at_last_kill = 0
        while time.monotonic() - start < options.timeout_s:
            done = _finished(store)
            now = time.monotonic()
            if not outage_done and done >= options.outage_at * options.cards:
                broker_outage(broker_url, options.outage_s)
                outage_done = True
            elif done < options.stop_killing_at * options.cards and now >= next_kill:
                line.kill(rng.choice(line.roles).name)
                kills += 1
                last_kill_at, done_at_last_kill = time.monotonic(), done
                next_kill = last_kill_at + rng.uniform(*options.kill_interval)
            if (
                last_kill_at
                and recovery is None
                and done > done_at_last_kill
                and done >= options.stop_killing_at * options.cards
            ):
                recovery = time.monotonic() - last_kill_at
            if done == options.cards and _drained(store):
                break
            time.sleep(0.05)
        elapsed = time.monotonic() - start
        codes = line.stop_all()
        cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        with store.read() as s:
            books = check_books(s, Policy())
        return ChaosResult(
            broker=options.broker,
            cards=options.cards,
            kills=kills,
            outage=outage_done,
            elapsed_s=round(elapsed, 2),
            recovery_after_last_kill_s=None if recovery is None else round(recovery, 2),
            books_balanced=books.balanced,
            problems=books.problems[:20],
            card_states=books.cards,
            blanks=books.blanks,
            spoiled=books.spoiled,
            cpu_s_children=round(
                (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime), 2
            ),
            clean_exit=all(code == 0 for code in codes.values()),
        )
    finally:
        line.stop_all(timeout_s=10)
        if store is not None:
            store.dispose()
        db.drop()


def table(results: list[ChaosResult]) -> Table:
    t = Table(title="Cardline chaos: SIGKILL every 1-2 s, one broker outage")
    for col in (
        "broker",
        "cards",
        "kills",
        "outage",
        "elapsed s",
        "recovery after last kill s",
        "blanks",
        "spoiled",
        "books",
        "clean exit",
    ):
        t.add_column(col)
    for r in results:
        t.add_row(
            r.broker,
            str(r.cards),
            str(r.kills),
            "yes" if r.outage else "no",
            str(r.elapsed_s),
            str(r.recovery_after_last_kill_s),
            str(r.blanks),
            str(r.spoiled),
            "balanced" if r.books_balanced else "UNBALANCED",
            "yes" if r.clean_exit else "no",
        )
    return t


@click.command()
@click.option("--broker", type=click.Choice(["rabbitmq", "redis", "both"]), default="both")
@click.option("--cards", default=2000, show_default=True)
@click.option("--time-scale", default=0.002, show_default=True)
@click.option("--fault-rate", default=0.05, show_default=True)
@click.option("--seed", default=0, show_default=True)
def main(broker: str, cards: int, time_scale: float, fault_rate: float, seed: int) -> None:
    """A long chaos run (minutes, hundreds of kills); a table and one JSON line."""
    brokers = ["rabbitmq", "redis"] if broker == "both" else [broker]
    shape = LineShape(time_scale=time_scale, fault_rate=fault_rate)
    results = []
    for name in brokers:
        with tempfile.TemporaryDirectory(prefix=f"cardline-chaos-{name}-") as tmp:
            results.append(
                run_chaos(
                    ChaosOptions(broker=name, cards=cards, shape=shape, seed=seed, timeout_s=3600),
                    Path(tmp),
                )
            )
    Console().print(table(results))
    print(json.dumps({"chaos": [asdict(r) for r in results]}, sort_keys=True))
    raise SystemExit(0 if all(r.books_balanced for r in results) else 1)


if __name__ == "__main__":
    main()
