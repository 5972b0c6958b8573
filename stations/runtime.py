"""The station: claim one card at a time from the line's queue and produce it.

A card's life at a station: feed a blank, read the chip, personalise it (SO PIN = PUK,
user PIN), generate the authentication and signature keys on the chip, send their CSRs
to the PKI worker (through the outbox) and wait for the certificates, write them and
the escrowed encryption key, print the faces, record success, eject. Any device fault
spoils the attempt: the card goes to the reject bin and is queued again on a new blank.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import dramatiq
import dramatiq.errors
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from db import attention, line_control, outbox, production, wakeups
from db.engine import Store, is_transient
from db.models import Certificate, Credential, ProductionAttempt
from db.secrets import Secret, SecretBox, context
from schemas.errors import ConflictError, DeviceFault, StateConflict
from schemas.messages import PRODUCE_JOB, IssueCertificate, line_queue
from schemas.policy import Policy
from schemas.states import AttemptState, CardState, CertState, CertUsage, FaultKind
from stations.desk import UpdateDesk
from stations.drivers import AdminKeyHolder, CardFaces, ChipInfo, Printer, Reader, Token
from stations.faces import render_faces

log = structlog.get_logger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class StationConfig:
    station_id: str
    line: str = "default"
    lease_s: float = 30.0
    heartbeat_s: float = 5.0
    chip_timeout_s: float = 10.0
    # Certificates later than this: the station shows ``waiting_for_pki`` and keeps the
    # card, re-sending its requests with backoff; only after ``server_wait_s`` of
    # waiting for the server (PKI or store) is the blank given up.
    cert_timeout_s: float = 60.0
    cert_resend_s: float = 5.0
    server_wait_s: float = 1800.0
    # The longest a wait for certificates sleeps without being woken (db.wakeups): a
    # wake-up lost, or SQLite shared by several processes, costs at most this.
    poll_s: float = 1.0
    reconnect_s: float = 1.0


@dataclass(frozen=True)
class CardJob:
    """What a station needs to know about the card it claimed (read once, at claim)."""

    credential_id: int
    attempt_id: int
    attempt_number: int
    prepared: bool
    card_number: str
    line: str
    holder_name: str
    organization: str
    org_unit: str | None
    title: str | None
    photo: Path | None
    valid_until: dt.date
    pin_sealed: str
    puk_sealed: str
    escrow_key_sealed: str | None
    recovered_keys: tuple[production.EscrowedKey, ...] = ()
    admin_key_sealed: str | None = None


class LostCard(Exception):
    """The attempt was taken from this station (its lease expired); stop working on it."""


class ServerAway(Exception):
    """The store stayed unreachable for longer than ``server_wait_s``."""


class NotFinishable(Exception):
    """The card cannot be finished for a reason of its own data (found before a blank
    is fed): it is flagged as needing attention and no blank is used."""


# What a station is doing, as ``cardline status`` shows it.
IDLE, BUSY, WAITING_FOR_PKI, WAITING_FOR_STORE, OFFLINE, PAUSED, UPDATING = (
    "idle",
    "busy",
    "waiting_for_pki",
    "waiting_for_store",
    "offline",
    "paused",
    "updating",  # applying a hand-inserted card's pending updates (StationEntry.updates)
)


@dataclass(frozen=True)
class Opened:
    """The card's secrets, opened before a blank is fed (a value that no longer opens
    must cost no blank), and its faces, rendered before a blank is fed too."""

    pin: Secret
    puk: Secret
    admin_key: Secret | None
    escrow_key: Secret | None
    escrow_cert: str | None
    recovered: tuple[tuple[Secret, str], ...]
    faces: CardFaces


class Station:
    def __init__(
        self,
        config: StationConfig,
        *,
        printer: Printer,
        reader: Reader,
        token: Token,
        store: Store,
        box: SecretBox,
        policy: Policy,
        broker: dramatiq.Broker,
        faces_dir: Path,
        desk: UpdateDesk | None = None,
    ) -> None:
        self.config, self.policy = config, policy
        # With a desk on the same reader and token, the encoder also applies pending
        # updates to a produced card put in by hand between print jobs.
        self.desk = desk
        self.printer, self.reader, self.token = printer, reader, token
        self.store, self.box, self.broker = store, box, broker
        self.faces_dir = faces_dir
        self.instance = uuid.uuid4().hex[:12]
        self.current_attempt: int | None = None
        self.status = IDLE
        self.produced = 0
        self.spoiled = 0
        self.not_finishable = 0
        self._pause_checked = -1e9  # monotonic time of the last look at the pause flags
        self._log = log.bind(station=config.station_id)

    # --- the loop ---------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Consume the line's queue until ``stop`` is set; finish the card in hand first.

        A lost broker connection is not fatal: the station waits and reconnects, and any
        message it held unacknowledged is redelivered (a no-op if the card moved on).
        """
        self.start_up()
        beat = threading.Thread(
            target=self._heartbeat,
            args=(stop,),
            daemon=True,
            name=f"{self.config.station_id}-heartbeat",
        )
        beat.start()
        try:
            while not stop.is_set():
                try:
                    self._consume(stop)
                except dramatiq.errors.BrokerConnectionError as exc:
                    self._log.warning("station.broker_lost", error=str(exc))
                    stop.wait(self.config.reconnect_s)
        finally:
            self.status = OFFLINE
            # The store may be away as we stop.
            with contextlib.suppress(DBAPIError), self.store.tx(audited=False) as s:
                production.heartbeat(s, self.config.station_id, status=OFFLINE)
            beat.join(timeout=1)

    def _consume(self, stop: threading.Event) -> None:
        queue = line_queue(self.config.line)
        self.broker.declare_queue(queue)
        consumer = self.broker.consume(queue, prefetch=1, timeout=200)
        try:
            while not stop.is_set():
                # A paused station (or line) takes nothing from its queue; a message
                # taken just before the pause is held until it is resumed.
                if self._wait_while_paused(stop):
                    continue
                message = next(consumer)
                if message is None:
                    if self.desk is not None:
                        self._serve_inserted()
                    continue
                while self._wait_while_paused(stop, fresh=True) and not stop.is_set():
                    pass
                if stop.is_set():
                    break  # not acked: the broker (or the reconciler) gives it to another
                self._handle(message.args[0])
                # Acked whatever happened: the store, not the broker, remembers
                # unfinished work, and the reconciler re-drives it.
                consumer.ack(message)
        finally:
            with contextlib.suppress(Exception):  # the connection may be gone already
                consumer.close()

    def _serve_inserted(self) -> None:
        """Apply the pending updates of a produced card put in the encoder by hand."""
        read = getattr(self.reader, "read_inserted", None)
        if read is None or self.desk is None:
            return
        try:
            chip = read(0.05)
        except DeviceFault:
            return  # none
        self.status = UPDATING
        try:
            done = self.desk.serve(chip)
            self._log.info("station.updates_applied", updates=[state for _, state in done])
        except DBAPIError as exc:
            if not is_transient(exc):
                raise
            self._log.warning("station.store_away_during_update")
        finally:
            self.status = IDLE

    def _paused(self) -> bool:
        with self.store.read() as s:
            held = line_control.pause_of(
                s, station_id=self.config.station_id, line=self.config.line
            )
            return held is not None

    def _wait_while_paused(self, stop: threading.Event, *, fresh: bool = False) -> bool:
        """True (after waiting ``poll_s``) while the station or its line is paused: it
        shows ``paused`` and takes no card; False at once when it is not. An idle
        station asks the store at most once per ``poll_s`` (``fresh``: now, as before
        taking a card; the store refuses a paused station's claim anyway)."""
        now = time.monotonic()
        if not fresh and self.status != PAUSED and now - self._pause_checked < self.config.poll_s:
            return False
        self._pause_checked = now
        try:
            paused = self._with_store(self._paused, deadline=None)
        except Exception:
            self._log.exception("station.pause_check_failed")
            paused = False
        if not paused:
            if self.status == PAUSED:
                self.status = IDLE
                self._log.info("station.resumed")
                with contextlib.suppress(DBAPIError):
                    self._beat()
            return False
        if self.status != PAUSED:
            self.status = PAUSED
            self._log.info("station.paused")
            with contextlib.suppress(DBAPIError):
                self._beat()  # show it now, not at the next heartbeat
        stop.wait(self.config.poll_s)
        return True

    def _next_card(self, credential_id: int) -> int:
        """The card to produce for a message about ``credential_id``: the highest
        priority ready card of the line (``db.line_control``), that one when equal."""
        with self.store.read() as s:
            found = line_control.next_card(s, self.config.line, preferred=credential_id)
        return credential_id if found is None else found

    def _handle(self, payload: dict[str, object]) -> None:
        try:
            job = PRODUCE_JOB.validate_python(payload)
            # A lost race for the picked card: pick again (another card may be ready).
            for _ in range(3):
                pick = functools.partial(self._next_card, job.credential_id)
                picked = self._with_store(pick, deadline=None)
                if self.produce(picked) is not None or picked == job.credential_id:
                    break
        except Exception:
            # A bug or a store outage: the card (if claimed) keeps its lease until it
            # expires and the reconciler queues it again; the station carries on.
            self._log.exception("station.produce_failed", payload=payload)

    def start_up(self) -> None:
        """Register, and hand back any card a previous run of this station left behind."""
        self._with_store(self._register, deadline=None)

    def _register(self) -> None:
        with self.store.tx() as s:
            production.register_station(
                s, self.config.station_id, line=self.config.line, instance=self.instance
            )
            for attempt in production.live_attempts_of(s, self.config.station_id):
                production.spoil(
                    s,
                    attempt,
                    fault=FaultKind.STATION_RESTART,
                    detail="station restarted with this card in it",
                    actor=f"station:{self.config.station_id}",
                    max_attempts=self.policy.max_attempts,
                )
                self._log.warning("station.recovered_attempt", attempt_id=attempt.id)

    def _heartbeat(self, stop: threading.Event) -> None:
        while not stop.wait(self.config.heartbeat_s):
            try:
                self._beat()
            except DBAPIError as exc:
                if not is_transient(exc):
                    self._log.exception("station.heartbeat_failed")
            except Exception:
                self._log.exception("station.heartbeat_failed")

    def _beat(self) -> None:
        """Heartbeat with the station's status, and renew the lease of the card in hand."""
        with self.store.tx(audited=False) as s:
            production.heartbeat(s, self.config.station_id, status=self.status)
            if self.current_attempt is not None:
                production.renew_lease(s, self.current_attempt, self.config.lease_s)

    def _with_store(self, fn: Callable[[], T], *, deadline: float | None) -> T:
        """Run ``fn`` (whole transactions), waiting out a store outage: the station shows
        ``waiting_for_store`` and retries with backoff; past ``deadline``, ServerAway.
        Any other error (including a lost race) goes to the caller."""
        delay, waited = 0.1, False
        before = self.status
        while True:
            try:
                result = fn()
            except DBAPIError as exc:
                if not is_transient(exc):
                    raise
                if deadline is not None and time.monotonic() > deadline:
                    raise ServerAway(str(exc).splitlines()[0]) from exc
                if not waited:
                    self._log.warning("station.waiting_for_store", error=str(exc).splitlines()[0])
                    waited = True
                self.status = WAITING_FOR_STORE
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if waited:
                self.status = before
                self._log.info("station.store_back")
                # Renew the lease at once: it may have run out while the store was away
                # (the reconciler gives stations a grace period for exactly this).
                with contextlib.suppress(DBAPIError):
                    self._beat()
            return result

    # --- one card -----------------------------------------------------------------

    def produce(self, credential_id: int) -> str | None:
        """Produce one card; return the card's new state, or None if it was not ours.

        Everything that can be checked without a blank is checked first (the card is
        prepared, its escrowed key certified, its secrets open, its faces render); a
        card that fails one of those is flagged as needing attention and no blank is fed.
        """
        job = self._with_store(lambda: self._read_job(credential_id), deadline=None)
        if job is None:
            return None
        try:
            opened = self._open(job)
        except NotFinishable as exc:
            self._needs_attention(job, str(exc))
            return None
        claimed = self._claim(job)
        if claimed is None:
            return None
        job = claimed
        self.current_attempt = job.attempt_id
        self.status = BUSY
        log_ = self._log.bind(credential_id=job.credential_id, attempt=job.attempt_number)
        try:
            chip = self._personalise(job, opened)
            return self._finish(job, chip)
        except DeviceFault as fault:
            log_.warning("station.fault", kind=fault.kind, code=fault.code, detail=fault.detail)
            return self._spoil(job, fault.kind, str(fault))
        except LostCard:
            log_.warning("station.lost_card")
            self._eject(reject=True)
            return None
        finally:
            self.current_attempt = None
            self.status = IDLE
            self._close_token()

    def _read_job(self, credential_id: int) -> CardJob | None:
        # Duplicate and stale messages are common (redelivery, re-drive): a plain read
        # turns them away without queueing for the audit lock.
        with self.store.read() as s:
            cred = s.get(Credential, credential_id)
            if cred is None or cred.state != CardState.READY:
                return None
            if attention.is_open(s, entity="credential", entity_id=credential_id):
                return None
            return _card_job(s, cred)

    def _open(self, job: CardJob) -> Opened:
        cid = job.credential_id
        if not job.prepared:
            raise NotFinishable("card is ready but was never prepared")
        escrow_cert: str | None = None
        if job.escrow_key_sealed is not None:
            escrow_cert = self._with_store(lambda: self._escrow_cert(cid), deadline=None)
            if escrow_cert is None:
                raise NotFinishable("escrowed key has no valid certificate")

        def unseal(sealed: str, owner: int, what: str) -> Secret:
            try:
                return self.box.open(sealed, context=context("credential", owner, what))
            except Exception as exc:
                raise NotFinishable(f"sealed {what} does not open ({type(exc).__name__})") from exc

        try:
            faces = render_faces(
                self.faces_dir,
                card_number=job.card_number,
                holder_name=job.holder_name,
                organization=job.organization,
                org_unit=job.org_unit,
                title=job.title,
                valid_until=job.valid_until,
                photo_path=job.photo,
            )
        except (OSError, ValueError) as exc:
            raise NotFinishable(f"card faces cannot be rendered: {exc}") from exc
        return Opened(
            pin=unseal(job.pin_sealed, cid, "pin"),
            puk=unseal(job.puk_sealed, cid, "puk"),
            admin_key=None
            if job.admin_key_sealed is None
            else unseal(job.admin_key_sealed, cid, "admin_key"),
            escrow_key=None
            if job.escrow_key_sealed is None
            else unseal(job.escrow_key_sealed, cid, "escrow_key"),
            escrow_cert=escrow_cert,
            recovered=tuple(
                (unseal(old.key_sealed, old.credential_id, "escrow_key"), old.cert_pem)
                for old in job.recovered_keys
            ),
            faces=faces,
        )

    def _escrow_cert(self, credential_id: int) -> str | None:
        with self.store.read() as s:
            return s.scalar(
                select(Certificate.pem).where(
                    Certificate.credential_id == credential_id,
                    Certificate.attempt_id.is_(None),
                    Certificate.usage == CertUsage.ENCRYPTION,
                    Certificate.state == CertState.VALID,
                )
            )

    def _needs_attention(self, job: CardJob, reason: str) -> None:
        self.not_finishable += 1
        self._log.error(
            "station.card_needs_attention", credential_id=job.credential_id, reason=reason
        )

        def flag() -> None:
            with self.store.tx(audited=False) as s:
                attention.flag(
                    s,
                    entity="credential",
                    entity_id=job.credential_id,
                    wait="card ready",
                    reason=reason,
                    actor=f"station:{self.config.station_id}",
                )

        self._with_store(flag, deadline=None)

    def _claim(self, job: CardJob) -> CardJob | None:
        def claim() -> CardJob | None:
            with self.store.tx() as s:
                claimed = production.claim(
                    s,
                    job.credential_id,
                    station_id=self.config.station_id,
                    station_instance=self.instance,
                    lease_s=self.config.lease_s,
                )
                if claimed is None:
                    return None
                _, attempt = claimed
                return replace(job, attempt_id=attempt.id, attempt_number=attempt.number)

        try:
            return self._with_store(claim, deadline=None)
        except StateConflict as exc:
            # This station still has a live attempt (a card an earlier error left behind):
            # no new blank until it is spoiled (restart, or the reconciler after its lease).
            self._log.warning(
                "station.claim_refused", credential_id=job.credential_id, detail=exc.detail
            )
            return None

    def _personalise(self, job: CardJob, opened: Opened) -> ChipInfo:
        self.printer.feed()
        chip = self.reader.read_chip(self.config.chip_timeout_s)
        cid = job.credential_id
        self.token.initialise(label=job.card_number, so_pin=opened.puk, pin=opened.pin)
        if opened.admin_key is not None and isinstance(self.token, AdminKeyHolder):
            self.token.store_admin_key(opened.admin_key)
        keys: dict[CertUsage, str] = {}
        requests: list[IssueCertificate] = []
        for usage in self.policy.on_card_usages:
            key_id = self.token.generate_key(usage, self.policy.card_key_type)
            keys[usage] = key_id
            csr = self.token.make_csr(key_id, f"{job.card_number} {usage}")
            requests.append(
                IssueCertificate(
                    credential_id=cid, attempt_id=job.attempt_id, usage=usage, csr_pem=csr
                )
            )
        certs = self._await_certificates(job, requests)
        for usage, key_id in keys.items():
            self.token.write_certificate(key_id, usage, certs[usage])
        if opened.escrow_key is not None and opened.escrow_cert is not None:
            self.token.import_key(CertUsage.ENCRYPTION, opened.escrow_key, opened.escrow_cert)
        for key, cert_pem in opened.recovered:  # key recovery: the holder's earlier keys
            self.token.import_key(CertUsage.ENCRYPTION, key, cert_pem, retired=True)
        self.reader.check_present()  # a card pulled mid-encode must not be printed as done
        self.printer.print_faces(opened.faces)
        return chip

    def _await_certificates(
        self, job: CardJob, requests: list[IssueCertificate]
    ) -> dict[CertUsage, str]:
        """Ask the PKI worker for the on-chip keys' certificates and wait until all are
        issued. The card stays in the encoder while the PKI worker, the broker or the
        store is away: the station re-sends (idempotently, with backoff) and shows
        ``waiting_for_pki`` or ``waiting_for_store``; only after ``server_wait_s`` does
        it give the blank up."""
        wanted = {r.usage for r in requests}
        by_usage = {r.usage: r.csr_pem for r in requests}
        start = time.monotonic()
        deadline = start + self.config.server_wait_s
        with wakeups.waiting(self.store, "certificates", job.attempt_id) as woken:
            self._with_store(lambda: self._request(requests), deadline=deadline)
            resend_every = self.config.cert_resend_s
            resend_at = start + resend_every
            while True:
                try:
                    found, live = self._with_store(lambda: self._issued(job), deadline=deadline)
                except ServerAway as exc:
                    raise DeviceFault(FaultKind.CERTIFICATE_TIMEOUT, f"store away: {exc}") from exc
                if not live:
                    raise LostCard
                wrong = {u: pem for u, pem in found.items() if not _fits(by_usage[u], pem)}
                if wrong:
                    # A certificate that does not fit the key on the chip (a stray answer):
                    # writing it would fail on the chip and cost the blank. Revoke it and ask
                    # again; the blank stays good.
                    self._with_store(lambda: self._revoke_misfits(job, wrong), deadline=deadline)  # noqa: B023  # called at once
                    found = {u: pem for u, pem in found.items() if u not in wrong}
                    resend_at = 0.0
                if wanted <= found.keys():
                    if self.status == WAITING_FOR_PKI:
                        self._log.info(
                            "station.pki_back", waited_s=round(time.monotonic() - start, 1)
                        )
                    self.status = BUSY
                    return found
                now = time.monotonic()
                missing = sorted(wanted - found.keys())
                if now > deadline:
                    waited = f"{self.config.server_wait_s:g} s"
                    raise DeviceFault(
                        FaultKind.CERTIFICATE_TIMEOUT,
                        f"no certificate for {', '.join(missing)} in {waited}",
                    )
                if now - start > self.config.cert_timeout_s and self.status != WAITING_FOR_PKI:
                    self.status = WAITING_FOR_PKI
                    self._log.warning("station.waiting_for_pki", missing=missing)
                    with contextlib.suppress(DBAPIError):
                        self._beat()  # show it now, not at the next heartbeat
                if now >= resend_at:
                    # The request or its message may have been lost: ask again (idempotent).
                    again = [r for r in requests if r.usage not in found]
                    with contextlib.suppress(ServerAway):
                        self._with_store(lambda: self._request(again), deadline=deadline)  # noqa: B023  # called at once
                    resend_every = min(resend_every * 2, 30.0)
                    resend_at = now + resend_every
                # Woken when the pki worker stores a certificate (db.wakeups); looks again
                # anyway after poll_s, or sooner when a re-send or the deadline is due.
                now = time.monotonic()
                woken.wait(max(0.0, min(self.config.poll_s, resend_at - now, deadline - now)))

    def _request(self, requests: list[IssueCertificate]) -> None:
        with self.store.tx(audited=False) as s:
            outbox.add_all(s, requests)

    def _revoke_misfits(self, job: CardJob, wrong: dict[CertUsage, str]) -> None:
        with self.store.tx() as s:
            rows = s.scalars(
                select(Certificate).where(
                    Certificate.attempt_id == job.attempt_id,
                    Certificate.usage.in_([str(u) for u in wrong]),
                    Certificate.state == CertState.VALID,
                )
            ).all()
            production.revoke_all(
                s,
                rows,
                actor=f"station:{self.config.station_id}",
                reason="certificate does not fit the key on the chip",
            )
        self._log.warning("station.certificate_misfit", usages=sorted(wrong))

    def _issued(self, job: CardJob) -> tuple[dict[CertUsage, str], bool]:
        with self.store.read() as s:
            attempt = s.get(ProductionAttempt, job.attempt_id)
            live = attempt is not None and attempt.state == AttemptState.IN_PROGRESS
            rows = s.scalars(
                select(Certificate).where(
                    Certificate.state == CertState.VALID, Certificate.attempt_id == job.attempt_id
                )
            ).all()
            return {CertUsage(r.usage): r.pem for r in rows}, live

    def _finish(self, job: CardJob, chip: ChipInfo) -> str:
        def complete() -> str:
            with self.store.tx() as s:
                attempt = s.get(ProductionAttempt, job.attempt_id, with_for_update=True)
                assert attempt is not None
                cred = production.complete(
                    s, attempt, chip_serial=chip.serial, activation_step=self.policy.activation_step
                )
                return cred.state

        try:
            # The card is encoded and printed: wait for the store as long as it takes
            # to record that, rather than throw the finished card away.
            state = self._with_store(complete, deadline=None)
        except ConflictError as exc:
            raise LostCard from exc
        self._eject(reject=False)
        self.produced += 1
        self._log.info(
            "station.card_done",
            credential_id=job.credential_id,
            state=state,
            card_number=job.card_number,
        )
        return state

    def _spoil(self, job: CardJob, fault: str, detail: str) -> str | None:
        self._eject(reject=True)
        self.spoiled += 1

        def spoil() -> str:
            with self.store.tx() as s:
                attempt = s.get(ProductionAttempt, job.attempt_id, with_for_update=True)
                assert attempt is not None
                return production.spoil(
                    s,
                    attempt,
                    fault=fault,
                    detail=detail,
                    actor=f"station:{self.config.station_id}",
                    max_attempts=self.policy.max_attempts,
                )

        try:
            return self._with_store(spoil, deadline=None)
        except ConflictError:
            return None  # the reconciler spoiled it first

    def _eject(self, *, reject: bool) -> None:
        try:
            self.printer.eject(reject=reject)
        except DeviceFault as fault:
            # The card is stuck in the printer: an operator clears it. The books are
            # already right (the attempt row says where the blank went).
            self._log.error("station.eject_failed", kind=fault.kind, code=fault.code)

    def _close_token(self) -> None:
        try:
            self.token.close()
        except DeviceFault as fault:
            self._log.warning("station.token_close_failed", code=fault.code)


def _fits(csr_pem: str, cert_pem: str) -> bool:
    """The certificate certifies the key the CSR was made with."""
    csr = x509.load_pem_x509_csr(csr_pem.encode())
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    return bool(
        csr.public_key().public_bytes(der, spki) == cert.public_key().public_bytes(der, spki)
    )


def _card_job(s: Session, cred: Credential) -> CardJob:
    """What the station needs of a ``ready`` card, read before it is claimed."""
    prepared = bool(cred.card_number and cred.valid_until and cred.pin_sealed and cred.puk_sealed)
    user = cred.user
    now = dt.datetime.now(dt.UTC)
    return CardJob(
        credential_id=cred.id,
        attempt_id=0,  # set at claim
        attempt_number=0,
        prepared=prepared,
        card_number=cred.card_number or f"unprepared-{cred.id}",
        line=cred.line,
        holder_name=user.display_name if user else "Temporary card",
        organization=user.organization if user else "",
        org_unit=user.org_unit if user else None,
        title=user.title if user else None,
        photo=Path(user.photo_path) if user and user.photo_path else None,
        valid_until=(cred.valid_until or now).date(),
        pin_sealed=cred.pin_sealed or "",
        puk_sealed=cred.puk_sealed or "",
        escrow_key_sealed=cred.escrow_key_sealed,
        recovered_keys=tuple(production.escrow_history(s, cred)),
        admin_key_sealed=cred.admin_key_sealed,
    )
