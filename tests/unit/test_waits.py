"""The table of waits, walked: for each wait, the message that moves it on is lost in
the broker the first time it is sent, and the work must still complete, re-driven by
the wait's owner, without a blank spoiled for it. For a wait moved on by a process,
not a message (a batch imported or decided a chunk at a time), that process stops
part-way instead.

The line runs (embedded: workers, relay, stations) from an empty store, so every
message below is published exactly once before it is lost; nothing but the wait's own
re-drive can bring it back.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from aiosmtpd.controller import Controller
from pydantic import SecretStr
from sqlalchemy import select
from structlog.testing import capture_logs

from db import updates
from db.models import (
    BatchOrder,
    CardUpdate,
    Certificate,
    Credential,
    CrlPublication,
    ProductionAttempt,
    Reminder,
    SoftToken,
    utcnow,
)
from db.transition import record, transition
from ops.config import Settings
from ops.line import EmbeddedLine, LineOptions
from ops.store import open_migrated
from producers import approvals, batch_import, certificates, softtokens
from producers.approvals import approve_batch
from producers.batch_import import import_batch
from producers.expiry import check_expiry
from producers.generate import write_users_csv
from schemas.expiry import ExpiryConfig
from schemas.messages import RecertifyCard
from schemas.pki import PkiConfig
from schemas.policy import Policy
from schemas.states import RevocationReason
from workers.waits import WAITS, StallPolicy, markdown_table

FAST = StallPolicy(
    approved_s=0.3,
    ready_s=0.5,
    letter_s=0.3,
    crl_s=0.3,
    reconcile_s=0.1,
    lease_grace_s=0,
    import_s=0.5,
)
CARDS = 2


@dataclass
class Inbox:
    messages: list[Any] = field(default_factory=list)
    refuse: int = 0  # refuse this many mails first (the server is busy)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.refuse > 0:
            self.refuse -= 1
            return "451 try again later"
        self.messages.append(
            email.message_from_bytes(envelope.content, policy=email.policy.default)
        )
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    inbox = Inbox()
    server = Controller(inbox, hostname="127.0.0.1", port=port)
    server.start()
    yield inbox, port
    server.stop()


class LoseFirst:
    """Wraps ``broker.enqueue``: the first copy of each matching message is lost."""

    def __init__(
        self, broker: Any, message_type: str, where: Callable[[dict[str, Any]], bool]
    ) -> None:
        self.message_type, self.where = message_type, where
        self.lost: list[dict[str, Any]] = []
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self._enqueue = broker.enqueue
        broker.enqueue = self

    @staticmethod
    def _key(payload: dict[str, Any]) -> str:
        # A re-request carries a fresh CSR (or a different reason): it is the same work.
        return json.dumps(
            {k: v for k, v in payload.items() if k not in ("csr_pem", "reason", "force")},
            sort_keys=True,
        )

    def __call__(self, message: Any, *, delay: int | None = None) -> Any:
        payload = message.args[0] if message.args else {}
        if payload.get("type") == self.message_type and self.where(payload):
            key = self._key(payload)
            with self._lock:
                if key not in self._seen:
                    self._seen.add(key)
                    self.lost.append(payload)
                    return message  # gone: never reaches a queue
        return self._enqueue(message, delay=delay)


@dataclass
class Scene:
    line: EmbeddedLine
    tmp: Path
    policy: Policy
    inbox: Inbox | None

    @property
    def store(self) -> Any:
        return self.line.store

    def order(self, cards: int = CARDS) -> int:
        csv = write_users_csv(self.tmp / "users.csv", cards, seed=3)
        report = import_batch(
            self.store, csv, policy=self.policy, requested_by="alice", reject_dir=self.tmp
        )
        assert report.batch_id is not None
        approve_batch(self.store, report.batch_id, by="bob")
        return report.batch_id

    def cards(self) -> list[Credential]:
        with self.store.read() as s:
            return list(s.scalars(select(Credential).order_by(Credential.id)))

    def produced(self) -> bool:
        cards = self.cards()
        return len(cards) > 0 and all(
            c.state == "active" and c.pin_letter_path is not None for c in cards
        )


def until(predicate: Callable[[], bool], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("the work did not complete")


# --- one scenario per wait: cause the wait, then say when its work is done -----------


def _cards(scene: Scene) -> Callable[[], bool]:
    scene.order()
    return scene.produced


def _recertify(scene: Scene) -> Callable[[], bool]:
    # A re-certification an earlier version asked for (renewal and assignment are card
    # updates now): its message is lost, the reconciler re-drives it.
    scene.order(1)
    until(scene.produced)
    (card,) = scene.cards()
    with scene.store.tx() as s:
        cred = s.get(Credential, card.id, with_for_update=True)
        assert cred is not None
        record(
            s,
            cred,
            "renew",
            actor="carol",
            changes={"recertify_requested_at": utcnow()},
            messages=[RecertifyCard(credential_id=card.id)],
        )

    def done() -> bool:
        with scene.store.read() as s:
            cred = s.get(Credential, card.id)
            assert cred is not None
            return cred.recertify_requested_at is None

    return done


def _softtoken(scene: Scene) -> Callable[[], bool]:
    scene.order(1)
    until(scene.produced)
    (card,) = scene.cards()
    pki = PkiConfig()
    with scene.store.read() as s:
        email_ = s.get(Credential, card.id).user.email  # type: ignore[union-attr]
    (token_id,) = softtokens.request_softtokens(
        scene.store, email_, [next(iter(pki.softtokens))], by="alice", pki=pki
    )
    softtokens.approve(scene.store, token_id, by="bob")

    def done() -> bool:
        with scene.store.read() as s:
            token = s.get(SoftToken, token_id)
            return token is not None and token.state == "issued" and token.p12_path is not None

    return done


def _crl(scene: Scene) -> Callable[[], bool]:
    scene.order(1)
    until(scene.produced)
    with scene.store.read() as s:
        serial = s.scalars(select(Certificate.serial)).first()
    assert serial is not None
    certificates.revoke(scene.store, serial, reason=RevocationReason.KEY_COMPROMISE, by="carol")

    def done() -> bool:
        with scene.store.read() as s:
            last = s.scalars(select(CrlPublication).order_by(CrlPublication.number.desc())).first()
            return last is not None and last.revoked_count == 1

    return done


def _reminder(scene: Scene) -> Callable[[], bool]:
    scene.order(1)
    until(scene.produced)
    (card,) = scene.cards()
    assert card.valid_until is not None
    check_expiry(scene.store, ExpiryConfig(), now=card.valid_until - dt.timedelta(days=5))

    def done() -> bool:
        with scene.store.read() as s:
            rows = s.scalars(select(Reminder)).all()
            return len(rows) > 0 and all(r.sent_at is not None for r in rows)

    return done


def _mailed(scene: Scene) -> Callable[[], bool]:
    assert scene.inbox is not None
    scene.inbox.refuse = 1  # the letter is written, its mail refused and retried ...
    scene.order(1)

    def done() -> bool:
        return scene.produced() and all(c.pin_letter_mailed_at for c in scene.cards())

    return done


def _letter_written_not_mailed(store: Any, payload: dict[str, Any]) -> bool:
    with store.read() as s:
        cred = s.get(Credential, payload["credential_id"])
        return cred is not None and cred.pin_letter_path and cred.pin_letter_mailed_at is None


def _import_stops(scene: Scene) -> Callable[[], bool]:
    # A file imported a row per transaction whose importer dies after its first chunk,
    # before it could abandon the batch itself.
    csv = write_users_csv(scene.tmp / "users.csv", 3, seed=3)
    real = batch_import._Import.begin

    def die_after_first(work: Any, session: Any) -> None:
        if work.cards_requested == 1:  # the first chunk is committed
            raise KeyboardInterrupt("the importer is killed")
        real(work, session)

    with (
        mock.patch.object(batch_import._Import, "begin", die_after_first),
        mock.patch.object(batch_import, "_abandon_quietly", return_value=None),
        pytest.raises(KeyboardInterrupt),
    ):
        import_batch(
            scene.store,
            csv,
            policy=scene.policy,
            requested_by="alice",
            reject_dir=scene.tmp,
            single_tx_bytes=0,
            chunk_rows=1,
        )
    with scene.store.read() as s:
        (batch,) = s.scalars(select(BatchOrder)).all()
        assert batch.state == "importing"

    again: list[int] = []

    def done() -> bool:
        if not again:
            with scene.store.read() as s:
                batch = s.scalars(select(BatchOrder)).one()
            if batch.state != "failed" or any(c.state != "rejected" for c in scene.cards()):
                return False
            # ... and the same file may be imported again, whole this time.
            again.append(scene.order(3))
        with scene.store.read() as s:
            cards = s.scalars(select(Credential).where(Credential.batch_id == again[0])).all()
            return len(cards) == 3 and all(c.state == "active" for c in cards)

    return done


def _decision_stops(scene: Scene) -> Callable[[], bool]:
    # The approver's process dies after the batch is approved, before its cards are.
    csv = write_users_csv(scene.tmp / "users.csv", CARDS, seed=3)
    report = import_batch(
        scene.store, csv, policy=scene.policy, requested_by="alice", reject_dir=scene.tmp
    )
    assert report.batch_id is not None
    with mock.patch.object(approvals, "settle", return_value=0):
        approve_batch(scene.store, report.batch_id, by="bob")
    assert {c.state for c in scene.cards()} == {"requested"}
    return scene.produced


def _desk_dies(scene: Scene) -> Callable[[], bool]:
    # A renewal taken by a desk that dies at once (its lease runs out).
    scene.order(1)
    until(scene.produced)
    (card,) = scene.cards()
    with scene.store.tx() as s:
        cred = s.get(Credential, card.id, with_for_update=True)
        assert cred is not None
        transition(s, cred, "renew", actor="carol")
        row = updates.request_renewal(s, cred, by="carol")
        updates.claim(s, row, station_id="DESK9", lease_s=0.2)

    def done() -> bool:
        with scene.store.read() as s:
            row = s.scalars(select(CardUpdate)).one()
            return row.state == "applied"

    return done


@dataclass(frozen=True)
class Case:
    message: str | None  # the message type lost (None: a process stops part-way)
    scenario: Callable[[Scene], Callable[[], bool]]
    # Which messages of that type are lost: (the store, the payload) -> bool.
    where: Callable[[Any, dict[str, Any]], bool] = lambda store, p: True
    policy: Policy = field(default_factory=Policy)
    mail: bool = False
    redriver: str | None = None  # the wait that must show in the reconciler's log


CASES: dict[str, Case] = {
    "batch import": Case(None, _import_stops, redriver="batch import"),
    "batch decision": Case(None, _decision_stops, redriver="batch decision"),
    # The line's own desk may resume the update before the reconciler gives it back.
    "card update": Case(None, _desk_dies),
    "card approved": Case("prepare_card", _cards, redriver="card approved"),
    "escrow certificate": Case(
        "issue_certificate",
        _cards,
        where=lambda store, p: p["attempt_id"] is None,
        redriver="escrow certificate",
    ),
    "card ready": Case("produce_card", _cards, redriver="card ready"),
    "attempt certificates": Case(
        "issue_certificate", _cards, where=lambda store, p: p["attempt_id"] is not None
    ),
    "re-certification": Case("recertify_card", _recertify, redriver="re-certification"),
    "PIN letter": Case("pin_letter", _cards, redriver="PIN letter"),
    "PIN letter mail": Case(
        "pin_letter",
        _mailed,
        where=_letter_written_not_mailed,  # ... and that retry is lost
        policy=Policy(pin_letter_delivery="mail"),
        mail=True,
        redriver="PIN letter mail",
    ),
    "soft token issue": Case("issue_softtoken", _softtoken, redriver="soft token issue"),
    "soft token delivery": Case("deliver_softtoken", _softtoken, redriver="soft token delivery"),
    "CRL publication": Case(
        "publish_crl",
        _crl,
        where=lambda store, p: p["reason"] != "schedule",
        redriver="CRL publication",
    ),
    "expiry reminder": Case("send_reminder", _reminder, mail=True, redriver="expiry reminder"),
}


def test_every_wait_in_the_table_has_a_case_here():
    assert set(CASES) == {w.name for w in WAITS}


def test_the_design_page_carries_the_table_of_waits():
    page = (Path(__file__).parents[2] / "docs" / "architecture.md").read_text()
    assert markdown_table() in page, "docs/architecture.md: run `cardline waits` and paste"


@pytest.mark.parametrize("name", [w.name for w in WAITS])
def test_work_completes_when_the_message_that_moves_it_on_is_lost(tmp_path, smtp, name):
    case = CASES[name]
    inbox, port = smtp
    settings = Settings(
        data_dir=tmp_path / "data",
        smtp_url=SecretStr(f"smtp://127.0.0.1:{port}") if case.mail else None,
    )
    open_migrated(settings).dispose()
    line = EmbeddedLine(
        settings,
        case.policy,
        LineOptions(stations=2, time_scale=0, seed=5, stall=FAST, cert_resend_s=0.3),
    )
    lost = LoseFirst(line.broker, case.message or "", lambda p: case.where(line.store, p))
    with capture_logs() as logs:
        line.start()
        try:
            done = case.scenario(Scene(line, tmp_path, case.policy, inbox))
            until(done)
        finally:
            line.stop()
    assert lost.lost or case.message is None, f"no {case.message} message was sent"
    with line.store.read() as s:
        spoiled = s.scalars(select(ProductionAttempt).where(ProductionAttempt.state == "spoiled"))
        assert list(spoiled) == [], "a lost message must not cost a blank"
    if case.redriver is not None:
        redriven = [e for e in logs if e["event"] == "reconciler.redriven"]
        key = case.redriver.replace(" ", "_")
        assert any(key in e for e in redriven), f"the {case.redriver!r} wait never re-drove"
