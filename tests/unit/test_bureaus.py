"""Service bureaus (issue 15): order files out, delivery files in, every card accounted
for. The bureau is ``ops.bureau_sim``, written from the published format alone."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import func, select

from db.models import AuditEvent, BureauFile, BureauLine, Credential
from ops import bureau_sim
from ops.cli import main
from ops.config import Settings
from ops.line import EmbeddedLine, LineOptions
from ops.store import open_migrated
from producers import bureaus
from producers.approvals import approve_batch
from producers.batch_import import import_batch
from producers.generate import write_users_csv
from schemas import bureau as fmt
from schemas.errors import ConfigurationError, ValidationFailed
from tests.principals import token_for

CARDS = 6


@dataclass
class Bureau:
    settings: Settings
    line: EmbeddedLine
    keys: Path  # the simulated bureau's keys
    tmp: Path

    @property
    def store(self) -> Any:
        return self.line.store

    @property
    def config(self) -> fmt.BureauConfig:
        return self.settings.bureaus["east"]

    def me(self) -> bureaus.Identity:
        return bureaus.identity(self.tmp / "data" / "bureaus", self.settings.secret_box())

    def export(self) -> bureaus.Exported | None:
        return bureaus.export_order(
            self.store,
            "east",
            self.config,
            self.me(),
            self.tmp / "orders",
            by="olga",
            policy=self.settings.policy,
        )

    def delivery(self, exported: bureaus.Exported, sequence: int, **kw: Any) -> fmt.DeliveryFile:
        order = bureau_sim.read_order(exported.path.read_bytes(), self.keys, self.me().certificate)
        return bureau_sim.produce(order, sequence=sequence, **kw)

    def signed(self, delivery: fmt.DeliveryFile) -> bytes:
        return bureau_sim.sign_delivery(delivery, self.keys)

    def deliver(self, data: bytes) -> bureaus.Imported:
        return bureaus.import_delivery(
            self.store, "east", self.config, data, by="olga", policy=self.settings.policy
        )

    def states(self) -> dict[str, int]:
        with self.store.read() as s:
            return dict(
                s.execute(select(Credential.state, func.count()).group_by(Credential.state)).all()
            )

    def snapshot(self) -> tuple[Any, ...]:
        """Everything an import could change."""
        with self.store.read() as s:
            return (
                self.states(),
                s.scalar(select(func.count()).select_from(AuditEvent)),
                s.scalar(select(func.count()).select_from(BureauFile)),
                sorted(s.execute(select(BureauLine.order_line_id, BureauLine.state)).all()),
                sorted(s.scalars(select(Credential.chip_serial)).all(), key=str),
            )


def _settings(root: Path, keys: Path) -> Settings:
    config = root / "cardline.toml"
    config.write_text(
        f"""
[bureaus.east]
signing_certificate = "{keys / "sign.pem"}"
encryption_certificate = "{keys / "enc.pem"}"
lines = ["east"]
"""
    )
    return Settings(data_dir=root / "data", config=config)


def _line(settings: Settings) -> EmbeddedLine:
    return EmbeddedLine(
        settings, settings.policy, LineOptions(stations=1, time_scale=0, seed=5, desk=False)
    )


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir whose cards wait ready for the bureau, and the bureau's keys: made
    once, copied for each test (preparing is the slow part)."""
    root = tmp_path_factory.mktemp("bureau")
    keys = root / "bureau"
    bureau_sim.make_keys(keys)
    settings = _settings(root, keys)
    open_migrated(settings).dispose()
    line = _line(settings)
    line.start()
    try:
        csv = write_users_csv(root / "users.csv", CARDS, seed=11)
        report = import_batch(
            line.store,
            csv,
            policy=settings.policy,
            requested_by="alice",
            reject_dir=root,
            line="east",
        )
        assert report.batch_id is not None
        approve_batch(line.store, report.batch_id, by="bob")
        assert line.wait_drained(timeout_s=60)
    finally:
        line.stop()
    return root


@pytest.fixture
def east(prepared: Path, tmp_path: Path) -> Iterator[Bureau]:
    shutil.copytree(prepared / "data", tmp_path / "data")
    shutil.copytree(prepared / "bureau", tmp_path / "bureau")
    settings = _settings(tmp_path, tmp_path / "bureau")
    line = _line(settings)
    line.start()
    try:
        yield Bureau(settings, line, tmp_path / "bureau", tmp_path)
    finally:
        line.stop()


def test_cards_on_a_bureau_line_wait_ready_for_its_order_and_no_station_takes_them(east):
    assert east.states() == {"ready": CARDS}
    with east.store.read() as s:
        assert not s.scalars(select(Credential.chip_serial)).first()


def test_an_order_file_takes_every_ready_card_once_and_a_second_export_makes_nothing(east):
    done = east.export()
    assert done is not None
    assert (done.sequence, done.cards) == (1, CARDS)
    assert east.states() == {"at_bureau": CARDS}
    assert east.export() is None  # no card is ordered twice
    order = bureau_sim.read_order(done.path.read_bytes(), east.keys, east.me().certificate)
    assert order.header.record_count == CARDS
    assert len({r.card_number for r in order.records}) == CARDS
    assert {k.usage for k in order.records[0].keys} == {
        "authentication",
        "signature",
        "encryption",
    }


def test_openssl_decrypts_the_order_file_and_verifies_cardlines_signature(east, tmp_path):
    done = east.export()
    assert done is not None
    signed = tmp_path / "signed.der"
    subprocess.run(
        [
            *("openssl", "cms", "-decrypt", "-binary", "-inform", "DER"),
            *("-in", str(done.path), "-recip", str(east.keys / "enc.pem")),
            *("-inkey", str(east.keys / "enc.key"), "-out", str(signed)),
        ],
        check=True,
        capture_output=True,
    )
    ours = tmp_path / "cardline.pem"
    ours.write_bytes(east.me().certificate.public_bytes(serialization.Encoding.PEM))
    verified = subprocess.run(
        [
            *("openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in", str(signed)),
            *("-CAfile", str(ours)),
        ],
        capture_output=True,
        check=False,
    )
    assert verified.returncode == 0, verified.stderr
    assert b"Verification successful" in verified.stderr
    assert json.loads(verified.stdout)["header"]["sequence"] == 1


def test_a_delivery_binds_each_produced_card_to_its_chip_and_the_report_balances(east):
    done = east.export()
    assert done is not None
    delivery = east.delivery(done, 1, seed=3)
    result = east.deliver(east.signed(delivery))
    assert (result.produced, result.reordered, result.failed) == (CARDS, 0, 0)
    assert east.states() == {"issued": CARDS}
    with east.store.read() as s:
        bound = dict(
            s.execute(
                select(BureauLine.order_line_id, Credential.chip_serial).join(
                    Credential, Credential.id == BureauLine.credential_id
                )
            ).all()
        )
    assert bound == {r.order_line_id: r.chip_serial for r in delivery.records}
    found = bureaus.report(east.store, east.settings.bureaus)
    assert found.balanced
    (f,) = found.files
    assert (f.ordered, f.produced, f.rejected, f.outstanding) == (CARDS, CARDS, 0, 0)


def test_a_partial_delivery_leaves_the_rest_outstanding_and_still_balances(east):
    done = east.export()
    assert done is not None
    east.deliver(east.signed(east.delivery(done, 1, seed=3, only=2)))
    assert east.states() == {"issued": 2, "at_bureau": CARDS - 2}
    (f,) = bureaus.report(east.store, east.settings.bureaus).files
    assert (f.produced, f.outstanding, f.difference) == (2, CARDS - 2, 0)
    order = bureau_sim.read_order(done.path.read_bytes(), east.keys, east.me().certificate)
    rest = bureau_sim.produce(order, sequence=2, seed=4)
    rest = fmt.DeliveryFile(
        header=rest.header.model_copy(
            update={"record_count": CARDS - 2, "produced_count": CARDS - 2}
        ),
        records=rest.records[2:],
    )
    east.deliver(east.signed(rest))
    assert east.states() == {"issued": CARDS}


def test_rejected_cards_are_ordered_again_or_failed_by_the_reasons_policy(east):
    done = east.export()
    assert done is not None
    delivery = east.delivery(done, 1, seed=3)
    records = list(delivery.records)
    records[0] = fmt.DeliveryRecord(
        order_line_id=records[0].order_line_id, outcome="rejected", reason="chip_defect"
    )
    records[1] = fmt.DeliveryRecord(
        order_line_id=records[1].order_line_id, outcome="rejected", reason="data_invalid"
    )
    delivery = fmt.DeliveryFile(
        header=delivery.header.model_copy(
            update={"produced_count": CARDS - 2, "rejected_count": 2}
        ),
        records=records,
    )
    result = east.deliver(east.signed(delivery))
    assert (result.produced, result.reordered, result.failed) == (CARDS - 2, 1, 1)
    assert east.states() == {"issued": CARDS - 2, "ready": 1, "failed": 1}
    again = east.export()
    assert again is not None
    assert (again.sequence, again.cards) == (2, 1)  # the chip_defect card, ordered again
    found = bureaus.report(east.store, east.settings.bureaus)
    assert found.balanced
    assert [(f.ordered, f.rejected, f.outstanding) for f in found.files] == [
        (CARDS, 2, 0),
        (1, 0, 1),
    ]


# --- every refusal leaves the store as it was -------------------------------------------


def _forged(east: Bureau, delivery: fmt.DeliveryFile, **header: Any) -> bytes:
    """``delivery`` with header fields changed, validly signed by the bureau (its own
    counts checks bypassed: model_construct)."""
    h = delivery.header.model_copy(update=header)
    content = json.dumps(
        {
            "header": h.model_dump(mode="json"),
            "records": [r.model_dump(mode="json") for r in delivery.records],
        }
    ).encode()
    cert, key = bureau_sim._load(east.keys, "sign")
    return fmt.sign(content, cert, key)


def _other_signer(tmp_path: Path, delivery: fmt.DeliveryFile) -> bytes:
    other = tmp_path / "other"
    bureau_sim.make_keys(other, "Impostor")
    return bureau_sim.sign_delivery(delivery, other)


def _at(n: int, text: str) -> str:
    return f"field 'records.{n}': delivery file refused: {text}"


REFUSALS = [
    "one_byte_changed",
    "signed_by_another_key",
    "out_of_sequence",
    "replayed",
    "another_bureaus",
    "unknown_record",
    "already_delivered",
    "chip_serial_of_another_card",
    "chip_serial_twice",
    "counts_disagree",
    "not_cms",
]


@pytest.mark.parametrize("case", REFUSALS)
def test_a_delivery_file_that_fails_a_check_is_refused_whole_and_changes_nothing(
    east, tmp_path, case
):
    done = east.export()
    assert done is not None
    good = east.delivery(done, 1, seed=3)
    if case in ("replayed", "already_delivered", "chip_serial_of_another_card"):
        first = east.delivery(done, 1, seed=3, only=2)
        first_data = east.signed(first)
        east.deliver(first_data)
    before = east.snapshot()
    records = list(good.records)
    match case:
        case "one_byte_changed":
            data = bytearray(east.signed(good))
            i = data.find(good.records[0].chip_serial.encode())  # type: ignore[union-attr]
            data[i] = ord("0") if data[i] != ord("0") else ord("1")
            data, named = bytes(data), "signed digest"
        case "signed_by_another_key":
            data, named = _other_signer(tmp_path, good), "configured certificate"
        case "out_of_sequence":
            data, named = east.signed(east.delivery(done, 2, seed=3)), "sequence 2 out of order"
        case "replayed":
            data, named = first_data, "already imported"
        case "another_bureaus":
            data, named = _forged(east, good, bureau="west"), "bureau 'west'"
        case "unknown_record":
            records[0] = records[0].model_copy(update={"order_line_id": "east-9-1"})
            data = east.signed(fmt.DeliveryFile(header=good.header, records=records))
            named = (
                "field 'records.0': delivery file refused: order line east-9-1 is not one of east's"
            )
        case "already_delivered":
            again = east.delivery(done, 2, seed=9)
            data = east.signed(again)
            named = _at(0, "order line east-1-1 was already delivered")
        case "chip_serial_of_another_card":
            taken = first.records[0].chip_serial
            rest = east.delivery(done, 2, seed=9)
            recs = rest.records[2:]
            recs[0] = recs[0].model_copy(update={"chip_serial": taken})
            h = rest.header.model_copy(
                update={"record_count": len(recs), "produced_count": len(recs), "rejected_count": 0}
            )
            data = east.signed(fmt.DeliveryFile(header=h, records=recs))
            named = (
                f"field 'records.0': delivery file refused: chip serial {taken} is already bound"
            )
        case "chip_serial_twice":
            records[1] = records[1].model_copy(update={"chip_serial": records[0].chip_serial})
            data = east.signed(fmt.DeliveryFile(header=good.header, records=records))
            named = _at(1, f"chip serial {records[0].chip_serial} appears twice")
        case "counts_disagree":
            data, named = _forged(east, good, produced_count=CARDS - 1), "header counts"
        case "not_cms":
            data, named = b"order_line_id,chip_serial\n", "not a readable CMS file"
    with pytest.raises(ValidationFailed) as err:
        east.deliver(data)
    assert named in str(err.value), str(err.value)
    assert east.snapshot() == before


def test_a_bureau_without_an_rsa_encryption_certificate_is_a_configuration_error(east):
    east.me()  # our own certificate: an EC key, which CMS key transport cannot use
    ours = east.tmp / "data" / "bureaus" / "signing.pem"
    cfg = east.config.model_copy(update={"encryption_certificate": ours})
    with pytest.raises(ConfigurationError, match="RSA"):
        bureaus.export_order(
            east.store,
            "east",
            cfg,
            east.me(),
            east.tmp / "o",
            by="olga",
            policy=east.settings.policy,
        )
    assert east.states() == {"ready": CARDS}


def test_the_published_json_schemas_are_the_formats_own(east):
    folder = Path(fmt.__file__).parent / "published"
    for name, schema in fmt.json_schemas().items():
        assert json.loads((folder / name).read_text()) == schema, name


def test_the_exchange_runs_from_the_command_line(east, tmp_path):
    data = str(east.tmp / "data")
    env = {
        "CARDLINE_TOKEN": token_for(east.store, "bea", ["bureau"]),
        "CARDLINE_CONFIG": str(east.settings.config),
    }
    runner = CliRunner()
    out = runner.invoke(
        main, ["bureau", "export", "--bureau", "east", "--json", "--data-dir", data], env=env
    )
    assert out.exit_code == 0, out.output
    path = Path(json.loads(out.output)["path"])
    cert = runner.invoke(main, ["bureau", "certificate", "--data-dir", data], env=env)
    ours = tmp_path / "ours.pem"
    ours.write_text(cert.output)
    delivery = tmp_path / "delivery.p7s"
    assert (
        bureau_sim.main(
            [
                *("produce", str(path), "--keys", str(east.keys), "--cardline-cert", str(ours)),
                *("--sequence", "1", "--out", str(delivery), "--seed", "2", "--reject-rate", "0.3"),
            ]
        )
        == 0
    )
    imported = runner.invoke(
        main, ["bureau", "import", str(delivery), "--bureau", "east", "--data-dir", data], env=env
    )
    assert imported.exit_code == 0, imported.output
    report = runner.invoke(main, ["bureau", "report", "--json", "--data-dir", data], env=env)
    assert report.exit_code == 0, report.output
    assert json.loads(report.output)["balanced"] is True
    refused = runner.invoke(
        main, ["bureau", "import", str(delivery), "--bureau", "east", "--data-dir", data], env=env
    )
    assert refused.exit_code != 0
    assert "already imported" in refused.output
    x509.load_pem_x509_certificate(ours.read_bytes())  # a certificate to give the bureau


def test_the_exchange_runs_over_http_for_the_bureau_role(east, tmp_path):
    from fastapi.testclient import TestClient

    from producers.api.app import create_app
    from producers.api.context import ApiContext

    ctx = ApiContext(
        store=east.store,
        box=east.settings.secret_box(),
        policy=east.settings.policy,
        pki=east.settings.pki,
        crl_dir=tmp_path / "crl",
        ca_chain=tmp_path / "ca-chain.pem",
        rejects_dir=tmp_path / "rejects",
        bureaus=east.settings.bureaus,
        bureau_dir=east.tmp / "data" / "bureaus",
    )
    client = TestClient(create_app(ctx), raise_server_exceptions=False)
    bureau = {"Authorization": f"Bearer {token_for(east.store, 'bea', ['bureau'])}"}
    clerk = {"Authorization": f"Bearer {token_for(east.store, 'rita', ['requester'])}"}
    assert client.post("/bureaus/east/orders", headers=clerk).status_code == 403
    assert client.post("/bureaus/west/orders", headers=bureau).status_code == 404
    order = client.post("/bureaus/east/orders", headers=bureau)
    assert order.status_code == 200, order.text
    assert order.headers["X-Order-Cards"] == str(CARDS)
    assert client.post("/bureaus/east/orders", headers=bureau).status_code == 204
    parsed = bureau_sim.read_order(order.content, east.keys, east.me().certificate)
    signed = east.signed(bureau_sim.produce(parsed, sequence=1, seed=1))
    done = client.post("/bureaus/east/deliveries", content=signed, headers=bureau)
    assert done.status_code == 200, done.text
    assert done.json()["produced"] == CARDS
    again = client.post("/bureaus/east/deliveries", content=signed, headers=bureau)
    assert again.status_code == 422
    assert "already imported" in again.text
    report = client.get("/bureaus/report", headers=bureau)
    assert report.json()["balanced"] is True


def test_a_delivered_card_is_not_activated_before_a_desk_has_written_its_chip(east):
    from producers.cards import activate_card
    from schemas.errors import StateConflict

    done = east.export()
    assert done is not None
    east.deliver(east.signed(east.delivery(done, 1, seed=3)))
    with pytest.raises(StateConflict, match="activated at an update desk"):
        activate_card(east.store, "1", by="olga")
    assert east.states() == {"issued": CARDS}


def test_a_delivered_card_is_personalised_at_a_desk_and_only_then_replaces_the_old_card(east):
    import random

    from db.models import Certificate
    from db.secrets import context
    from producers.cards import approve_card, request_cards
    from stations.sim import SimFaults, SimTimings, SimToken

    with east.store.read() as s:
        first = s.scalars(select(Credential).order_by(Credential.id)).first()
        email = first.user.email
    (old_id,) = request_cards(
        east.store, [email], by="rita", policy=east.settings.policy, line="default"
    )
    approve_card(east.store, str(old_id), by="bob")
    assert east.line.wait_drained(timeout_s=60)
    done = east.export()
    assert done is not None
    east.deliver(east.signed(east.delivery(done, 1, seed=3)))

    def card(card_id: int) -> Credential:
        with east.store.read() as s:
            row = s.get(Credential, card_id)
            s.expunge(row)
            return row

    def certs(card_id: int) -> list[Certificate]:
        with east.store.read() as s:
            rows = list(s.scalars(select(Certificate).where(Certificate.credential_id == card_id)))
            for r in rows:
                s.expunge(r)
            return rows

    # Delivered, not yet at a desk: the old card is fully in force.
    assert card(old_id).state == "active"
    assert all(c.state == "valid" for c in certs(old_id))
    assert card(first.id).state == "issued"
    assert not any(c.on_chip for c in certs(first.id))

    new = card(first.id)
    east.line.desk_reader.insert(new.chip_serial or "")  # the holder brings it to the desk
    result = east.line.desk.serve(east.line.desk_reader.read_chip(1.0))
    assert [state for _, state in result] == ["applied"]

    assert card(first.id).state == "active"
    mine = [c for c in certs(first.id) if c.state == "valid"]
    assert sorted(c.usage for c in mine) == ["authentication", "encryption", "signature"]
    assert all(c.on_chip for c in mine)
    # The chip carries exactly those, and opens with the PIN the store keeps.
    chip = SimToken(
        SimTimings(),
        SimFaults(fault_rate=0.0),
        east.line.desk_reader.clock,
        random.Random(1),
        chips=east.line.chips,
    )
    fresh = card(first.id)
    pin = east.line.box.open(fresh.pin_sealed, context=context("credential", fresh.id, "pin"))
    chip.open_card(fresh.chip_serial, pin)
    assert {o.cert_serial for o in chip.objects()} == {c.serial for c in mine}
    # Only now is the holder's previous card terminated.
    assert card(old_id).state == "locked"
    assert {c.state for c in certs(old_id)} == {"revoked"}
    assert east.line.wait_drained(timeout_s=60)
    assert card(first.id).pin_letter_path is not None
    # A delivered card not yet at a desk gets no PIN letter: it follows the activation.
    with east.store.read() as s:
        waiting = s.scalars(select(Credential).where(Credential.state == "issued")).all()
        assert waiting
        assert all(c.pin_letter_path is None for c in waiting)


class Killed(BaseException):
    """The desk process dies here (BaseException: nothing catches it on the way)."""


ACTIVATION_STEPS = ["initialise", "generate_key", "write_certificate", "import_key"]


@pytest.mark.parametrize("n", range(1, 7))
def test_a_desk_killed_at_any_chip_step_of_an_activation_completes_it_exactly_once(
    east, monkeypatch, n
):
    from db.models import CardUpdate, Certificate

    done = east.export()
    assert done is not None
    east.deliver(east.signed(east.delivery(done, 1, seed=3, only=1)))
    with east.store.read() as s:
        card = s.scalars(select(Credential).where(Credential.state == "issued")).one()
        serial = card.chip_serial or ""
    desk, reader = east.line.desk, east.line.desk_reader
    calls = {"n": 0}
    with monkeypatch.context() as m:
        for name in ACTIVATION_STEPS:
            real = getattr(desk.token, name)

            def wrapped(*args: Any, _real: Any = real, **kw: Any) -> Any:
                result = _real(*args, **kw)
                calls["n"] += 1
                if calls["n"] == n:
                    raise Killed(f"after chip step {n}")
                return result

            m.setattr(desk.token, name, wrapped)
        reader.insert(serial)
        with pytest.raises(Killed):
            desk.serve(reader.read_chip(1.0))
    reader.insert(serial)  # the desk restarted, the card inserted again
    assert [state for _, state in desk.serve(reader.read_chip(1.0))] == ["applied"]
    with east.store.read() as s:
        assert s.get(Credential, card.id).state == "active"
        live = s.scalars(
            select(Certificate).where(
                Certificate.credential_id == card.id, Certificate.state == "valid"
            )
        ).all()
        assert sorted(c.usage for c in live) == ["authentication", "encryption", "signature"]
        assert all(c.on_chip for c in live)
        applied = s.scalar(
            select(func.count()).where(
                AuditEvent.entity == "card_update", AuditEvent.action == "apply"
            )
        )
        assert applied == 1
        assert s.scalars(select(CardUpdate.state)).all() == ["applied"]
        pin_sealed = s.get(Credential, card.id).pin_sealed
    # The chip: exactly those certificates, no key left over from the killed desk.
    import random

    from db.secrets import context
    from stations.sim import SimFaults, SimTimings, SimToken

    chip = SimToken(
        SimTimings(),
        SimFaults(fault_rate=0.0),
        reader.clock,
        random.Random(1),
        chips=east.line.chips,
    )
    chip.open_card(
        serial, east.line.box.open(pin_sealed, context=context("credential", card.id, "pin"))
    )
    assert sorted(o.cert_serial or "" for o in chip.objects()) == sorted(c.serial for c in live)
