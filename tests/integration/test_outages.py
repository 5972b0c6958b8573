"""Outages cost no blank: while the PKI worker or the store is away, a station keeps the
card in its encoder, says what it waits for, and finishes the card when the server is
back; only after ``server_wait_s`` does it give the blank up.

The store outage is a real one: the line reaches PostgreSQL through a TCP proxy that
is cut (every connection reset, new ones refused) while a card is in a station.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import func, select
from structlog.testing import capture_logs

from db.engine import open_store
from db.models import Credential, OutboxMessage, ProductionAttempt, Station
from ops.config import Settings
from ops.line import EmbeddedLine, LineOptions
from producers.approvals import approve_batch
from producers.batch_import import import_batch
from producers.generate import write_users_csv
from schemas.messages import IssueCertificate
from schemas.policy import Policy
from stations.runtime import Station as StationProcess
from stations.runtime import StationConfig
from stations.sim import make_sim_drivers
from tests import factories
from tests.backends import require
from tests.netcut import CuttableProxy
from workers.ca import CertificateAuthority
from workers.context import WorkerContext
from workers.pki import issue_certificate
from workers.prepare import prepare_card
from workers.waits import StallPolicy


def _pki_requests(store, *, attempts: bool) -> list[IssueCertificate]:
    with store.read() as s:
        rows = s.scalars(select(OutboxMessage).where(OutboxMessage.actor == "pki")).all()
    jobs = [
        IssueCertificate.model_validate(r.payload)
        for r in rows
        if r.payload["type"] == "issue_certificate"
    ]
    return [j for j in jobs if (j.attempt_id is not None) == attempts]


def _ready_card(store, ctx) -> int:
    with store.tx() as s:
        cid = factories.credential(s, "approved").id
    from schemas.messages import PrepareCard

    prepare_card(ctx, PrepareCard(credential_id=cid))
    for job in _pki_requests(store, attempts=False):  # the escrowed key's certificate
        issue_certificate(ctx, job)
    with store.read() as s:
        assert s.get(Credential, cid).state == "ready"
    return cid


def _station(store, box, tmp_path: Path, **config) -> StationProcess:
    printer, reader, token = make_sim_drivers(
        time_scale=0, fault_rate=0, seed=1, output_dir=tmp_path / "printed"
    )
    station = StationProcess(
        StationConfig(station_id="ST1", cert_resend_s=0.1, **config),
        printer=printer,
        reader=reader,
        token=token,
        store=store,
        box=box,
        policy=Policy(),
        broker=StubBroker(),
        faces_dir=tmp_path / "faces",
    )
    station.start_up()
    return station


@pytest.fixture
def ctx(sqlite_store, box, tmp_path):
    return WorkerContext(
        store=sqlite_store,
        box=box,
        policy=Policy(),
        ca=CertificateAuthority.load_or_create(tmp_path / "ca", box),
        letters_dir=tmp_path / "letters",
        crl_dir=tmp_path / "crl",
    )


def _spoiled(store) -> int:
    with store.read() as s:
        return int(
            s.scalar(
                select(func.count())
                .select_from(ProductionAttempt)
                .where(ProductionAttempt.state == "spoiled")
            )
            or 0
        )


def test_a_station_holds_its_card_while_the_pki_is_away_and_finishes_it_when_it_is_back(
    ctx, sqlite_store, box, tmp_path
):
    store = sqlite_store
    cid = _ready_card(store, ctx)
    station = _station(store, box, tmp_path, cert_timeout_s=0.3, server_wait_s=60)
    result: list[str | None] = []
    worker = threading.Thread(target=lambda: result.append(station.produce(cid)))
    worker.start()
    deadline = time.monotonic() + 10
    while station.status != "waiting_for_pki" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert station.status == "waiting_for_pki"
    # Visible to operators: the station writes it right after it decides it (a read
    # between the two sees the old status, so look until the deadline).
    shown = None
    while shown != "waiting_for_pki" and time.monotonic() < deadline:
        with store.read() as s:
            shown = s.get(Station, "ST1").status
        time.sleep(0.02)
    assert shown == "waiting_for_pki"
    with store.read() as s:
        assert s.get(Credential, cid).state == "producing"  # the card stays in the encoder
    time.sleep(1.0)  # the PKI stays away a while; the station asks again meanwhile
    requests = _pki_requests(store, attempts=True)
    assert len(requests) > 2, "the station should re-send its certificate requests"
    for job in requests:  # the PKI worker is back and works through its queue
        issue_certificate(ctx, job)
    worker.join(timeout=30)
    assert result == ["active"]
    assert _spoiled(store) == 0
    assert station.status == "idle"


def test_only_after_server_wait_s_does_a_station_give_the_blank_up(
    ctx, sqlite_store, box, tmp_path
):
    store = sqlite_store
    cid = _ready_card(store, ctx)
    station = _station(store, box, tmp_path, cert_timeout_s=0.2, server_wait_s=0.6)
    started = time.monotonic()
    assert station.produce(cid) == "ready"  # spoiled, queued again on a new blank
    assert time.monotonic() - started >= 0.6
    with store.read() as s:
        (attempt,) = s.scalars(select(ProductionAttempt)).all()
    assert (attempt.state, attempt.fault) == ("spoiled", "certificate_timeout")


def test_a_card_that_cannot_be_finished_is_flagged_before_any_blank_is_fed(
    ctx, sqlite_store, box, tmp_path
):
    store = sqlite_store
    cid = _ready_card(store, ctx)
    from sqlalchemy import update

    with store.tx() as s:  # a sealed value that no longer opens (a damaged row)
        s.execute(update(Credential).where(Credential.id == cid).values(pin_sealed="v1:broken"))
    station = _station(store, box, tmp_path)
    assert station.produce(cid) is None
    with store.read() as s:
        assert s.scalar(select(func.count()).select_from(ProductionAttempt)) == 0  # no blank
        assert s.get(Credential, cid).state == "ready"
    from db.attention import open_items

    with store.read() as s:
        (item,) = open_items(s)
    assert (item.entity, item.entity_id) == ("credential", str(cid))
    assert "pin" in item.reason


@pytest.fixture
def pg_proxy(pg_databases):
    require("postgres")
    name = pg_databases.create()
    proxy = CuttableProxy(("127.0.0.1", 5432))
    yield pg_databases.url(name).replace(":5432/", f":{proxy.port}/"), proxy
    proxy.close()
    pg_databases.drop(name)


def test_a_store_outage_while_cards_are_in_the_stations_costs_no_blank(tmp_path, pg_proxy):
    url, proxy = pg_proxy
    settings = Settings(data_dir=tmp_path / "data", database_url=url)
    policy = Policy()
    direct = open_store(url.replace(f":{proxy.port}/", ":5432/"), pool_size=2)
    line = EmbeddedLine(
        settings,
        policy,
        LineOptions(
            stations=2,
            time_scale=0.05,  # a card takes about a second in the encoder
            seed=3,
            lease_s=2.0,  # shorter than the outage: the grace period must cover it
            stall=StallPolicy(lease_grace_s=10.0, reconcile_s=0.2),
        ),
    )
    csv = write_users_csv(tmp_path / "users.csv", 12, seed=4)
    report = import_batch(line.store, csv, policy=policy, requested_by="a", reject_dir=tmp_path)
    approve_batch(line.store, report.batch_id, by="b")
    with capture_logs() as logs:
        line.start()
        try:
            _wait_for_attempt_in_progress(direct)
            proxy.cut()
            time.sleep(4.0)
            proxy.restore()
            assert line.wait_drained(timeout_s=120)
        finally:
            line.stop()
    events = {e["event"] for e in logs}
    assert "station.waiting_for_store" in events
    assert "station.store_back" in events
    with direct.read() as s:
        states = s.execute(select(Credential.state, func.count()).group_by(Credential.state)).all()
    assert dict(states) == {"active": 12}
    assert _spoiled(direct) == 0, "a store outage must not cost a blank"
    direct.dispose()


def _wait_for_attempt_in_progress(store) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with store.read() as s:
            if s.scalar(
                select(ProductionAttempt.id).where(ProductionAttempt.state == "in_progress")
            ):
                return
        time.sleep(0.01)
    raise AssertionError("no card reached a station")


def test_a_stray_certificate_that_does_not_fit_the_chip_is_revoked_and_costs_no_blank(
    ctx, sqlite_store, box, tmp_path
):
    """A late message from elsewhere (another card's CSR, an earlier store's request)
    must not become the certificate a station writes to its chip."""
    from cryptography.hazmat.primitives import serialization

    from db import keys
    from db.models import Certificate
    from db.transition import create
    from workers.ca import Holder

    store = sqlite_store
    cid = _ready_card(store, ctx)
    station = _station(store, box, tmp_path, cert_timeout_s=30, server_wait_s=60)
    result: list[str | None] = []
    worker = threading.Thread(target=lambda: result.append(station.produce(cid)))
    worker.start()
    deadline = time.monotonic() + 10
    while not _pki_requests(store, attempts=True) and time.monotonic() < deadline:
        time.sleep(0.02)
    (first, *_) = _pki_requests(store, attempts=True)
    stray = keys.csr_pem(keys.generate("ec-p256"), "someone else's key")
    holder = Holder(common_name="x", email="x@example.org", upn="x@example.org", organization="x")
    cert = ctx.ca.issue(stray, usage=first.usage, holder=holder, validity_days=30)
    with store.tx() as s:
        create(
            s,
            Certificate(
                state="valid",
                credential_id=cid,
                attempt_id=first.attempt_id,
                usage=first.usage,
                serial=f"{cert.serial_number:x}",
                subject=cert.subject.rfc4514_string(),
                not_before=cert.not_valid_before_utc,
                not_after=cert.not_valid_after_utc,
                pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
            ),
            actor="tests",
        )
    time.sleep(0.5)  # the station sees the stray answer, revokes it and asks again
    for job in _pki_requests(store, attempts=True):
        issue_certificate(ctx, job)
    worker.join(timeout=30)
    assert result == ["active"]
    assert _spoiled(store) == 0
    with store.read() as s:
        stray_row = s.scalars(
            select(Certificate).where(Certificate.serial == f"{cert.serial_number:x}")
        ).one()
    assert stray_row.state == "revoked"


def test_a_request_naming_another_card_than_its_attempt_is_never_answered(ctx, sqlite_store):
    from db import keys
    from db.models import Certificate

    store = sqlite_store
    with store.tx() as s:
        attempt = factories.attempt(s)
        other = factories.credential(s, "producing")
        aid, other_id = attempt.id, other.id
    issue_certificate(
        ctx,
        IssueCertificate(
            credential_id=other_id,
            attempt_id=aid,
            usage="authentication",
            csr_pem=keys.csr_pem(keys.generate("ec-p256"), "x"),
        ),
    )
    with store.read() as s:
        assert s.scalar(select(func.count()).select_from(Certificate)) == 0
