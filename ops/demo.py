"""``cardline demo`` and ``cardline run``: the embedded line, end to end."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy.engine import make_url

from db.engine import Store
from db.files import atomic_write
from db.models import BatchOrder
from ops import logging as logging_mod
from ops.config import Settings
from ops.line import DataPaths, EmbeddedLine, LineOptions
from ops.line import Progress as LineProgress
from ops.render import paths_table, summary_json, summary_tables
from ops.store import open_checked, open_migrated
from producers.approvals import approve_batch
from producers.batch_import import ImportReport, import_batch
from producers.generate import write_users_csv
from producers.principals import ensure_principal
from schemas.errors import ConfigurationError
from schemas.roles import Role
from schemas.states import BatchState

EXAMPLE_CSV = Path(__file__).parent / "examples" / "users.csv"
# States in which a card has left the production line for good (or for now).
DONE_STATES = ("active", "issued", "unassigned", "failed")
# What only a Cardline data dir holds; its log alone is enough (a process that logged
# into it, such as a test run's, but never made a store there).
DATA_DIR_MARKERS = ("cardline.db", "master.key", "logs/cardline.log")


@dataclass(frozen=True)
class DemoOptions:
    cards: int = 100
    input_csv: Path | None = None
    example: bool = False
    line: LineOptions = field(default_factory=LineOptions)
    requester: str = "demo-requester"
    approver: str = "demo-approver"


def fresh_data_dir(path: Path) -> None:
    """Empty a previous Cardline data dir; refuse to touch any other non-empty folder."""
    if path.exists() and any(path.iterdir()):
        if not any((path / marker).exists() for marker in DATA_DIR_MARKERS):
            raise ConfigurationError(
                f"{path} is not empty and is not a Cardline data dir; choose another --data-dir"
            )
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)


def run_demo(settings: Settings, options: DemoOptions, *, as_json: bool, console: Console) -> int:
    fresh_data_dir(settings.data_dir)
    paths = DataPaths(settings.data_dir)
    paths.make()
    logging_mod.configure(
        log_file=paths.logs / "cardline.log", level=settings.log_level, console_level="ERROR"
    )
    started = time.monotonic()
    # The plan first, before anything slow: a demo killed from here on is resumed by
    # `cardline run`, which generates the same input again if it was not written yet.
    generated = options.input_csv is None and not options.example
    csv_path = paths.input / "users.csv" if generated else _input_csv(options, paths)
    plan = DemoPlan(
        csv=str(csv_path),
        requester=options.requester,
        approver=options.approver,
        generate=options.cards if generated else 0,
        seed=options.line.seed or 0,
    )
    plan.write(settings.data_dir)
    report = plan.carry_out(settings, paths)
    err = Console(stderr=True)
    err.print(
        f"batch {report.batch_id}: {report.cards_requested} cards from {csv_path.name}"
        f" ({len(report.rejected)} rows rejected); approved by {options.approver}; "
        f"{options.line.stations} stations",
        highlight=False,
    )
    extra_paths = {"input CSV": str(csv_path)}
    if report.reject_report:
        extra_paths["reject report"] = str(report.reject_report)
    return _run(
        settings,
        options.line,
        as_json=as_json,
        console=console,
        started=started,
        total=report.cards_requested,
        extra_paths=extra_paths,
        batch_id=report.batch_id,
    )


PLAN_FILE = "demo-plan.json"


@dataclass(frozen=True)
class DemoPlan:
    """What the demo's own requester and approver are to do, written before they act.

    A demo killed between writing its input and approving the batch leaves the plan
    behind; ``cardline run`` carries it out again (re-importing a file already imported
    finds its batch; an approved batch is not approved twice), so a demo killed at any
    moment and resumed still produces every card.
    """

    csv: str
    requester: str
    approver: str
    generate: int = 0  # users to generate into ``csv`` (with ``seed``) if it is missing
    seed: int = 0
    done: bool = False

    def write(self, data_dir: Path) -> None:
        atomic_write(data_dir / PLAN_FILE, json.dumps(asdict(self)), mode=0o600)

    @classmethod
    def pending(cls, data_dir: Path) -> DemoPlan | None:
        path = data_dir / PLAN_FILE
        if not path.exists():
            return None
        plan = cls(**json.loads(path.read_text()))
        return None if plan.done else plan

    def carry_out(self, settings: Settings, paths: DataPaths) -> ImportReport:
        """Import and approve; the demo's data dir is its own, so its store is created
        (migrated) here, also when ``cardline run`` resumes a killed demo."""
        policy = settings.policy
        csv_path = Path(self.csv)
        if self.generate and not csv_path.exists():
            write_users_csv(csv_path, self.generate, seed=self.seed)  # atomic, deterministic
        store = open_migrated(settings)
        try:
            requester, approver = demo_principals(store, self.requester, self.approver)
            report = import_batch(
                store,
                csv_path,
                policy=policy,
                requested_by=requester,
                reject_dir=paths.rejects,
            )
            if report.batch_id is None:
                raise ConfigurationError(f"{csv_path}: no valid rows to produce")
            if policy.approval_required and _awaits_decision(store, report.batch_id):
                approve_batch(store, report.batch_id, by=approver)
        finally:
            store.dispose()
        replace(self, done=True).write(settings.data_dir)
        return report


def demo_principals(store: Store, requester: str, approver: str) -> tuple[str, str]:
    """The actors of the demo's own requester and approver principals (created on
    first use: two principals, so the four-eyes rule holds for the demo too)."""
    return (
        ensure_principal(store, requester, roles=[Role.REQUESTER], by="host:demo"),
        ensure_principal(store, approver, roles=[Role.APPROVER], by="host:demo"),
    )


def _awaits_decision(store: Store, batch_id: int) -> bool:
    with store.read() as s:
        batch = s.get(BatchOrder, batch_id)
        return batch is not None and batch.state == BatchState.REQUESTED


def seed_batch(
    settings: Settings, *, cards: int, input_csv: Path | None, example: bool, seed: int | None
) -> dict[str, object]:
    """Import and approve one batch into the configured store; run no line."""
    store = open_checked(settings)
    paths = DataPaths(settings.data_dir)
    paths.make()
    policy = settings.policy
    # A fresh seed per call, so seeding twice adds a second batch instead of finding the
    # first file again.
    seed = seed if seed is not None else time.time_ns() % 1_000_000_007
    options = DemoOptions(
        cards=cards, input_csv=input_csv, example=example, line=LineOptions(seed=seed)
    )
    csv_path = _input_csv(options, paths, name=f"users-{seed}.csv")
    requester, approver = demo_principals(store, options.requester, options.approver)
    report = import_batch(
        store, csv_path, policy=policy, requested_by=requester, reject_dir=paths.rejects
    )
    if report.batch_id is None:
        raise ConfigurationError(f"{csv_path}: no valid rows to produce")
    if policy.approval_required and not report.already_imported:
        approve_batch(store, report.batch_id, by=approver)
    store.dispose()
    return {
        "batch_id": report.batch_id,
        "cards": report.cards_requested,
        "rejected": len(report.rejected),
        "already_imported": report.already_imported,
        "input": str(csv_path),
    }


def run_line(settings: Settings, options: LineOptions, *, as_json: bool, console: Console) -> int:
    plan = DemoPlan.pending(settings.data_dir)
    if plan is not None:  # a demo killed before its batch was imported and approved
        plan.carry_out(settings, DataPaths(settings.data_dir))
    if not (settings.data_dir / "cardline.db").exists() and settings.database_url is None:
        raise ConfigurationError(
            f"{settings.data_dir} has no status store: run `cardline demo`, or"
            " `cardline db upgrade` and `cardline batch import` first"
        )
    return _run(
        settings,
        options,
        as_json=as_json,
        console=console,
        started=time.monotonic(),
        total=None,
        extra_paths={},
        batch_id=None,
    )


def _input_csv(options: DemoOptions, paths: DataPaths, *, name: str = "users.csv") -> Path:
    if options.input_csv is not None:
        return options.input_csv
    if options.example:
        return EXAMPLE_CSV
    return write_users_csv(paths.input / name, options.cards, seed=options.line.seed or 0)


def _run(
    settings: Settings,
    options: LineOptions,
    *,
    as_json: bool,
    console: Console,
    started: float,
    total: int | None,
    extra_paths: dict[str, str],
    batch_id: int | None,
) -> int:
    line = EmbeddedLine(settings, settings.policy, options)
    line.start()
    try:
        _drain_with_progress(line, total)
    finally:
        line.stop()
    elapsed = time.monotonic() - started
    summary = line.summary()
    paths = _written_paths(line.paths, settings) | extra_paths
    if as_json:
        click_safe = summary_json(summary, elapsed_s=elapsed, batch_id=batch_id, paths=paths)
        console.file.write(json.dumps(click_safe, sort_keys=True) + "\n")
    else:
        for table in summary_tables(summary, elapsed_s=elapsed):
            console.print(table)
        console.print(paths_table(paths))
    consistent = summary.audit_chain_ok and summary.drained
    return 0 if consistent else 1


def _drain_with_progress(line: EmbeddedLine, total: int | None) -> None:
    err = Console(stderr=True)
    with Progress(
        TextColumn("[bold]producing"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    ) as bar:
        task = bar.add_task("cards", total=total, detail="")

        def update(p: LineProgress) -> None:
            done = sum(p.cards.get(s, 0) for s in DONE_STATES)
            work = sum(p.cards.get(s, 0) for s in ("approved", "ready", "producing"))
            bar.update(
                task,
                completed=done,
                total=total if total is not None else done + work,
                detail=f"at stations {p.cards.get('producing', 0)}, "
                f"failed {p.cards.get('failed', 0)}",
            )

        line.wait_drained(update)


def _written_paths(paths: DataPaths, settings: Settings) -> dict[str, str]:
    return {
        "status store": make_url(settings.db_url).render_as_string(hide_password=True),
        "card faces (PNG front/back, PDF)": str(paths.faces),
        "printed cards (per station)": str(paths.printed),
        "PIN letters (PDF)": str(paths.letters),
        "CA chain": str(paths.root / "ca-chain.pem"),
        "log (JSON lines)": str(paths.logs / "cardline.log"),
    }
