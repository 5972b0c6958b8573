"""The embedded line: relay, workers and simulated stations as threads of one process.

It starts from whatever the store says (``redrive(everything=True)``): an in-process
broker starts empty, so every pending job is published again, and each station hands
back the card a killed run left in it. That is how ``cardline run`` resumes a crash.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import dramatiq
import structlog

from db import updates
from db.checkpoints import CheckpointKey
from db.engine import Store
from db.files import atomic_write
from db.secrets import SecretBox
from db.summary import LineSummary, blocked_in_production, progress, summarise, waiting_for_bureau
from ops.config import Settings
from ops.store import open_checked
from schemas.policy import Policy
from schemas.states import IN_PRODUCTION
from stations.chips import SimChipStore
from stations.desk import DeskConfig, UpdateDesk, sim_holders
from stations.runtime import Station, StationConfig
from stations.sim import make_sim_desk, make_sim_drivers
from workers import actors
from workers.broker import WORKER_QUEUES, make_broker
from workers.ca import CertificateAuthority
from workers.context import WorkerContext
from workers.relay import Relay, StallPolicy, redrive

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class LineOptions:
    stations: int = 4
    time_scale: float = 0.01
    fault_rate: float = 0.0
    seed: int | None = None
    worker_threads: int = 4
    # How long an idle worker thread waits for a message before it looks at the stop
    # flag: stopping the line takes about twice this (dramatiq's default is 1000 ms).
    worker_timeout_ms: int = 100
    line: str = "default"
    lease_s: float = 30.0
    cert_resend_s: float = 5.0
    stall: StallPolicy = field(default_factory=StallPolicy)
    # The simulated holders bring cards with pending updates to the line's desk.
    desk: bool = True
    # The stations' encoders also apply the updates of cards put in them by hand.
    station_updates: bool = False


@dataclass(frozen=True)
class Progress:
    cards: dict[str, int]
    outbox_unsent: int
    letters_pending: int
    elapsed_s: float


@dataclass
class DataPaths:
    root: Path
    faces: Path = field(init=False)
    printed: Path = field(init=False)
    letters: Path = field(init=False)
    ca: Path = field(init=False)
    rejects: Path = field(init=False)
    crl: Path = field(init=False)
    logs: Path = field(init=False)
    softtokens: Path = field(init=False)
    input: Path = field(init=False)
    chips: Path = field(init=False)

    def __post_init__(self) -> None:
        self.faces = self.root / "faces"
        self.printed = self.root / "printed"
        self.letters = self.root / "letters"
        self.ca = self.root / "ca"
        self.rejects = self.root / "rejects"
        self.crl = self.root / "crl"
        self.logs = self.root / "logs"
        self.softtokens = self.root / "softtokens"
        self.input = self.root / "input"
        # The simulated chips of produced cards, sealed (stations.chips).
        self.chips = self.root / "chips"

    def make(self) -> None:
        """The data dir and its folders, each the owner's alone (0700): they hold
        personal data, PIN letters and key material. An existing folder is tightened."""
        for path in (
            self.root,
            self.faces,
            self.printed,
            self.letters,
            self.ca,
            self.rejects,
            self.logs,
            self.crl,
            self.softtokens,
            self.input,
            self.chips,
        ):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            path.chmod(0o700)


def worker_context(
    settings: Settings, store: Store, box: SecretBox, *, policy: Policy | None = None
) -> WorkerContext:
    """What the prepare, pki and notify actors need; the CA is created on first use."""
    paths = DataPaths(settings.data_dir)
    paths.make()
    pki = settings.pki
    ca = CertificateAuthority.load_or_create(paths.ca, box, pki, pin=settings.ca_secret_pin())
    return WorkerContext(
        store=store,
        box=box,
        policy=policy or settings.policy,
        ca=ca,
        letters_dir=paths.letters,
        crl_dir=paths.crl,
        pki=pki,
        softtokens_dir=paths.softtokens,
        mailer=settings.mailer(),
    )


class EmbeddedLine:
    """Everything of a production line in one process, until ``stop()``."""

    def __init__(self, settings: Settings, policy: Policy, options: LineOptions) -> None:
        self.settings, self.policy, self.options = settings, policy, options
        self.paths = DataPaths(settings.data_dir)
        self.paths.make()
        self.store = open_checked(settings)
        self.box: SecretBox = settings.secret_box()
        self.broker = make_broker(settings.broker_url)
        ctx = worker_context(settings, self.store, self.box, policy=policy)
        atomic_write(self.paths.root / "ca-chain.pem", ctx.ca.chain_pem())
        actors.register(self.broker, ctx)
        self.worker = dramatiq.Worker(
            self.broker,
            queues=set(WORKER_QUEUES),
            worker_threads=options.worker_threads,
            worker_timeout=options.worker_timeout_ms,
        )
        self.relay = Relay(
            self.store,
            self.broker,
            policy,
            mail=settings.mailer() is not None,
            stall=options.stall,
            checkpoint_key=CheckpointKey.from_box(self.box),
        )
        self.chips = SimChipStore(self.paths.chips, self.box)
        self.stations = [self._station(i) for i in range(options.stations)]
        self.desk_reader, desk_token = make_sim_desk(
            time_scale=options.time_scale, seed=options.seed, chips=self.chips
        )
        # The line's update desk: its simulated holders bring every card with a pending
        # update (a renewal) to it, so the line drains updates as it drains production.
        self.desk = UpdateDesk(
            self.store,
            self.box,
            DeskConfig(station_id="DESK1", cert_resend_s=options.cert_resend_s),
            self.desk_reader,
            desk_token,
            policy,
        )
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _station(self, index: int) -> Station:
        station_id = f"ST{index + 1}"
        seed = None if self.options.seed is None else self.options.seed + index
        printer, reader, token = make_sim_drivers(
            time_scale=self.options.time_scale,
            fault_rate=self.options.fault_rate,
            seed=seed,
            output_dir=self.paths.printed / station_id,
            chips=self.chips,
        )
        desk = (
            UpdateDesk(
                self.store,
                self.box,
                DeskConfig(station_id=station_id, cert_resend_s=self.options.cert_resend_s),
                reader,
                token,
                self.policy,
            )
            if self.options.station_updates
            else None
        )
        return Station(
            StationConfig(
                station_id=station_id,
                line=self.options.line,
                lease_s=self.options.lease_s,
                cert_resend_s=self.options.cert_resend_s,
            ),
            printer=printer,
            reader=reader,
            token=token,
            store=self.store,
            box=self.box,
            policy=self.policy,
            broker=self.broker,
            faces_dir=self.paths.faces,
            desk=desk,
        )

    def start(self) -> None:
        redrive(
            self.store,
            self.relay.stall,
            everything=True,
            policy=self.policy,
            mail=self.relay.mail,
        )
        self.worker.start()
        targets: list[tuple[str, Callable[[threading.Event], None]]] = [("relay", self.relay.run)]
        targets += [(s.config.station_id, s.run) for s in self.stations]
        if self.options.desk:
            targets.append(("DESK1", self._holders))
        for name, target in targets:
            thread = threading.Thread(target=target, args=(self._stop,), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def _holders(self, stop: threading.Event) -> None:
        sim_holders(self.desk, self.desk_reader, stop)

    def wait_drained(
        self,
        on_progress: Callable[[Progress], None] | None = None,
        *,
        poll_s: float = 0.1,
        timeout_s: float | None = None,
    ) -> bool:
        """Block until no card waits for the line; False if ``timeout_s`` ran out."""
        start = time.monotonic()
        quiet = 0
        while True:
            with self.store.read() as s:
                cards, unsent, letters = progress(s)
                blocked = blocked_in_production(s) + waiting_for_bureau(s, self.policy.bureau_lines)
                waiting_updates = self.options.desk and bool(updates.card_with_pending(s, limit=1))
            elapsed = time.monotonic() - start
            if on_progress:
                on_progress(Progress(cards, unsent, letters, elapsed))
            # A card waiting for a person (needs attention) does not keep the line running.
            in_production = sum(cards.get(k, 0) for k in IN_PRODUCTION) - blocked
            # Two quiet polls in a row: a message published between reads cannot fool us.
            idle = in_production == 0 and unsent == 0 and letters == 0 and not waiting_updates
            quiet = quiet + 1 if idle else 0
            if quiet >= 2:
                return True
            if timeout_s is not None and elapsed > timeout_s:
                return False
            time.sleep(poll_s)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        self.worker.stop(timeout=10_000)
        self.broker.close()

    def summary(self) -> LineSummary:
        with self.store.read() as s:
            return summarise(s, checkpoint_key=self.relay.checkpoint_key)
