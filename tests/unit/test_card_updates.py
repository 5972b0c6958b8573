"""Card updates (issue 13): a renewal is a job of its own, applied at the update desk
when the card comes back, and the store says only what the chip really carries."""

from __future__ import annotations

import datetime as dt
import json
import random
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import func, select

from db import updates
from db.models import AuditEvent, CardUpdate, Certificate, Credential
from db.secrets import Secret, SecretBox, context
from ops.cli import main
from ops.config import Settings
from ops.line import EmbeddedLine, LineOptions
from ops.store import open_migrated
from producers import escrow, lifecycle, tempcards
from producers.approvals import approve_batch
from producers.batch_import import import_batch
from producers.cards import approve_card, renew_card, request_cards
from producers.generate import write_users_csv
from producers.unblock import unblock_response
from schemas.errors import DeviceFault, StateConflict, ValidationFailed
from schemas.policy import Policy
from stations import desk as desk_module
from stations.chips import SimChipStore
from stations.drivers import ChipInfo
from stations.pin import SoftAdminKeyCard
from stations.sim import SIM_ATR, SimFaults, SimTimings, SimToken, make_sim_desk
from tests.principals import token_for

POLICY = Policy(approval_required=True)


@dataclass
class World:
    line: EmbeddedLine
    tmp: Path

    @property
    def store(self) -> Any:
        return self.line.store


def _produce(root: Path, *, temp_stock: bool) -> Path:
    """A data dir whose line has produced two cards (and, with ``temp_stock``, one
    temporary card from stock), the line stopped: copied for each test, since
    producing is the slow part."""
    settings = Settings(data_dir=root / "data")
    open_migrated(settings).dispose()
    line = EmbeddedLine(settings, POLICY, LineOptions(stations=1, time_scale=0, seed=7, desk=False))
    line.start()
    try:
        csv = write_users_csv(root / "users.csv", 2, seed=3)
        report = import_batch(line.store, csv, policy=POLICY, requested_by="alice", reject_dir=root)
        assert report.batch_id is not None
        approve_batch(line.store, report.batch_id, by="bob")
        if temp_stock:
            batch, _ = tempcards.request_stock(line.store, 1, by="alice", policy=POLICY)
            approve_batch(line.store, batch, by="bob")
        assert line.wait_drained(timeout_s=60)
    finally:
        line.stop()
    return root / "data"


@pytest.fixture(scope="module")
def produced(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _produce(tmp_path_factory.mktemp("produced"), temp_stock=False)


@pytest.fixture(scope="module")
def produced_with_stock(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _produce(tmp_path_factory.mktemp("produced_stock"), temp_stock=True)


def _world(template: Path, tmp_path: Path, **options: Any) -> Iterator[World]:
    shutil.copytree(template, tmp_path / "data")
    settings = Settings(data_dir=tmp_path / "data")
    line = EmbeddedLine(
        settings, POLICY, LineOptions(stations=1, time_scale=0, seed=7, desk=False, **options)
    )
    line.start()
    try:
        yield World(line, tmp_path)
    finally:
        line.stop()


@pytest.fixture
def world(produced: Path, tmp_path: Path) -> Iterator[World]:
    """A line that has produced two cards, its desk left to the test."""
    yield from _world(produced, tmp_path)


def first_card(world: World) -> Credential:
    with world.store.read() as s:
        return s.scalars(select(Credential).order_by(Credential.id)).first()


def certs(world: World, card_id: int) -> list[Certificate]:
    with world.store.read() as s:
        return list(
            s.scalars(
                select(Certificate)
                .where(Certificate.credential_id == card_id)
                .order_by(Certificate.id)
            )
        )


def chip_of(world: World, card: Credential) -> SimToken:
    """The card's chip as a reader would see it now: logged in with its PIN."""
    token = SimToken(
        SimTimings(),
        SimFaults(fault_rate=0.0),
        world.line.desk_reader.clock,
        random.Random(1),
        chips=world.line.chips,
    )
    pin = world.line.box.open(card.pin_sealed, context=context("credential", card.id, "pin"))
    token.open_card(card.chip_serial, pin)
    return token


def insert(world: World, card: Credential) -> list[tuple[int, str]]:
    return world.line.desk.serve(ChipInfo(atr=SIM_ATR, serial=card.chip_serial or ""))


def test_a_renewal_waits_for_the_card_and_the_store_shows_the_old_certificates_on_the_chip(
    world,
):
    card = first_card(world)
    before = certs(world, card.id)
    assert all(c.on_chip for c in before)

    assert renew_card(world.store, str(card.id), by="olga") == "active"

    with world.store.read() as s:
        (update,) = updates.open_updates(s, card.id)
        assert (update.state, update.kind) == ("pending", "renew")
        assert update.plan == {"usages": ["authentication", "signature"]}
    assert [(c.id, c.state, c.on_chip) for c in certs(world, card.id)] == [
        (c.id, "valid", True) for c in before
    ]
    with pytest.raises(StateConflict, match="still pending"):
        renew_card(world.store, str(card.id), by="olga")


def test_at_the_desk_the_chip_gets_new_keys_and_certificates_and_loses_the_old_ones(world):
    card = first_card(world)
    before = {c.usage: c for c in certs(world, card.id)}
    renew_card(world.store, str(card.id), by="olga")

    assert insert(world, card) == [(1, "applied")]
    assert world.line.wait_drained(timeout_s=60)

    after = certs(world, card.id)
    on_chip = {c.usage: c for c in after if c.on_chip}
    assert sorted(on_chip) == ["authentication", "encryption", "signature"]
    assert on_chip["encryption"].id == before["encryption"].id  # the escrowed key stays
    for usage in ("authentication", "signature"):
        old, new = before[usage], on_chip[usage]
        assert new.update_id == 1
        assert new.state == "valid"
        assert _spki(new.pem) != _spki(old.pem)  # a new key, made on the chip
        gone = next(c for c in after if c.id == old.id)
        assert (gone.state, gone.revocation_reason, gone.on_chip) == (
            "revoked",
            "superseded",
            False,
        )
    # The chip itself: exactly what the store says, and the same PIN opens it.
    chip = chip_of(world, card)
    listed = {o.cert_serial for o in chip.objects()}
    assert listed == {c.serial for c in on_chip.values()}
    assert not any(o.fresh for o in chip.objects())


def test_a_card_without_pending_updates_is_left_alone_at_the_desk(world):
    card = first_card(world)
    assert insert(world, card) == []
    assert world.line.desk.serve(ChipInfo(atr=SIM_ATR, serial="0000000000000000")) == []


class Killed(BaseException):
    """The desk process dies here (not an error it could handle)."""


MUTATIONS = ("generate_key", "write_certificate", "delete_key", "unblock", "change_puk")
STORE_STEPS = ("step", "mark_written", "apply_renewal", "apply_new_secrets", "apply_wipe")


def _kill_after_chip_op(token: SimToken, n: int, monkeypatch) -> None:
    count = {"ops": 0}
    for name in MUTATIONS:
        real = getattr(token, name)

        def wrapped(*args: Any, _real: Any = real, **kw: Any) -> Any:
            result = _real(*args, **kw)
            count["ops"] += 1
            if count["ops"] == n:
                raise Killed(f"after chip operation {n}")
            return result

        monkeypatch.setattr(token, name, wrapped)


def _kill_before_store_step(n: int, monkeypatch) -> None:
    count = {"steps": 0}
    for name in STORE_STEPS:
        real = getattr(updates, name)

        def wrapped(*args: Any, _real: Any = real, **kw: Any) -> Any:
            count["steps"] += 1
            if count["steps"] == n:
                raise Killed(f"before store step {n}")
            return _real(*args, **kw)

        monkeypatch.setattr(updates, name, wrapped)


# A renewal of two usages: 2 keys generated, 2 certificates written, 2 old keys
# deleted (6 chip operations); 3 journal steps, the read-back mark and the apply (5).
KILL_POINTS = [("chip", n) for n in range(1, 7)] + [("store", n) for n in range(1, 6)]


@pytest.mark.parametrize(("where", "n"), KILL_POINTS, ids=[f"{w}{n}" for w, n in KILL_POINTS])
def test_a_desk_killed_at_any_moment_of_a_renewal_completes_it_exactly_once(
    world, monkeypatch, where, n
):
    card = first_card(world)
    before = {c.serial for c in certs(world, card.id) if c.usage != "encryption"}
    renew_card(world.store, str(card.id), by="olga")
    desk = world.line.desk
    with monkeypatch.context() as m:
        if where == "chip":
            _kill_after_chip_op(desk.token, n, m)  # type: ignore[arg-type]
        else:
            _kill_before_store_step(n, m)
        with pytest.raises(Killed):
            insert(world, card)
    # Whatever the moment, the chip holds working credentials for each usage: the
    # old ones, the new ones, or both (never neither).
    chip = chip_of(world, card)
    with world.store.read() as s:
        valid = {
            c.serial
            for c in s.scalars(
                select(Certificate).where(
                    Certificate.credential_id == card.id, Certificate.state == "valid"
                )
            )
        }
    for usage in ("authentication", "signature"):
        assert any(o.usage == usage and o.cert_serial in valid for o in chip.objects()), (
            f"no working {usage} credential on the chip"
        )
    chip.close()

    # The desk comes back (the same desk restarted, or the card at another insertion).
    assert insert(world, card) == [(1, "applied")]
    assert world.line.wait_drained(timeout_s=60)

    after = certs(world, card.id)
    new = [c for c in after if c.update_id == 1]
    assert sorted(c.usage for c in new) == ["authentication", "signature"]
    assert all(c.state == "valid" and c.on_chip for c in new)
    assert {c.serial for c in after if c.serial in before and c.state == "revoked"} == before
    chip = chip_of(world, card)
    assert {o.cert_serial for o in chip.objects() if o.usage != "encryption"} == {
        c.serial for c in new
    }
    assert not any(o.fresh for o in chip.objects())
    with world.store.read() as s:
        applied = s.scalar(
            select(func.count()).where(
                AuditEvent.entity == "card_update", AuditEvent.action == "apply"
            )
        )
        assert applied == 1
        assert s.get(CardUpdate, 1).state == "applied"


def _spki(pem: str) -> bytes:
    return (
        x509.load_pem_x509_certificate(pem.encode())
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def test_the_sim_desk_reader_answers_for_the_card_inserted(tmp_path):
    reader, _ = make_sim_desk(
        time_scale=0,
        seed=1,
        chips=SimChipStore(tmp_path, SecretBox(b"k" * 32)),
    )
    reader.insert("ABCDEF")
    assert reader.read_chip(1.0).serial == "ABCDEF"
    assert desk_module.DeskConfig(station_id="D").lease_s > 0


def _show(world: World, card: Credential) -> dict[str, Any]:
    token = token_for(world.store, "audrey", ["auditor"])
    result = CliRunner().invoke(
        main,
        ["card", "show", str(card.id), "--json", "--data-dir", str(world.tmp / "data")],
        env={"CARDLINE_TOKEN": token},
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    shown: dict[str, Any] = json.loads(result.output)
    return shown


def test_card_show_says_what_is_on_the_chip_before_and_after_the_desk(world):
    card = first_card(world)
    renew_card(world.store, str(card.id), by="olga")

    pending = _show(world, card)
    assert [(u["kind"], u["state"]) for u in pending["updates"]] == [("renew", "pending")]
    assert {(c["usage"], c["state"], c["on_chip"]) for c in pending["certificate_list"]} == {
        ("authentication", "valid", True),
        ("signature", "valid", True),
        ("encryption", "valid", True),
    }

    insert(world, card)
    done = _show(world, card)
    (update,) = done["updates"]
    assert update["state"] == "applied"
    assert update["steps_done"] == ["keys", "written", "erased"]
    assert update["applied_at"]
    rows = {(c["usage"], c["state"], c["on_chip"]) for c in done["certificate_list"]}
    assert rows == {
        ("authentication", "valid", True),
        ("signature", "valid", True),
        ("encryption", "valid", True),
        ("authentication", "revoked", False),
        ("signature", "revoked", False),
    }
    # The table form says the same to a person.
    token = token_for(world.store, "audrey", ["auditor"])
    table = CliRunner().invoke(
        main,
        ["card", "show", str(card.id), "--data-dir", str(world.tmp / "data")],
        env={"CARDLINE_TOKEN": token, "COLUMNS": "200"},
    )
    assert table.exit_code == 0
    assert "superseded" in table.output
    assert "applied" in table.output


# --- help-desk unblock (point 6) ----------------------------------------------------


def _secret(world: World, card: Credential, what: str) -> Secret:
    sealed = getattr(card, f"{what}_sealed")
    return world.line.box.open(sealed, context=context("credential", card.id, what))


def test_the_help_desk_answer_unblocks_the_card_with_a_new_pin(world):
    card = first_card(world)
    chip = chip_of(world, card)
    for _ in range(3):
        chip.verify_pin(Secret("000000"))  # the holder forgets the PIN: blocked
    with pytest.raises(DeviceFault, match="blocked"):
        chip.verify_pin(_secret(world, card, "pin"))
    on_card = SoftAdminKeyCard(
        chip, admin_key=_secret(world, card, "admin_key"), puk=_secret(world, card, "puk")
    )
    challenge = on_card.challenge()

    token = token_for(world.store, "hilda", ["help_desk"])
    result = CliRunner().invoke(
        main,
        [
            "card",
            "unblock",
            card.card_number,
            "--challenge",
            challenge.lower(),
            "--data-dir",
            str(world.tmp / "data"),
        ],
        env={"CARDLINE_TOKEN": token},
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    response = result.output.strip()
    on_card.unblock_with_response(response, Secret("424242"))
    assert chip.verify_pin(Secret("424242"))
    with world.store.read() as s:
        (event,) = s.scalars(
            select(AuditEvent).where(AuditEvent.entity == "card", AuditEvent.action == "unblock")
        ).all()
        assert event.actor.startswith("principal:")
        assert response not in (event.reason or "")


def test_unblock_is_for_the_help_desk_and_refuses_a_card_not_in_use(world):
    card = first_card(world)
    data = ["--data-dir", str(world.tmp / "data")]
    token = token_for(world.store, "olga", ["operator"])
    refused = CliRunner().invoke(
        main,
        ["card", "unblock", str(card.id), "--challenge", "00" * 8, *data],
        env={"CARDLINE_TOKEN": token},
    )
    assert refused.exit_code != 0
    assert "may not card.unblock: it needs the role admin or help_desk" in refused.output
    lifecycle.lock_card(world.store, str(card.id), by="olga", reason="key_compromise")
    with pytest.raises(StateConflict, match="'locked'"):
        unblock_response(world.store, world.line.box, str(card.id), "00" * 8, by="hilda")
    with pytest.raises(ValidationFailed, match="challenge"):
        unblock_response(world.store, world.line.box, str(card.id), "xyz", by="hilda")


# --- recovery of escrowed keys onto a card in use (point 5) --------------------------


def _second_card(world: World) -> tuple[Credential, Credential]:
    """The holder of the first card gets a second one (the first stays in use)."""
    first = first_card(world)
    with world.store.read() as s:
        email = s.get(Credential, first.id).user.email  # type: ignore[union-attr]
    (second_id,) = request_cards(world.store, [email], by="rita", policy=POLICY)
    approve_card(world.store, str(second_id), by="bob")
    assert world.line.wait_drained(timeout_s=60)
    with world.store.read() as s:
        return first, s.get(Credential, second_id)  # type: ignore[return-value]


def _escrow_serial(world: World, card: Credential) -> str:
    return next(
        c.serial for c in certs(world, card.id) if c.usage == "encryption" and c.attempt_id is None
    )


def test_the_operator_chooses_escrowed_keys_and_the_desk_writes_them_to_a_card_in_use(world):
    first, second = _second_card(world)
    (key,) = escrow.holder_keys(world.store, str(second.id))
    assert key.serial == _escrow_serial(world, first)
    with pytest.raises(ValidationFailed, match="not an escrowed key"):
        escrow.request_key_recovery(world.store, str(second.id), by="olga", serials=["ab12"])

    assert (
        escrow.request_key_recovery(world.store, str(second.id), by="olga", serials=[key.serial])
        == 1
    )
    assert insert(world, second) == [(1, "applied")]

    chip = chip_of(world, second)
    recovered = [o for o in chip.objects() if o.cert_serial == key.serial]
    assert [(o.usage, o.origin) for o in recovered] == [("encryption", "recovered")]
    # Its own keys are untouched.
    assert {o.cert_serial for o in chip.objects()} >= {
        c.serial for c in certs(world, second.id) if c.on_chip
    }


def test_a_desk_killed_after_writing_a_recovered_key_does_not_write_it_twice(world, monkeypatch):
    _, second = _second_card(world)
    escrow.request_key_recovery(world.store, str(second.id), by="olga")
    with monkeypatch.context() as m:
        _kill_before_store_step(1, m)  # the key is on the chip, the journal not yet
        with pytest.raises(Killed):
            insert(world, second)
    assert insert(world, second) == [(1, "applied")]
    chip = chip_of(world, second)
    assert sum(1 for o in chip.objects() if o.origin == "recovered") == 1


# --- temporary cards: assignment and withdrawal written at the desk (point 4) --------


@pytest.fixture
def temp_world(produced_with_stock: Path, tmp_path: Path) -> Iterator[tuple[World, Credential]]:
    """A line with a temporary card made from stock, assigned (at no desk yet)."""
    for world in _world(produced_with_stock, tmp_path):
        with world.store.read() as s:
            email = s.scalars(select(Credential).order_by(Credential.id)).first().user.email
            temp_id = s.scalar(select(func.max(Credential.id)))
        tempcards.assign(world.store, str(temp_id), email, by="olga", policy=POLICY)
        with world.store.read() as s:
            yield world, s.get(Credential, temp_id)  # type: ignore[misc]


def _fresh(world: World, card_id: int) -> Credential:
    with world.store.read() as s:
        cred = s.get(Credential, card_id)
        assert cred is not None
        return cred


def _opens_with_the_stored_secrets(world: World, card_id: int) -> SimToken:
    """The chip takes the PIN and the PUK the store keeps for it (else the holder's
    letter and the help desk would be wrong)."""
    cred = _fresh(world, card_id)
    chip = chip_of(world, cred)  # logs in with the stored PIN
    chip.unblock(_secret(world, cred, "puk"), _secret(world, cred, "pin"))
    return chip


ASSIGN_KILLS = [("chip", n) for n in range(1, 8)] + [("store", n) for n in range(1, 8)]
WIPE_KILLS = [("chip", n) for n in range(1, 6)] + [("store", n) for n in range(1, 4)]


def _kill(world: World, where: str, n: int, m: Any) -> None:
    if where == "chip":
        _kill_after_chip_op(world.line.desk.token, n, m)  # type: ignore[arg-type]
    else:
        _kill_before_store_step(n, m)


@pytest.mark.parametrize(("where", "n"), ASSIGN_KILLS, ids=[f"{w}{n}" for w, n in ASSIGN_KILLS])
def test_an_assignment_killed_at_any_moment_gives_the_holder_new_keys_and_a_working_pin(
    temp_world, monkeypatch, where, n
):
    world, card = temp_world
    stock = {c.serial for c in certs(world, card.id)}
    with monkeypatch.context() as m:
        _kill(world, where, n, m)
        with pytest.raises(Killed):
            insert(world, card)
    assert insert(world, card) == [(_open_update(world, card.id), "applied")]
    assert world.line.wait_drained(timeout_s=60)

    chip = _opens_with_the_stored_secrets(world, card.id)
    mine = {c.serial for c in certs(world, card.id) if c.on_chip}
    assert {o.cert_serial for o in chip.objects()} == mine
    assert not mine & stock - {_escrow_serial(world, card)}
    assert _fresh(world, card.id).pin_letter_path is not None  # the new PIN's letter


@pytest.mark.parametrize(("where", "n"), WIPE_KILLS, ids=[f"{w}{n}" for w, n in WIPE_KILLS])
def test_a_withdrawal_killed_at_any_moment_leaves_an_empty_chip_with_new_secrets(
    temp_world, monkeypatch, where, n
):
    world, card = temp_world
    assert insert(world, card)[0][1] == "applied"  # the holder had it
    held = _fresh(world, card.id)
    tempcards.withdraw(world.store, str(card.id), by="olga")
    with monkeypatch.context() as m:
        _kill(world, where, n, m)
        with pytest.raises(Killed):
            insert(world, card)
    assert insert(world, card) == [(_open_update(world, card.id), "applied")]

    chip = _opens_with_the_stored_secrets(world, card.id)
    assert chip.objects() == ()
    wiped = _fresh(world, card.id)
    assert wiped.pin_sealed != held.pin_sealed
    assert wiped.puk_sealed != held.puk_sealed
    assert not any(c.on_chip for c in certs(world, card.id))


def _open_update(world: World, card_id: int) -> int:
    with world.store.read() as s:
        return max(
            u.id for u in s.scalars(select(CardUpdate).where(CardUpdate.credential_id == card_id))
        )


def test_an_assignment_that_ends_without_a_withdrawal_revokes_the_holders_certificates(
    temp_world,
):
    from producers.expiry import check_expiry
    from schemas.expiry import ExpiryConfig

    world, card = temp_world
    assert insert(world, card)[0][1] == "applied"
    held = [c for c in certs(world, card.id) if c.update_id is not None]
    assert held
    assert all(c.state == "valid" for c in held)
    until = _fresh(world, card.id).assigned_until
    assert until is not None

    before = check_expiry(world.store, ExpiryConfig(), now=until - dt.timedelta(days=1))
    assert before.revoked_at_assignment_end == 0
    report = check_expiry(world.store, ExpiryConfig(), now=until + dt.timedelta(hours=1))

    assert report.revoked_at_assignment_end == len(held)
    after = {c.serial: c for c in certs(world, card.id)}
    for c in held:
        assert after[c.serial].state == "revoked"
        assert after[c.serial].revocation_reason == "cessation_of_operation"
    assert _fresh(world, card.id).state == "assigned"  # it still has to be handed back
    assert (
        check_expiry(
            world.store, ExpiryConfig(), now=until + dt.timedelta(hours=2)
        ).revoked_at_assignment_end
        == 0
    )


# --- a PIN reset with the PUK at the desk (point 6) ------------------------------------


def _block_pin(world: World, card: Credential) -> None:
    """The holder typed wrong PINs until the chip blocked it."""
    chip = chip_of(world, card)
    while chip.pin_tries_left:
        chip.verify_pin(Secret("000000"))
    with pytest.raises(DeviceFault, match="blocked"):
        chip.verify_pin(Secret("000000"))
    chip.close()


def test_a_blocked_pin_is_reset_with_the_puk_at_the_desk_and_a_new_letter_follows(world):
    from producers.unblock import request_pin_reset

    card = first_card(world)
    before = [(c.serial, c.state, c.on_chip) for c in certs(world, card.id)]
    _block_pin(world, card)
    update_id = request_pin_reset(world.store, str(card.id), by="helen")
    assert insert(world, card) == [(update_id, "applied")]
    reset = _fresh(world, card.id)
    assert reset.pin_sealed != card.pin_sealed
    assert reset.puk_sealed == card.puk_sealed  # the PUK is kept
    chip = chip_of(world, reset)  # the new PIN opens the card
    assert chip.pin_tries_left > 0
    assert world.line.wait_drained(timeout_s=60)
    assert _fresh(world, card.id).pin_letter_path is not None  # the new PIN's letter
    # Every certificate stays as it was: only the PIN changed.
    assert [(c.serial, c.state, c.on_chip) for c in certs(world, card.id)] == before


def test_a_pin_reset_goes_first_when_the_pin_no_longer_opens_the_card(world):
    from producers.unblock import request_pin_reset

    card = first_card(world)
    renew_card(world.store, str(card.id), by="olga")
    _block_pin(world, card)
    assert insert(world, card) == []  # the renewal cannot open the card
    reset_id = request_pin_reset(world.store, str(card.id), by="helen")
    done = insert(world, card)
    assert done[0] == (reset_id, "applied")
    assert [state for _, state in done] == ["applied", "applied"]  # then the renewal
    renewed = [c for c in certs(world, card.id) if c.update_id is not None]
    assert renewed
    assert all(c.on_chip for c in renewed)


def test_a_pin_reset_is_refused_twice_and_for_a_card_not_in_use(world):
    from producers.unblock import request_pin_reset

    card = first_card(world)
    request_pin_reset(world.store, str(card.id), by="helen")
    with pytest.raises(StateConflict, match="already waits"):
        request_pin_reset(world.store, str(card.id), by="helen")
    with world.store.read() as s:
        other = s.scalars(select(Credential.id).where(Credential.id != card.id)).first()
    lifecycle.lock_card(world.store, str(other), by="olga", reason="key_compromise")
    with pytest.raises(StateConflict, match="reset_pin"):
        request_pin_reset(world.store, str(other), by="helen")


# --- the renewal's options (seed 002 §5.3.5): which certificates, same keys, recovery --


def test_a_renewal_delivers_only_the_certificates_chosen(world):
    card = first_card(world)
    before = {c.usage: c.serial for c in certs(world, card.id) if c.on_chip}
    renew_card(world.store, str(card.id), by="olga", usages=["signature"])
    assert insert(world, card) == [(1, "applied")]
    after = {c.usage: c for c in certs(world, card.id) if c.on_chip}
    assert after["signature"].serial != before["signature"]
    assert after["authentication"].serial == before["authentication"]  # untouched
    assert after["authentication"].state == "valid"
    chip = chip_of(world, card)
    assert {o.cert_serial for o in chip.objects()} == {c.serial for c in after.values()}


def test_a_re_certification_keeps_the_chips_keys_and_replaces_their_certificates(world):
    card = first_card(world)
    keys_before = {o.usage: o.key_id for o in chip_of(world, card).objects()}
    old = [c for c in certs(world, card.id) if c.on_chip and c.usage != "encryption"]
    renew_card(world.store, str(card.id), by="olga", keep_keys=True)
    assert insert(world, card) == [(1, "applied")]
    chip = chip_of(world, card)
    assert {o.usage: o.key_id for o in chip.objects()} == keys_before  # the same keys
    new = [c for c in certs(world, card.id) if c.update_id == 1]
    assert sorted(c.usage for c in new) == ["authentication", "signature"]
    assert {o.cert_serial for o in chip.objects() if o.usage != "encryption"} == {
        c.serial for c in new
    }
    by_serial = {c.serial: c for c in certs(world, card.id)}
    for c in old:
        assert by_serial[c.serial].state == "revoked"
        assert by_serial[c.serial].on_chip is False
    for c in new:  # each new certificate is for the key the chip already had
        key = next(o for o in chip.objects() if o.cert_serial == c.serial)
        assert _spki(c.pem) == _spki_of_key(key.public_key_pem)


def _spki_of_key(pem: str) -> bytes:
    return serialization.load_pem_public_key(pem.encode()).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_a_renewal_with_recovery_writes_the_holders_earlier_keys_in_the_same_visit(world):
    _, second = _second_card(world)
    renew_card(world.store, str(second.id), by="olga", recover=[])
    with world.store.read() as s:
        kinds = [(u.kind, u.state) for u in updates.open_updates(s, second.id)]
    assert kinds == [("renew", "pending"), ("recover", "pending")]
    done = insert(world, second)
    assert [state for _, state in done] == ["applied", "applied"]
    chip = chip_of(world, second)
    assert sum(1 for o in chip.objects() if o.origin == "recovered") == 1


def test_a_renewal_of_a_usage_the_chip_did_not_make_is_refused_naming_the_field(world):
    card = first_card(world)
    with pytest.raises(ValidationFailed) as err:
        renew_card(world.store, str(card.id), by="olga", usages=["encryption"])
    assert err.value.field == "usages"
    with world.store.read() as s:
        assert updates.open_updates(s, card.id) == []
        assert s.get(Credential, card.id).state == "active"  # nothing half-done


def test_the_renewal_options_work_from_the_cli(world):
    card = first_card(world)
    token = token_for(world.store, "olga", ["operator"])
    result = CliRunner().invoke(
        main,
        [
            *("card", "renew", str(card.id), "--usage", "signature", "--keep-keys"),
            *("--data-dir", str(world.tmp / "data")),
        ],
        env={"CARDLINE_TOKEN": token},
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    with world.store.read() as s:
        (row,) = updates.open_updates(s, card.id)
        assert row.plan == {"usages": ["signature"], "keep_keys": True}


def test_the_renewal_options_work_over_http_and_a_wrong_usage_names_the_field(world):
    from tests.unit.test_api import _app

    card = first_card(world)
    client = _app(world.store, world.tmp)
    headers = {"Authorization": f"Bearer {token_for(world.store, 'olga', ['operator'])}"}
    wrong = client.post(f"/cards/{card.id}/renew", json={"usages": ["signing"]}, headers=headers)
    assert wrong.status_code == 422
    assert "usages" in wrong.text
    done = client.post(
        f"/cards/{card.id}/renew",
        json={"usages": ["authentication"], "recover": None},
        headers=headers,
    )
    assert done.status_code == 200, done.text
    with world.store.read() as s:
        (row,) = updates.open_updates(s, card.id)
        assert row.plan == {"usages": ["authentication"]}
    again = client.post(f"/cards/{card.id}/renew", headers=headers)
    assert again.status_code == 409  # one update at a time


def test_the_escrowed_encryption_key_is_re_certified_never_replaced(world):
    card = first_card(world)
    with pytest.raises(ValidationFailed, match="re-certified with keep_keys"):
        renew_card(world.store, str(card.id), by="olga", usages=["encryption"])
    (old,) = [c for c in certs(world, card.id) if c.usage == "encryption"]
    key_before = {o.usage: o.key_id for o in chip_of(world, card).objects()}
    renew_card(world.store, str(card.id), by="olga", usages=["encryption"], keep_keys=True)
    assert insert(world, card) == [(1, "applied")]
    (new,) = [c for c in certs(world, card.id) if c.update_id == 1]
    assert new.usage == "encryption"
    assert _spki(new.pem) == _spki(old.pem)  # the same escrowed key
    chip = chip_of(world, card)
    assert {o.usage: o.key_id for o in chip.objects()} == key_before
    enc = next(o for o in chip.objects() if o.usage == "encryption")
    assert enc.cert_serial == new.serial
    after = {c.serial: c for c in certs(world, card.id)}
    assert after[old.serial].state == "revoked"
    assert after[old.serial].on_chip is False
    # The key stays escrowed and is no chip-made key: a plain renewal leaves it alone.
    with world.store.read() as s:
        assert updates.generated_usages(s, card.id) == ["authentication", "signature"]
        assert s.get(Credential, card.id).escrow_key_sealed == card.escrow_key_sealed


def test_card_show_gives_the_cards_timeline_and_its_attempts(world):
    card = first_card(world)
    shown = _show(world, card)
    actions = [e["action"] for e in shown["events"]]
    assert actions[0] == "create"
    assert "complete" in actions
    assert actions.index("claim") < actions.index("complete")
    assert [e["seq"] for e in shown["events"]] == sorted(e["seq"] for e in shown["events"])
    (attempt,) = [a for a in shown["attempt_list"] if a["state"] == "succeeded"]
    assert attempt["station_id"] == "ST1"
    assert attempt["chip_serial"] == card.chip_serial
    token = token_for(world.store, "audrey", ["auditor"])
    text = CliRunner().invoke(
        main,
        ["card", "show", str(card.id), "--data-dir", str(world.tmp / "data")],
        env={"CARDLINE_TOKEN": token, "COLUMNS": "200"},
        catch_exceptions=False,
    )
    assert text.exit_code == 0, text.output
    assert "timeline" in text.output
    assert "attempts" in text.output


def test_a_stations_encoder_applies_the_updates_of_a_card_put_in_by_hand(produced, tmp_path):
    import time

    for world in _world(produced, tmp_path, station_updates=True):
        card = first_card(world)
        renew_card(world.store, str(card.id), by="olga")
        station = world.line.stations[0]
        station.reader.insert(card.chip_serial)  # between print jobs, by hand
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with world.store.read() as s:
                (row,) = s.scalars(select(CardUpdate)).all()
                if row.state == "applied":
                    break
            time.sleep(0.05)
        assert row.state == "applied"
        assert row.station_id == "ST1"  # the encoder did it, no desk
        new = [c for c in certs(world, card.id) if c.update_id == row.id]
        assert sorted(c.usage for c in new) == ["authentication", "signature"]
        assert all(c.on_chip for c in new)
        chip = chip_of(world, card)
        assert {o.cert_serial for o in chip.objects() if o.usage != "encryption"} == {
            c.serial for c in new
        }
        # And the station goes on producing blanks as before.
        with world.store.read() as s:
            email = s.get(Credential, card.id).user.email  # type: ignore[union-attr]
        (next_id,) = request_cards(world.store, [email], by="rita", policy=POLICY)
        approve_card(world.store, str(next_id), by="bob")
        assert world.line.wait_drained(timeout_s=60)
        with world.store.read() as s:
            assert s.get(Credential, next_id).state == "active"  # type: ignore[union-attr]
