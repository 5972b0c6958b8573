"""The update desk: a reader and the card's middleware, no printer (issue 13).

A holder inserts a card already produced. The desk reads its chip serial, finds the
card and every update pending for it (``db.updates``), and applies them in order
without anyone choosing anything (seed 003: pending updates applied automatically).

A renewal, step by step, each recorded in the update's journal before the next:

1. new key pairs generated on the chip beside the old ones, their CSRs made there
   (journal: ``keys``, ``csrs``); keys a killed desk made but never recorded are
   deleted first;
2. the certificates asked of the PKI worker (through the outbox, re-sent while they
   are missing) and waited for;
3. written to the chip beside their keys and read back; only then does the store mark
   them on the chip (journal: ``written``);
4. the old keys and certificates deleted from the chip, listed again to be sure
   (journal: ``erased``);
5. one transaction: the update ``applied``, the old certificates off the chip and
   revoked (superseded), a CRL asked for.

So the chip always carries the old credentials, the new ones, or both, never neither,
and a card pulled or a desk killed at any point resumes at the next insertion with the
first step not yet recorded; every step checks the chip first, so none is done twice.
A fault of the chip fails the update (the old credentials stay in force); an outage of
the store or the PKI worker only postpones it: the update goes back to ``pending``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from db import keys, outbox, production, updates, wakeups
from db.engine import Store, is_transient
from db.models import CardUpdate, Certificate, Credential
from db.secrets import Secret, SecretBox, context, random_digits
from schemas.errors import ConflictError, DeviceFault
from schemas.messages import IssueCertificate
from schemas.policy import Policy
from schemas.states import CertState, CertUsage, FaultKind, UpdateKind
from stations.drivers import AdminKeyHolder, ChipInfo
from stations.sim import TokenObject

log = structlog.get_logger(__name__)


class DeskReader(Protocol):
    def read_chip(self, timeout_s: float) -> ChipInfo: ...

    def check_present(self) -> None: ...


class DeskToken(Protocol):
    """What a desk needs of the card's middleware."""

    def open_card(self, serial: str, pin: Secret, *, card_number: str | None = None) -> None: ...

    def initialise(self, *, label: str, so_pin: Secret, pin: Secret) -> None: ...

    def generate_key(self, usage: CertUsage, key_type: str, *, keep_old: bool = False) -> str: ...

    def make_csr(self, key_id: str, common_name: str) -> str: ...

    def write_certificate(self, key_id: str, usage: CertUsage, cert_pem: str) -> None: ...

    def delete_key(self, key_id: str) -> None: ...

    def unblock(self, puk: Secret, new_pin: Secret) -> None: ...

    def change_puk(self, puk: Secret, new_puk: Secret) -> None: ...

    def import_key(
        self, usage: CertUsage, key_pem: Secret, cert_pem: str, *, retired: bool = False
    ) -> str: ...

    def objects(self) -> tuple[TokenObject, ...]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class DeskConfig:
    station_id: str
    lease_s: float = 120.0
    # Waiting for the PKI worker or the store longer than this postpones the update
    # (back to pending, journal kept); it never fails it.
    server_wait_s: float = 120.0
    cert_resend_s: float = 5.0
    poll_s: float = 1.0  # the longest a wait sleeps without a wake-up (db.wakeups)
    insert_timeout_s: float = 1.0
    heartbeat_s: float = 5.0


class Postponed(Exception):
    """The server side did not answer in time: the update waits for the next insertion."""


class UpdateDesk:
    def __init__(
        self,
        store: Store,
        box: SecretBox,
        config: DeskConfig,
        reader: DeskReader,
        token: DeskToken,
        policy: Policy,
    ) -> None:
        self.store = store
        self.box = box
        self.config = config
        self.reader = reader
        self.token = token
        self.policy = policy
        self.applied = 0
        self.failed = 0
        self.postponed = 0
        self.status = "idle"  # "updating" while a card's updates are being applied
        self._log = log.bind(station_id=config.station_id)

    @property
    def _actor(self) -> str:
        return f"station:{self.config.station_id}"

    def run(
        self, stop: threading.Event, *, line: str = "default", holders: HolderReader | None = None
    ) -> None:
        """Serve every card inserted until ``stop``: register the desk in the stations
        table, heartbeat, and apply each inserted card's pending updates. A card left in
        the reader is served again when a new update for it comes. With ``holders`` (a
        simulated reader) simulated holders bring the cards (``sim_holders``)."""
        instance = uuid.uuid4().hex[:12]
        with self.store.tx(audited=False) as s:
            production.register_station(s, self.config.station_id, line=line, instance=instance)
        beat = threading.Thread(target=self._heartbeat, args=(stop,), daemon=True)
        beat.start()
        if holders is not None:
            sim_holders(self, holders, stop)
        while not stop.is_set():
            try:
                chip = self.reader.read_chip(self.config.insert_timeout_s)
            except DeviceFault:
                continue  # no card inserted (or an unreadable one): wait for the next
            try:
                self.serve(chip)
                self._while_inserted(chip, stop)
            except DBAPIError as exc:
                if not is_transient(exc):
                    raise
                self._log.warning("desk.store_away", detail=str(exc.orig)[:200])
                time.sleep(self.config.insert_timeout_s)
        beat.join(timeout=5)

    def _heartbeat(self, stop: threading.Event) -> None:
        while not stop.wait(self.config.heartbeat_s):
            try:
                with self.store.tx(audited=False) as s:
                    production.heartbeat(s, self.config.station_id, status=self.status)
            except DBAPIError as exc:
                if not is_transient(exc):
                    self._log.exception("desk.heartbeat_failed")

    def _while_inserted(self, chip: ChipInfo, stop: threading.Event) -> None:
        """Until the card is pulled: serve it again when an update for it comes (seed
        003: pending updates applied automatically while the card is in)."""
        while not stop.is_set():
            try:
                self.reader.check_present()
            except DeviceFault:
                return
            with self.store.read() as s:
                cred_id = s.scalar(
                    select(Credential.id).where(Credential.chip_serial == chip.serial)
                )
                due = cred_id is not None and any(
                    updates.claimable(u, station_id=self.config.station_id)
                    for u in updates.open_updates(s, cred_id)
                )
            if due:
                self.serve(chip)
            stop.wait(self.config.poll_s)

    def serve(self, chip: ChipInfo) -> list[tuple[int, str]]:
        """Apply every pending update of the inserted card, in order; return (update id,
        its new state) for each one touched. An unknown card is left alone."""
        with self.store.read() as s:
            cred = s.scalar(select(Credential).where(Credential.chip_serial == chip.serial))
            if cred is None:
                self._log.info("desk.unknown_card")
                return []
            open_rows = [
                u
                for u in updates.open_updates(s, cred.id)
                if updates.claimable(u, station_id=self.config.station_id)
            ]
            todo = [(u.id, u.kind) for u in open_rows]
            # A PIN a killed desk may already have set on the chip comes first.
            pending_pins = [
                (u.id, u.journal["new_pin_sealed"])
                for u in open_rows
                if u.journal.get("new_pin_sealed")
            ]
            pin_sealed, cred_id, number = cred.pin_sealed, cred.id, cred.card_number
        if not todo:
            return []
        # A delivered card not yet personalised has no PIN to open it with: its
        # activation initialises the chip first.
        fresh = open_rows[0].kind == UpdateKind.ACTIVATE and not open_rows[0].journal.get(
            "initialised"
        )
        if pin_sealed is None:
            self._log.error("desk.card_without_pin", credential_id=cred_id)
            return []
        pins = [self._open_pending(uid, sealed, "pin") for uid, sealed in pending_pins]
        pins.append(self.box.open(pin_sealed, context=context("credential", cred_id, "pin")))
        done: list[tuple[int, str]] = []
        self.status = "updating"
        try:
            try:
                if fresh:
                    todo = todo[:1]
                else:
                    self._open(chip.serial, pins, number)
            except DeviceFault as fault:
                # The PIN does not open the card (forgotten and changed, or blocked): a
                # PIN reset needs only the PUK, so it goes first; the rest waits for it.
                resets = [(u, k) for u, k in todo if k == UpdateKind.RESET_PIN]
                if not resets:
                    raise
                self._log.info("desk.pin_refused_reset_first", code=fault.code)
                todo = resets[:1]
            for update_id, kind in todo:
                state = self._apply(update_id, kind)
                done.append((update_id, state))
                if state != "applied":
                    break  # the next ones wait: they were asked for after this one
        except DeviceFault as fault:
            # The card would not open (a chip fault before any update began).
            self._log.warning("desk.card_refused", kind=fault.kind, code=fault.code)
        finally:
            self.status = "idle"
            with contextlib.suppress(DeviceFault):
                self.token.close()
        if done and done[-1][1] == "applied" and len(done) < len(open_rows):
            done += self.serve(chip)  # the PIN was reset: now the others
        return done

    def _open(self, serial: str, pins: list[Secret], number: str | None) -> None:
        for pin in pins[:-1]:
            with contextlib.suppress(DeviceFault):
                self.token.open_card(serial, pin, card_number=number)
                return
        self.token.open_card(serial, pins[-1], card_number=number)

    def _open_pending(self, update_id: int, sealed: str, what: str) -> Secret:
        return self.box.open(sealed, context=f"card_update:{update_id}:{what}")

    def _seal_pending(self, update_id: int, value: Secret, what: str) -> str:
        return self.box.seal(value.reveal(), context=f"card_update:{update_id}:{what}")

    # --- one update ---------------------------------------------------------------

    def _apply(self, update_id: int, kind: str) -> str:
        row = self._claim(update_id)
        if row is None:
            return "taken"
        log_ = self._log.bind(update_id=update_id, credential_id=row["credential_id"])
        try:
            if kind in updates.REKEYING:
                self._renew(update_id, kind, row, log_)
            elif kind == UpdateKind.RECOVER:
                self._recover(update_id, row, log_)
            elif kind == UpdateKind.WIPE:
                self._wipe(update_id, row, log_)
            elif kind == UpdateKind.RESET_PIN:
                self._reset_pin(update_id, row, log_)
            else:
                raise DeviceFault(FaultKind.CHIP, f"this desk cannot apply a {kind} update")
        except DeviceFault as fault:
            log_.warning("desk.update_failed", kind=fault.kind, code=fault.code)
            self._end(update_id, updates.fail, error=str(fault))
            self.failed += 1
            return "failed"
        except Postponed as why:
            log_.warning("desk.update_postponed", reason=str(why))
            with contextlib.suppress(DBAPIError, ConflictError):
                self._end(update_id, updates.release, reason=str(why))
            self.postponed += 1
            return "pending"
        self.applied += 1
        log_.info("desk.update_applied")
        return "applied"

    def _claim(self, update_id: int) -> dict[str, Any] | None:
        def claim(s: Any) -> dict[str, Any] | None:
            row = s.get(CardUpdate, update_id, with_for_update=True)
            if row is None or not updates.claimable(row, station_id=self.config.station_id):
                return None
            updates.claim(s, row, station_id=self.config.station_id, lease_s=self.config.lease_s)
            return {
                "credential_id": row.credential_id,
                "plan": dict(row.plan),
                "journal": dict(row.journal),
            }

        try:
            claimed: dict[str, Any] | None = self._tx(claim)
            return claimed
        except ConflictError:
            return None  # another desk took it first

    def _renew(self, update_id: int, kind: str, row: dict[str, Any], log_: Any) -> None:
        cred_id = row["credential_id"]
        usages = [CertUsage(u) for u in row["plan"]["usages"]]
        journal: dict[str, Any] = row["journal"]
        with self.store.read() as s:
            old = {c.serial: c.usage for c in updates.superseded(s, self._get(s, update_id))}
            card_number = s.get(Credential, cred_id).card_number  # type: ignore[union-attr]
        # 0. a delivered card: personalised (PIN, PUK, admin key) before anything else
        if kind == UpdateKind.ACTIVATE and not journal.get("initialised"):
            self._initialise(cred_id, card_number or str(cred_id))
            journal = {**journal, "initialised": True}
            self._step(update_id, journal, "chip personalised: PIN and PUK set")
        # 1. new keys beside the old ones (or, re-certifying, the chip's own keys)
        if "keys" not in journal and row["plan"].get("keep_keys"):
            keys, csrs = {}, {}
            for obj in self.token.objects():
                if obj.cert_serial in old and obj.usage in usages and not obj.fresh:
                    keys[obj.usage.value] = obj.key_id
                    name = f"{card_number} {obj.usage.value}"
                    csrs[obj.usage.value] = (
                        self._escrow_csr(cred_id, name)
                        if obj.usage == CertUsage.ENCRYPTION
                        else self.token.make_csr(obj.key_id, name)
                    )
            missing = [u.value for u in usages if u.value not in keys]
            if missing:
                raise DeviceFault(FaultKind.CHIP, f"no key on the chip to re-certify: {missing}")
            journal = {**journal, "keys": keys, "csrs": csrs}
            self._step(update_id, journal, "the chip's keys to re-certify: CSRs made")
        if "keys" not in journal:
            for obj in self.token.objects():
                # Made by a desk killed before it could record them: beside an old key
                # (fresh), or with no certificate yet where there was no old key.
                orphan = obj.fresh or (obj.cert_serial is None and obj.origin == "generated")
                if orphan and obj.usage in usages:
                    self.token.delete_key(obj.key_id)
            keys, csrs = {}, {}
            for usage in usages:
                key_id = self.token.generate_key(usage, self.policy.card_key_type, keep_old=True)
                keys[usage.value] = key_id
                csrs[usage.value] = self.token.make_csr(key_id, f"{card_number} {usage.value}")
            journal = {**journal, "keys": keys, "csrs": csrs}
            self._step(update_id, journal, "new keys generated on the chip")
        # 2. their certificates
        not_after = row["plan"].get("not_after")
        certs = self._await_certificates(
            update_id,
            cred_id,
            journal["csrs"],
            not_after=dt.datetime.fromisoformat(not_after) if not_after else None,
        )
        # 3. written and read back
        if not journal.get("written"):
            on_chip = {o.cert_serial for o in self.token.objects()}
            for usage_name, (serial, pem) in certs.items():
                if serial not in on_chip:
                    usage = CertUsage(usage_name)
                    self.token.write_certificate(journal["keys"][usage_name], usage, pem)
            listed = {o.cert_serial for o in self.token.objects()}
            missing = [s for s, _ in certs.values() if s not in listed]
            if missing:
                raise DeviceFault(
                    FaultKind.CHIP, f"certificates not read back: {', '.join(missing)}"
                )
            journal = {**journal, "written": True}
            serials = [serial for serial, _ in certs.values()]
            with self.store.tx() as s:
                updates.mark_written(s, self._get(s, update_id), serials)
                updates.step(
                    s,
                    self._get(s, update_id),
                    station_id=self.config.station_id,
                    journal=journal,
                    reason="new certificates written and read back",
                )
        # 4. the old keys erased
        if not journal.get("erased"):
            for obj in self.token.objects():
                if obj.cert_serial in old:
                    self.token.delete_key(obj.key_id)
            left = [o.cert_serial for o in self.token.objects() if o.cert_serial in old]
            if left:
                raise DeviceFault(FaultKind.CHIP, f"old certificates still on the chip: {left}")
            journal = {**journal, "erased": True}
            self._step(update_id, journal, "old keys and certificates erased from the chip")
        # 4b. a delivered card: its escrowed encryption key, unless the chip lists it
        if kind == UpdateKind.ACTIVATE and not journal.get("escrow_imported"):
            self._import_escrow(cred_id)
            journal = {**journal, "escrow_imported": True}
            self._step(update_id, journal, "escrowed key written")
        # 5. a new PIN for the holder (assign, extend): kept sealed in the journal
        # before the chip takes it, so a desk killed in between still knows it.
        secrets: dict[str, str] = {}
        if kind == UpdateKind.ACTIVATE:
            with self.store.tx() as s:
                ended = updates.apply_activation(
                    s, self._get(s, update_id), station_id=self.config.station_id
                )
            log_.info("desk.activated", usages=[u.value for u in usages], replaced=ended)
            return
        if kind in updates.NEW_PIN:
            journal = self._new_secrets(update_id, cred_id, journal, ("pin",))
            pin = self._open_pending(update_id, journal["new_pin_sealed"], "pin")
            self._unblock(update_id, cred_id, journal, pin)
            secrets["pin"] = self._reseal(cred_id, pin, "pin")
        # 6. done
        with self.store.tx() as s:
            row_ = self._get(s, update_id)
            revoked = updates.apply_renewal(s, row_, station_id=self.config.station_id)
            if secrets:
                updates.apply_new_secrets(
                    s, row_, station_id=self.config.station_id, secrets=secrets
                )
        log_.info("desk.rekeyed", kind=kind, usages=[u.value for u in usages], revoked=revoked)

    def _initialise(self, cred_id: int, card_number: str) -> None:
        """Personalise a delivered card: its PIN and PUK (the store's), its admin key."""
        with self.store.read() as s:
            cred = s.get(Credential, cred_id)
            assert cred is not None
            sealed = {
                "pin": cred.pin_sealed,
                "puk": cred.puk_sealed,
                "admin_key": cred.admin_key_sealed,
            }
        if sealed["pin"] is None or sealed["puk"] is None:
            raise DeviceFault(FaultKind.CHIP, "the card was never prepared: no PIN to set")
        pin, puk = (
            self.box.open(sealed[w] or "", context=context("credential", cred_id, w))
            for w in ("pin", "puk")
        )
        self.token.initialise(label=card_number, so_pin=puk, pin=pin)
        if sealed["admin_key"] is not None and isinstance(self.token, AdminKeyHolder):
            admin = self.box.open(
                sealed["admin_key"], context=context("credential", cred_id, "admin_key")
            )
            self.token.store_admin_key(admin)

    def _import_escrow(self, cred_id: int) -> None:
        """The card's escrowed encryption key with its certificate, unless the chip
        already lists that certificate."""
        with self.store.read() as s:
            cred = s.get(Credential, cred_id)
            assert cred is not None
            sealed = cred.escrow_key_sealed
            cert = s.scalars(
                select(Certificate)
                .where(
                    Certificate.credential_id == cred_id,
                    Certificate.attempt_id.is_(None),
                    Certificate.update_id.is_(None),
                    Certificate.usage == CertUsage.ENCRYPTION,
                    Certificate.state.in_((CertState.VALID, CertState.HOLD)),
                )
                .order_by(Certificate.id.desc())
            ).first()
        if sealed is None:
            return  # the policy escrows nothing
        if cert is None:
            raise Postponed("the escrowed key has no valid certificate yet")
        if cert.serial in {o.cert_serial for o in self.token.objects()}:
            return
        key = self.box.open(sealed, context=context("credential", cred_id, "escrow_key"))
        self.token.import_key(CertUsage.ENCRYPTION, key, cert.pem)

    def _escrow_csr(self, cred_id: int, common_name: str) -> str:
        """A CSR for the card's escrowed key, made with the escrowed copy (a key imported
        for decryption need not sign on the chip)."""
        with self.store.read() as s:
            sealed = s.get(Credential, cred_id).escrow_key_sealed  # type: ignore[union-attr]
        if sealed is None:
            raise DeviceFault(FaultKind.CHIP, "the card has no escrowed key to re-certify")
        pem = self.box.open(sealed, context=context("credential", cred_id, "escrow_key"))
        key = serialization.load_pem_private_key(pem.reveal().encode(), password=None)
        assert isinstance(key, keys.PrivateKey)  # escrowed keys are made by db.keys
        return keys.csr_pem(key, common_name)

    def _wipe(self, update_id: int, row: dict[str, Any], log_: Any) -> None:
        """Erase every key and certificate from the chip and give it a new PIN and PUK
        (a withdrawn temporary card: nothing of its holder is left for the next)."""
        cred_id = row["credential_id"]
        journal = self._new_secrets(update_id, cred_id, row["journal"], ("pin", "puk"))
        for obj in self.token.objects():
            self.token.delete_key(obj.key_id)
        if self.token.objects():
            raise DeviceFault(FaultKind.CHIP, "keys still on the chip after erasing")
        pin = self._open_pending(update_id, journal["new_pin_sealed"], "pin")
        puk = self._open_pending(update_id, journal["new_puk_sealed"], "puk")
        old_puk = self._unblock(update_id, cred_id, journal, pin)
        if old_puk is not None:
            self.token.change_puk(old_puk, puk)
        with self.store.tx() as s:
            row_ = self._get(s, update_id)
            updates.apply_new_secrets(
                s,
                row_,
                station_id=self.config.station_id,
                secrets={
                    "pin": self._reseal(cred_id, pin, "pin"),
                    "puk": self._reseal(cred_id, puk, "puk"),
                },
            )
            updates.apply_wipe(s, row_, station_id=self.config.station_id)
        log_.info("desk.wiped")

    def _reset_pin(self, update_id: int, row: dict[str, Any], log_: Any) -> None:
        """A new PIN set with the card's PUK (journalled sealed before the chip takes
        it), the holder's letter to follow."""
        cred_id = row["credential_id"]
        journal = self._new_secrets(update_id, cred_id, row["journal"], ("pin",))
        pin = self._open_pending(update_id, journal["new_pin_sealed"], "pin")
        self._unblock(update_id, cred_id, journal, pin)
        with self.store.tx() as s:
            row_ = self._get(s, update_id)
            updates.apply_new_secrets(
                s,
                row_,
                station_id=self.config.station_id,
                secrets={"pin": self._reseal(cred_id, pin, "pin")},
            )
            updates.apply_pin_reset(s, row_, station_id=self.config.station_id)
        log_.info("desk.pin_reset")

    def _new_secrets(
        self, update_id: int, cred_id: int, journal: dict[str, Any], what: tuple[str, ...]
    ) -> dict[str, Any]:
        """The new PIN (and PUK) for the card, made once and journalled sealed."""
        missing = [w for w in what if f"new_{w}_sealed" not in journal]
        if not missing:
            return journal
        lengths = {"pin": self.policy.pin_length, "puk": self.policy.puk_length}
        journal = {
            **journal,
            **{
                f"new_{w}_sealed": self._seal_pending(update_id, random_digits(lengths[w]), w)
                for w in missing
            },
        }
        self._step(update_id, journal, f"new {' and '.join(missing).upper()} chosen")
        return journal

    def _unblock(
        self, update_id: int, cred_id: int, journal: dict[str, Any], pin: Secret
    ) -> Secret | None:
        """Set ``pin`` on the chip with the card's PUK, or with the new PUK a killed desk
        had already set. Returns the PUK that worked when it is still the old one."""
        with self.store.read() as s:
            sealed = s.get(Credential, cred_id).puk_sealed  # type: ignore[union-attr]
        assert sealed is not None  # every produced card has a PUK
        old = self.box.open(sealed, context=context("credential", cred_id, "puk"))
        try:
            self.token.unblock(old, pin)
            return old
        except DeviceFault:
            new_sealed = journal.get("new_puk_sealed")
            if new_sealed is None:
                raise
            self.token.unblock(self._open_pending(update_id, new_sealed, "puk"), pin)
            return None

    def _reseal(self, cred_id: int, value: Secret, what: str) -> str:
        return self.box.seal(value.reveal(), context=context("credential", cred_id, what))

    def _recover(self, update_id: int, row: dict[str, Any], log_: Any) -> None:
        """Import the chosen escrowed keys (retired, beside the card's own), one per
        journal step; a key whose certificate the chip already lists is not imported
        again."""
        journal: dict[str, Any] = row["journal"]
        done: list[str] = list(journal.get("imported", []))
        for key in row["plan"]["keys"]:
            serial = key["serial"]
            if serial in done:
                continue
            if serial not in {o.cert_serial for o in self.token.objects()}:
                with self.store.read() as s:
                    old = s.get(Credential, key["credential_id"])
                    cert_pem = s.scalar(select(Certificate.pem).where(Certificate.serial == serial))
                    sealed = old.escrow_key_sealed if old else None
                if sealed is None or cert_pem is None:
                    raise DeviceFault(FaultKind.CHIP, f"escrowed key {serial} is gone")
                secret = self.box.open(
                    sealed, context=context("credential", key["credential_id"], "escrow_key")
                )
                self.token.import_key(CertUsage.ENCRYPTION, secret, cert_pem, retired=True)
            done.append(serial)
            journal = {**journal, "imported": done}
            self._step(update_id, journal, f"escrowed key {serial} written")
        listed = {o.cert_serial for o in self.token.objects()}
        missing = [s for s in done if s not in listed]
        if missing:
            raise DeviceFault(FaultKind.CHIP, f"recovered keys not read back: {missing}")
        self._tx(
            lambda s: updates.apply_recovery(
                s, self._get(s, update_id), station_id=self.config.station_id
            )
        )
        log_.info("desk.recovered", keys=len(done))

    def _await_certificates(
        self,
        update_id: int,
        cred_id: int,
        csrs: dict[str, str],
        *,
        not_after: dt.datetime | None = None,
    ) -> dict[str, tuple[str, str]]:
        """usage -> (serial, PEM) of the update's certificates, asked for until issued."""
        requests = [
            IssueCertificate(
                credential_id=cred_id,
                attempt_id=None,
                update_id=update_id,
                usage=CertUsage(usage),
                csr_pem=csr,
                not_after=not_after,
            )
            for usage, csr in csrs.items()
        ]
        start = time.monotonic()
        resend_at = start
        with wakeups.waiting(self.store, "update_certificates", update_id) as woken:
            while True:
                with self.store.read() as s:
                    rows = s.scalars(
                        select(Certificate).where(
                            Certificate.update_id == update_id,
                            Certificate.state.in_((CertState.VALID, CertState.HOLD)),
                        )
                    ).all()
                    found = {r.usage: (r.serial, r.pem) for r in rows}
                if set(csrs) <= found.keys():
                    return found
                now = time.monotonic()
                if now - start > self.config.server_wait_s:
                    raise Postponed(f"no certificate in {self.config.server_wait_s:g} s")
                if now >= resend_at:
                    again = [r for r in requests if r.usage.value not in found]
                    with self.store.tx(audited=False) as s:
                        outbox.add_all(s, again)
                    resend_at = now + self.config.cert_resend_s
                # Woken when the pki worker stores one (db.wakeups), else look again.
                woken.wait(max(0.0, min(self.config.poll_s, resend_at - time.monotonic())))

    # --- the store ----------------------------------------------------------------

    @staticmethod
    def _get(s: Session, update_id: int) -> CardUpdate:
        row = s.get(CardUpdate, update_id, with_for_update=True)
        assert row is not None  # updates are never deleted
        return row

    def _end(self, update_id: int, how: Any, **kw: str) -> None:
        self._tx(lambda s: how(s, self._get(s, update_id), station_id=self.config.station_id, **kw))

    def _step(self, update_id: int, journal: dict[str, Any], reason: str) -> None:
        self._tx(
            lambda s: updates.step(
                s,
                self._get(s, update_id),
                station_id=self.config.station_id,
                journal=journal,
                reason=reason,
            )
        )

    def _tx(self, fn: Any) -> Any:
        with self.store.tx() as s:
            return fn(s)


class HolderReader(DeskReader, Protocol):
    def insert(self, serial: str) -> None: ...


def sim_holders(desk: UpdateDesk, reader: HolderReader, stop: threading.Event) -> None:
    """The simulated holders of a simulated desk: each card with a pending update is
    brought to the desk (inserted, served, taken back) until none is left, then again
    when one comes."""
    while not stop.is_set():
        applied = False
        try:
            with desk.store.read() as s:
                waiting = updates.card_with_pending(s)
            for _, serial in waiting:
                if stop.is_set():
                    return
                reader.insert(serial)
                done = desk.serve(reader.read_chip(1.0))
                applied = applied or any(state == "applied" for _, state in done)
        except DBAPIError as exc:
            if not is_transient(exc):
                raise
            log.warning("desk.store_away")
        except Exception:  # the desk must not take the line down with it
            log.exception("desk.error")
        # At once again only after progress: a card the desk cannot finish (no PIN, a
        # fault) must not keep it spinning.
        stop.wait(0.0 if applied else 0.2)
