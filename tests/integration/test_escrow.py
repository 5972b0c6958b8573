"""Key escrow: the escrowed encryption key of a card comes back out as a PFX under a
one-time password (checked with ``openssl pkcs12``), and onto the holder's next card as
a retired key beside the new one (read back from the card the station wrote)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from sqlalchemy import select

from db.models import ApprovalRequest, AuditEvent, Certificate, Credential
from ops.cli import main
from ops.config import Settings
from ops.line import EmbeddedLine, LineOptions
from ops.store import open_migrated
from producers.approvals import approve_batch
from producers.batch_import import import_batch
from producers.principals import find_principal
from tests.principals import token_for

HEADER = "first_name,last_name,email,upn,organization,org_unit,title\n"


def _import(settings: Settings, work: Path, title: str) -> int:
    csv = work / f"users-{title}.csv"
    csv.write_text(HEADER + f"Ada,Lovelace,ada@example.org,ada@corp.example.org,Ex,R&D,{title}\n")
    report = import_batch(
        open_migrated(settings),
        csv,
        policy=settings.policy,
        requested_by="alice",
        reject_dir=work / "rejects",
    )
    assert report.batch_id is not None
    return report.batch_id


def _run_line(settings: Settings) -> EmbeddedLine:
    line = EmbeddedLine(settings, settings.policy, LineOptions(stations=1, time_scale=0, seed=1))
    line.start()
    try:
        assert line.wait_drained(timeout_s=120)
    finally:
        line.stop()
    return line


def _cli(
    settings: Settings,
    *args: object,
    as_: str = "olga",
    roles: tuple[str, ...] = ("operator",),
    env: dict[str, str] | None = None,
) -> Any:
    """``cardline ARGS`` as ``as_`` holding ``roles`` (by default olga, an operator; the
    token's principal is made on first use)."""
    store = open_migrated(settings)
    try:
        token = token_for(store, as_, roles)
    finally:
        store.dispose()
    return CliRunner().invoke(
        main,
        [str(a) for a in args] + ["--data-dir", str(settings.data_dir)],
        env={**(env or {}), "CARDLINE_TOKEN": token},
    )


def _password(result: Any) -> str:
    """The one-time password the export printed last."""
    return str(result.output.strip().splitlines()[-1].rsplit(": ", 1)[1])


def _actor(settings: Settings, name: str) -> str:
    """What the audit log records for principal ``name``."""
    store = open_migrated(settings)
    try:
        return f"principal:{find_principal(store, name)}"
    finally:
        store.dispose()


def _cards(settings: Settings) -> list[Credential]:
    with open_migrated(settings).read() as s:
        cards = list(s.scalars(select(Credential).order_by(Credential.id)))
        for card in cards:
            s.expunge(card)
        return cards


def _escrow_cert(settings: Settings, credential_id: int) -> x509.Certificate:
    with open_migrated(settings).read() as s:
        pem = s.scalars(
            select(Certificate.pem).where(
                Certificate.credential_id == credential_id,
                Certificate.attempt_id.is_(None),
                Certificate.usage == "encryption",
            )
        ).one()
    return x509.load_pem_x509_certificate(pem.encode())


def _spki(key: Any) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture(scope="module")
def first_card(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, Path]:
    work = tmp_path_factory.mktemp("escrow")
    settings = Settings(data_dir=work / "data")
    batch = _import(settings, work, "Engineer")
    approve_batch(open_migrated(settings), batch, by="bob")
    _run_line(settings)
    assert [c.state for c in _cards(settings)] == ["active"]
    return settings, work


def test_an_escrowed_key_exports_as_a_pfx_that_opens_with_its_one_time_password(first_card):
    settings, work = first_card
    card = _cards(settings)[0]
    out = work / "escrow.pfx"
    result = _cli(settings, "escrow", "export", card.card_number, "--out", out)
    assert result.exit_code == 0, result.output
    password = _password(result)
    assert out.stat().st_mode & 0o777 == 0o600
    opened = subprocess.run(
        ["openssl", "pkcs12", "-info", "-nokeys", "-in", str(out), "-passin", f"pass:{password}"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert opened.returncode == 0, opened.stderr
    wrong = subprocess.run(
        ["openssl", "pkcs12", "-info", "-nokeys", "-in", str(out), "-passin", "pass:guess"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert wrong.returncode != 0
    pfx = pkcs12.load_pkcs12(out.read_bytes(), password.encode())
    assert pfx.key is not None
    assert pfx.cert is not None
    escrow_cert = _escrow_cert(settings, card.id)
    assert pfx.cert.certificate == escrow_cert
    assert _spki(pfx.key.public_key()) == _spki(escrow_cert.public_key())
    with open_migrated(settings).read() as s:
        (event,) = s.scalars(select(AuditEvent).where(AuditEvent.action == "escrow_export"))
    assert event.actor == _actor(settings, "olga")
    assert password not in (settings.data_dir / "logs" / "cardline.log").read_text()


def test_every_export_gets_a_new_password(first_card):
    settings, work = first_card
    card = _cards(settings)[0]
    passwords = set()
    for n in range(2):
        result = _cli(settings, "escrow", "export", card.id, "--out", work / f"again{n}.pfx")
        assert result.exit_code == 0, result.output
        passwords.add(result.output.strip().splitlines()[-1])
    assert len(passwords) == 2


def test_under_dual_control_an_export_waits_for_an_approver_and_its_requester_collects_it_once(
    first_card,
):
    settings, work = first_card
    card = _cards(settings)[0]
    config = work / "dual-control.toml"
    config.write_text("[approvals]\nescrow_export = true\n", encoding="utf-8")
    dual = {"CARDLINE_CONFIG": str(config)}
    out = work / "dual.pfx"

    def export(*more: object, as_: str = "ivy", roles: tuple[str, ...] = ("operator",)) -> Any:
        return _cli(
            settings,
            "escrow",
            "export",
            card.card_number,
            "--out",
            out,
            *more,
            as_=as_,
            roles=roles,
            env=dual,
        )

    def exports() -> list[str]:
        with open_migrated(settings).read() as s:
            events = s.scalars(select(AuditEvent).where(AuditEvent.action == "escrow_export"))
            return [e.actor for e in events]

    before = exports()
    # Ivy may approve requests too, which still never makes her request hers to approve.
    held = export(roles=("operator", "approver"))
    assert held.exit_code == 0, held.output
    assert "waits for an approver" in held.output
    request_id = int(held.output.split("request ", 1)[1].split()[0])
    assert f"--request {request_id}" in held.output
    assert not out.exists()
    assert exports() == before
    with open_migrated(settings).read() as s:
        request = s.get(ApprovalRequest, request_id)
        assert (request.process, request.target, request.params) == (
            "escrow.export",
            str(card.id),
            {},
        )
    early = export("--request", request_id)
    assert early.exit_code != 0, early.output
    assert "pending" in early.output
    alone = export()  # a second request for the same card waits behind the first
    assert alone.exit_code != 0
    assert "already waits" in alone.output
    own = _cli(settings, "approvals", "approve", request_id, as_="ivy", env=dual)
    assert own.exit_code != 0
    approved = _cli(
        settings, "approvals", "approve", request_id, as_="bob", roles=("approver",), env=dual
    )
    assert approved.exit_code == 0, approved.output
    assert "approved" in approved.output
    assert not out.exists()
    theirs = export("--request", request_id, as_="olga")
    assert theirs.exit_code != 0
    assert "only they may collect it" in theirs.output
    assert not out.exists()

    collected = export("--request", request_id)
    assert collected.exit_code == 0, collected.output
    password = _password(collected)
    pfx = pkcs12.load_pkcs12(out.read_bytes(), password.encode())
    assert pfx.cert is not None
    assert pfx.cert.certificate == _escrow_cert(settings, card.id)
    assert exports() == [*before, _actor(settings, "ivy")]
    with open_migrated(settings).read() as s:
        request = s.get(ApprovalRequest, request_id)
        assert request.state == "approved"
        assert request.outcome == f"collected by {_actor(settings, 'ivy')}"
        assert password not in f"{request.params} {request.summary} {request.outcome}"
    out.unlink()
    again = export("--request", request_id)
    assert again.exit_code != 0
    assert "collected" in again.output
    assert not out.exists()
    assert exports() == [*before, _actor(settings, "ivy")]


def test_recovery_onto_a_card_in_use_is_refused_when_the_holder_has_no_earlier_key(first_card):
    # A card in use takes earlier keys through a card update (tests/unit/
    # test_card_updates.py); this holder's only escrowed key is the card's own.
    settings, _work = first_card
    card = _cards(settings)[0]
    result = _cli(settings, "escrow", "recover", card.card_number)
    assert result.exit_code != 0
    assert "no escrowed keys to recover" in result.output


def test_recovery_writes_the_earlier_key_to_the_holders_next_card(first_card):
    settings, work = first_card
    batch = _import(settings, work, "Manager")  # the holder's second card
    first, second = _cards(settings)
    assert first.user_id == second.user_id
    assert second.state == "requested"
    result = _cli(settings, "escrow", "recover", second.id)
    assert result.exit_code == 0, result.output
    assert "1 earlier escrowed keys" in result.output
    approve_batch(open_migrated(settings), batch, by="bob")
    line = _run_line(settings)
    assert [c.state for c in _cards(settings)] == ["active", "active"]
    objects = line.stations[0].token.objects()  # the chip the station wrote last
    recovered = [o for o in objects if o.origin == "recovered"]
    current = [o for o in objects if o.origin == "imported"]
    old_key = _escrow_cert(settings, first.id).public_key()
    new_key = _escrow_cert(settings, second.id).public_key()
    assert [o.public_key_pem.encode() for o in recovered] == [
        old_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    ]
    assert recovered[0].label == "retired encryption key"
    assert recovered[0].cert_subject is not None
    assert [o.public_key_pem.encode() for o in current] == [
        new_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    ]
    with open_migrated(settings).read() as s:
        events = s.scalars(select(AuditEvent).where(AuditEvent.action == "recover_escrow"))
        assert [e.actor for e in events] == [_actor(settings, "olga")]
