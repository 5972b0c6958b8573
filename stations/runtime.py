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
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import dramatiq
import dramatiq.errors
import structlog
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from db import outbox, production
from db.engine import Store, retry_transient
from db.models import Certificate, Credential, ProductionAttempt
from db.secrets import SecretBox, context
from schemas.errors import ConflictError, DeviceFault
from schemas.messages import PRODUCE_JOB, IssueCertificate, line_queue
from schemas.policy import Policy
from schemas.states import AttemptState, CardState, CertState, CertUsage, FaultKind
from stations.drivers import AdminKeyHolder, ChipInfo, Printer, Reader, Token
from stations.faces import render_faces

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class StationConfig:
    station_id: str
    line: str = "default"
    lease_s: float = 30.0
    heartbeat_s: float = 5.0
    chip_timeout_s: float = 10.0
    cert_timeout_s: float = 60.0
    cert_resend_s: float = 5.0
    poll_s: float = 0.02
    reconnect_s: float = 1.0


@dataclass(frozen=True)
class CardJob:
    """What a station needs to know about the card it claimed (read once, at claim)."""

    credential_id: int
    attempt_id: int
    attempt_number: int
    card_number: str
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
    ) -> None:
        self.config, self.policy = config, policy
        self.printer, self.reader, self.token = printer, reader, token
        self.store, self.box, self.broker = store, box, broker
        self.faces_dir = faces_dir
        self.instance = uuid.uuid4().hex[:12]
        self.current_attempt: int | None = None
        self.produced = 0
        self.spoiled = 0
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
                except dramatiq.errors.ConnectionError as exc:
                    self._log.warning("station.broker_lost", error=str(exc))
                    stop.wait(self.config.reconnect_s)
        finally:
            with self.store.tx(audited=False) as s:
                production.heartbeat(s, self.config.station_id, status="offline")
            beat.join(timeout=1)

    def _consume(self, stop: threading.Event) -> None:
        queue = line_queue(self.config.line)
        self.broker.declare_queue(queue)
        consumer = self.broker.consume(queue, prefetch=1, timeout=200)
        try:
            while not stop.is_set():
                message = next(consumer)
                if message is None:
                    continue
                self._handle(message.args[0])
                # Acked whatever happened: the store, not the broker, remembers
                # unfinished work, and the reconciler re-drives it.
                consumer.ack(message)
        finally:
            with contextlib.suppress(Exception):  # the connection may be gone already
                consumer.close()

    def _handle(self, payload: dict[str, object]) -> None:
        try:
            job = PRODUCE_JOB.validate_python(payload)
            self.produce(job.credential_id)
        except Exception:
            # A bug or a store outage: the card (if claimed) keeps its lease until it
            # expires and the reconciler queues it again; the station carries on.
            self._log.exception("station.produce_failed", payload=payload)

    def start_up(self) -> None:
        """Register, and hand back any card a previous run of this station left behind."""
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
                with self.store.tx(audited=False) as s:
                    production.heartbeat(s, self.config.station_id)
                    if self.current_attempt is not None:
                        production.renew_lease(s, self.current_attempt, self.config.lease_s)
            except Exception:
                self._log.exception("station.heartbeat_failed")

    # --- one card -----------------------------------------------------------------

    def produce(self, credential_id: int) -> str | None:
        """Produce one card; return the card's new state, or None if it was not ours."""
        job = self._claim(credential_id)
        if job is None:
            return None
        self.current_attempt = job.attempt_id
        log_ = self._log.bind(credential_id=job.credential_id, attempt=job.attempt_number)
        try:
            chip = self._personalise(job)
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
            self._close_token()

    def _claim(self, credential_id: int) -> CardJob | None:
        # Duplicate and stale messages are common (redelivery, re-drive): a plain read
        # turns them away without queueing for the audit lock.
        with self.store.read() as s:
            cred = s.get(Credential, credential_id)
            if cred is None or cred.state != CardState.READY:
                return None

        def claim() -> CardJob | None:
            with self.store.tx() as s:
                claimed = production.claim(
                    s,
                    credential_id,
                    station_id=self.config.station_id,
                    station_instance=self.instance,
                    lease_s=self.config.lease_s,
                )
                return None if claimed is None else _card_job(s, *claimed)

        return retry_transient(claim)

    def _personalise(self, job: CardJob) -> ChipInfo:
        self.printer.feed()
        chip = self.reader.read_chip(self.config.chip_timeout_s)
        cid = job.credential_id
        self.token.initialise(
            label=job.card_number,
            so_pin=self.box.open(job.puk_sealed, context=context("credential", cid, "puk")),
            pin=self.box.open(job.pin_sealed, context=context("credential", cid, "pin")),
        )
        if job.admin_key_sealed is not None and isinstance(self.token, AdminKeyHolder):
            self.token.store_admin_key(
                self.box.open(job.admin_key_sealed, context=context("credential", cid, "admin_key"))
            )
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
        if job.escrow_key_sealed is not None and CertUsage.ENCRYPTION in certs:
            key = self.box.open(
                job.escrow_key_sealed, context=context("credential", cid, "escrow_key")
            )
            self.token.import_key(CertUsage.ENCRYPTION, key, certs[CertUsage.ENCRYPTION])
        for old in job.recovered_keys:  # key recovery: the holder's earlier keys
            key = self.box.open(
                old.key_sealed, context=context("credential", old.credential_id, "escrow_key")
            )
            self.token.import_key(CertUsage.ENCRYPTION, key, old.cert_pem, retired=True)
        self.reader.check_present()  # a card pulled mid-encode must not be printed as done
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
        self.printer.print_faces(faces)
        return chip

    def _await_certificates(
        self, job: CardJob, requests: list[IssueCertificate]
    ) -> dict[CertUsage, str]:
        """Ask the PKI worker for the certificates and wait until all are issued."""
        wanted = {r.usage for r in requests}
        if job.escrow_key_sealed is not None:
            wanted.add(CertUsage.ENCRYPTION)
        self._request(requests)
        start = time.monotonic()
        resend_at = start + self.config.cert_resend_s
        while True:
            found, live = self._issued(job)
            if not live:
                raise LostCard
            if wanted <= found.keys():
                return found
            now = time.monotonic()
            if now - start > self.config.cert_timeout_s:
                missing = ", ".join(sorted(wanted - found.keys()))
                raise DeviceFault(FaultKind.CERTIFICATE_TIMEOUT, f"no certificate for {missing}")
            if now >= resend_at:
                # The request or its message may have been lost: ask again (idempotent).
                self._request([r for r in requests if r.usage not in found])
                resend_at = now + self.config.cert_resend_s
            time.sleep(self.config.poll_s)

    def _request(self, requests: list[IssueCertificate]) -> None:
        with self.store.tx(audited=False) as s:
            outbox.add_all(s, requests)

    def _issued(self, job: CardJob) -> tuple[dict[CertUsage, str], bool]:
        with self.store.read() as s:
            attempt = s.get(ProductionAttempt, job.attempt_id)
            live = attempt is not None and attempt.state == AttemptState.IN_PROGRESS
            rows = s.scalars(
                select(Certificate).where(
                    Certificate.state == CertState.VALID,
                    or_(
                        Certificate.attempt_id == job.attempt_id,
                        (Certificate.credential_id == job.credential_id)
                        & Certificate.attempt_id.is_(None),
                    ),
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
            state = retry_transient(complete)
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
            return retry_transient(spoil)
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


def _card_job(s: Session, cred: Credential, attempt: ProductionAttempt) -> CardJob:
    if not (cred.card_number and cred.valid_until and cred.pin_sealed and cred.puk_sealed):
        raise RuntimeError(f"credential {cred.id} is ready but was never prepared")
    user = cred.user
    return CardJob(
        credential_id=cred.id,
        attempt_id=attempt.id,
        attempt_number=attempt.number,
        card_number=cred.card_number,
        holder_name=user.display_name if user else "Temporary card",
        organization=user.organization if user else "",
        org_unit=user.org_unit if user else None,
        title=user.title if user else None,
        photo=Path(user.photo_path) if user and user.photo_path else None,
        valid_until=cred.valid_until.date(),
        pin_sealed=cred.pin_sealed,
        puk_sealed=cred.puk_sealed,
        escrow_key_sealed=cred.escrow_key_sealed,
        recovered_keys=tuple(production.escrow_history(s, cred)),
        admin_key_sealed=cred.admin_key_sealed,
    )
