"""Card updates on the real stacks (issue 13): an update desk process
(``cardline station --id DESK1`` with ``role = "update"``) with a PC/SC reader (pcscd and
our card program in vpcd) and the card's chip as a SoftHSM2 token, beside ``cardline
relay`` and ``cardline worker`` on PostgreSQL and RabbitMQ.

A station (SoftHSM2 token, simulated reader and printer) produces a card and a
temporary card. Then, at the desk, with OpenSC's ``pkcs11-tool`` reading the token back
and ``openssl verify`` checking against the CRL the worker published:

- a renewal leaves exactly the new keys and certificates on the chip, the old ones gone
  and revoked, the new ones valid;
- a temporary card assigned, withdrawn and assigned to a second holder keeps nothing of
  the first holder (no key, no certificate, the first holder's PIN no longer opens it);
- a desk SIGKILLed in the middle of an update (new keys made, certificates not yet
  issued) and started again completes the update exactly once.
"""

from __future__ import annotations

import base64
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from sqlalchemy import select

from db.engine import Store, open_store
from db.models import CardUpdate, Certificate, Credential
from db.secrets import SecretBox, context
from ops.brokers import flush
from ops.procline import CARDLINE, PgDatabase, ProcessLine, Role, line_env
from ops.services import AMQP_URL, PG_URL
from tests.backends import require
from tests.hw.pcsc import READER_1, CardSlots, session_pcscd
from tests.hw.softhsm import MODULE, SoftHsm, parse_listing, require_softhsm
from tests.principals import token_for
from workers.broker import WORKER_QUEUES

pytestmark = [pytest.mark.hardware, pytest.mark.slow]

TRANSPORT_PIN = "27182818"


@pytest.fixture(scope="module")
def pcscd(tmp_path_factory):
    yield from session_pcscd(tmp_path_factory)


def _hopper(root: Path, blanks: int) -> SoftHsm:
    """The station's and the desk's token directory (the cards go from the encoder to
    the desk), with ``blanks`` blank cards."""
    (root / "tokens").mkdir(parents=True)
    conf = root / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {root / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    hsm = SoftHsm(conf=conf, token_dir=root / "tokens")
    for n in range(1, blanks + 1):
        hsm.make_blank(f"BLANK-{n:04d}", TRANSPORT_PIN)
    return hsm


class Desk:
    """The line's processes, the operator's commands and what the chip holds."""

    def __init__(self, tmp: Path, line: ProcessLine, store: Store, hsm: SoftHsm) -> None:
        self.tmp = tmp
        self.line = line
        self.store = store
        self.hsm = hsm
        self.box = SecretBox(base64.b64decode(line.env["CARDLINE_MASTER_KEY"]))
        self.tokens: dict[str, str] = {}

    def as_(self, name: str, roles: list[str], *args: str) -> str:
        if name not in self.tokens:
            self.tokens[name] = token_for(self.store, name, roles)
        done = subprocess.run(
            [*CARDLINE, *args],
            env={**self.line.env, "CARDLINE_TOKEN": self.tokens[name]},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done.stdout

    def operator(self, *args: str) -> str:
        return self.as_("olga", ["operator"], *args)

    def card(self, card_id: int) -> Credential:
        with self.store.read() as s:
            card = s.get(Credential, card_id)
            assert card is not None
            s.expunge(card)
            return card

    def pin(self, card_id: int) -> str:
        card = self.card(card_id)
        assert card.pin_sealed is not None
        return self.box.open(
            card.pin_sealed, context=context("credential", card_id, "pin")
        ).reveal()

    def certificates(self, card_id: int) -> list[Certificate]:
        return self._rows(Certificate, card_id)

    def updates(self, card_id: int) -> list[CardUpdate]:
        return self._rows(CardUpdate, card_id)

    def _rows(self, model: Any, card_id: int) -> list[Any]:
        with self.store.read() as s:
            rows = list(
                s.scalars(select(model).where(model.credential_id == card_id).order_by(model.id))
            )
            for row in rows:
                s.expunge(row)
            return rows

    def wait(self, what: str, done: Any, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if done():
                return
            time.sleep(0.2)
        logs = "\n".join(p.read_text() for p in (self.tmp / "logs").glob("*.log"))
        pytest.fail(f"timed out waiting for {what}\n{logs[-6000:]}")

    def wait_applied(self, card_id: int, count: int) -> None:
        self.wait(
            f"{count} applied updates of card {card_id}",
            lambda: (
                sum(u.state == "applied" for u in self.updates(card_id)) >= count
                and not any(u.state in ("pending", "in_progress") for u in self.updates(card_id))
            ),
        )

    def chip(self, card_id: int, pin: str | None = None) -> list[dict[str, str]]:
        """What pkcs11-tool lists on the card's token, logged in with ``pin`` (default:
        the card's PIN in the store)."""
        label = self._token_label(card_id)
        done = self.hsm.tool(
            "--token-label", label, "--login", "--pin", pin or self.pin(card_id), "--list-objects"
        )
        return parse_listing(done.stdout)

    def login_fails(self, card_id: int, pin: str) -> bool:
        label = self._token_label(card_id)
        done = self.hsm.tool(
            "--token-label", label, "--login", "--pin", pin, "--list-objects", check=False
        )
        return done.returncode != 0

    def _token_label(self, card_id: int) -> str:
        """The blank the card was made on: the token whose public objects carry its number."""
        number = self.card(card_id).card_number
        for n in range(1, 10):
            label = f"BLANK-{n:04d}"
            listing = self.hsm.tool("--token-label", label, "--list-objects", check=False).stdout
            if f"{number} " in listing:
                return label
        raise AssertionError(f"no token carries card {number}")

    def verify(self, cert: Certificate) -> str:
        """openssl's verdict on ``cert`` against the CA chain and the published CRLs."""
        out = self.tmp / "verify"
        out.mkdir(exist_ok=True)
        if not (out / "ca" / "ca-chain.pem").exists():
            self.operator("pki", "export", "--out", str(out / "ca"))
        crl_dir = self.tmp / "data" / "crl"
        crls = out / "crls.pem"
        crls.write_text(
            (crl_dir / "issuing.crl.pem").read_text() + (crl_dir / "root.crl.pem").read_text()
        )
        pem = out / f"{cert.serial}.pem"
        pem.write_text(cert.pem)
        done = subprocess.run(
            [
                *("openssl", "verify", "-CAfile", str(out / "ca" / "ca-chain.pem")),
                *("-CRLfile", str(crls), "-crl_check_all", str(pem)),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            check=False,
        )
        return done.stdout


def _cert_serials(objects: list[dict[str, str]]) -> set[str]:
    """Serials (lower-case hex) of the certificates on the chip, as pkcs11-tool shows
    them ("serial: 1A2B...")."""
    return {
        o["serial"].lower().lstrip("0")
        for o in objects
        if o["kind"].startswith("Certificate") and "serial" in o
    }


def _keys(objects: list[dict[str, str]]) -> list[dict[str, str]]:
    return [o for o in objects if o["kind"].startswith("Private Key")]


def _norm(serial: str) -> str:
    return serial.lower().lstrip("0")


@pytest.fixture(scope="module")
def desk(tmp_path_factory, pcscd):
    require("postgres")
    require("rabbitmq")
    require_softhsm()
    tmp = tmp_path_factory.mktemp("desk")
    hsm = _hopper(tmp / "softhsm", blanks=2)
    config = tmp / "stations.toml"
    config.write_text(
        f"""
[stations.ST1.token]
driver = "pkcs11"
module = "{MODULE}"
token_label = "BLANK-*"

[stations.DESK1]
role = "update"

[stations.DESK1.reader]
driver = "pcsc"
name = "{READER_1}*"

[stations.DESK1.token]
driver = "pkcs11"
module = "{MODULE}"
token_label = "BLANK-*"
"""
    )
    db = PgDatabase(PG_URL, "cardline_desk_test").create()
    flush(AMQP_URL, [*WORKER_QUEUES, "line.default"])
    env = line_env(database_url=db.url, broker_url=AMQP_URL, data_dir=tmp / "data")
    env.update(SOFTHSM2_CONF=str(hsm.conf), CARDLINE_TRANSPORT_PIN=TRANSPORT_PIN)
    roles = [
        Role("relay", ("relay",)),
        Role("worker", ("worker",)),
        Role("ST1", ("station", "--id", "ST1", "--config", str(config), "--time-scale", "0")),
        Role("DESK1", ("station", "--id", "DESK1", "--config", str(config))),
    ]
    line = ProcessLine(env=env, roles=roles, log_dir=tmp / "logs")
    line.cardline("db", "upgrade")
    store = open_store(db.url, pool_size=2)
    d = Desk(tmp, line, store, hsm)
    try:
        csv = tmp / "one.csv"
        csv.write_text(
            "first_name,last_name,email,upn,organization,org_unit\n"
            "Zoë,Müller,zoe@example.org,zoe@corp.example.org,Example,Vault\n"
        )
        d.as_("alice", ["requester"], "batch", "import", str(csv))
        d.as_("bob", ["approver"], "batch", "approve", "1")
        d.operator("tempcard", "stock", "1")
        d.as_("bob", ["approver"], "batch", "approve", "2")
        for first, email in (("Ana", "ana@example.org"), ("Ben", "ben@example.org")):
            d.operator(
                *("user", "create", "--set", f"first_name={first}", "--set", "last_name=Temp"),
                *("--set", f"email={email}", "--set", f"upn={email}"),
                *("--set", "organization=Example", "--set", "org_unit=Vault"),
            )
        for name in ("relay", "worker", "ST1"):
            line.start(next(r for r in roles if r.name == name))
        d.wait(
            "both cards produced",
            lambda: [d.card(1).state, d.card(2).state] == ["active", "unassigned"],
        )
        # The cards go to the holders; the encoder's process is done with the tokens
        # (two processes must not write one SoftHSM2 token directory at once).
        line.procs.pop("ST1").terminate()
        yield d
    finally:
        line.stop_all(timeout_s=10)
        store.dispose()
        db.drop()


def _start_desk(d: Desk) -> None:
    d.line.start(next(r for r in d.line.roles if r.name == "DESK1"))


def test_a_renewal_at_the_desk_leaves_only_the_new_certificates_on_the_chip(desk):
    d = desk
    old = [c for c in d.certificates(1) if c.on_chip]
    old_serials = {_norm(c.serial) for c in old}
    before = d.chip(1)
    assert _cert_serials(before) == old_serials
    d.operator("card", "renew", "1")
    (update,) = [u for u in d.updates(1) if u.state == "pending"]
    assert update.kind == "renew"
    renewed = set(update.plan["usages"])
    with CardSlots() as slots:
        _start_desk(d)
        card = slots.insert(READER_1, serial=d.card(1).chip_serial or "")
        d.wait_applied(1, 1)
        slots.remove(card)
    certs = d.certificates(1)
    new = [c for c in certs if c.update_id == update.id]
    assert {c.usage for c in new} == renewed
    assert all(c.on_chip and c.state == "valid" for c in new)
    superseded = [c for c in old if c.usage in renewed]
    kept = [c for c in old if c.usage not in renewed]  # the escrowed encryption key
    after = d.chip(1)  # the PIN is kept: the same PIN opens the card
    assert _cert_serials(after) == {_norm(c.serial) for c in [*new, *kept]}
    assert len(_keys(after)) == len(_keys(before))
    old_key_ids = {o["ID"] for o in _keys(before) if any(u in o.get("label", "") for u in renewed)}
    assert not old_key_ids & {o["ID"] for o in _keys(after)}
    # Each new key took its usage's label: the chip reads as any card's would.
    number = d.card(1).card_number
    assert sorted(o["label"] for o in _keys(after)) == sorted(
        f"{number} {c.usage} key" for c in [*new, *kept]
    )
    # The store says what the chip says: the old certificates are off it and revoked.
    by_serial = {c.serial: c for c in certs}
    for c in superseded:
        assert by_serial[c.serial].on_chip is False
        assert by_serial[c.serial].state == "revoked"
    d.wait("a CRL listing the superseded certificates", lambda: _crl_lists(d, superseded))
    for c in new:
        assert d.verify(c).strip().endswith("OK"), d.verify(c)
    for c in superseded:
        assert "certificate revoked" in d.verify(c)


def _crl_lists(d: Desk, certs: list[Certificate]) -> bool:
    path = d.tmp / "data" / "crl" / "issuing.crl.pem"
    if not path.exists():
        return False
    crl = x509.load_pem_x509_crl(path.read_bytes())
    return all(crl.get_revoked_certificate_by_serial_number(int(c.serial, 16)) for c in certs)


def test_a_temporary_card_keeps_nothing_of_its_first_holder(desk):
    d = desk
    t = 2
    serial = d.card(t).chip_serial or ""
    with CardSlots() as slots:
        _start_desk_if_needed(d)
        d.operator("tempcard", "assign", str(t), "ana@example.org")
        card = slots.insert(READER_1, serial=serial)
        d.wait_applied(t, 1)
        ana_pin = d.pin(t)
        (ana_update,) = [u for u in d.updates(t) if u.kind == "assign"]
        ana_certs = [c for c in d.certificates(t) if c.update_id == ana_update.id]
        assert sorted(c.usage for c in ana_certs) == sorted(ana_update.plan["usages"])
        assert all("Ana" in c.subject and c.on_chip for c in ana_certs)
        on_chip = {_norm(c.serial) for c in d.certificates(t) if c.on_chip}
        assert _cert_serials(d.chip(t)) == on_chip
        # Withdrawn while still in the reader: the desk applies the wipe at once.
        d.operator("tempcard", "withdraw", str(t))
        d.wait_applied(t, 2)
        slots.remove(card)
    wiped = d.chip(t)
    assert _keys(wiped) == []
    assert _cert_serials(wiped) == set()
    assert d.login_fails(t, ana_pin)  # the PIN was rotated
    for c in d.certificates(t):
        assert c.on_chip is False
        assert c.state == "revoked"
    # The second holder, with a desk killed mid-update: new keys made on the chip,
    # their certificates not yet issued (the worker is stopped).
    worker = d.line.procs.pop("worker")
    worker.terminate()
    worker.wait(timeout=30)
    d.operator("tempcard", "assign", str(t), "ben@example.org")
    with CardSlots() as slots:
        slots.insert(READER_1, serial=serial)
        d.wait(
            "the desk to journal the new keys",
            lambda: any(u.state == "in_progress" and "keys" in u.journal for u in d.updates(t)),
        )
        d.line.kill("DESK1")  # SIGKILL, and started again
        d.line.start(next(r for r in d.line.roles if r.name == "worker"))
        d.wait_applied(t, 3)
    (ben_update,) = [u for u in d.updates(t) if u.kind == "assign" and u.id > 0][-1:]
    ben_certs = [c for c in d.certificates(t) if c.update_id == ben_update.id]
    # Exactly once: one certificate per usage, every one on the chip.
    assert sorted(c.usage for c in ben_certs) == sorted(ben_update.plan["usages"])
    assert all(c.on_chip and c.state == "valid" and "Ben" in c.subject for c in ben_certs)
    ben_chip = d.chip(t)
    assert _cert_serials(ben_chip) == {_norm(c.serial) for c in ben_certs}
    assert len(_keys(ben_chip)) == len(ben_certs)  # no key left from the killed desk
    assert not {_norm(c.serial) for c in ana_certs} & _cert_serials(ben_chip)
    assert d.login_fails(t, ana_pin)
    for c in ben_certs:
        assert d.verify(c).strip().endswith("OK"), d.verify(c)


def _start_desk_if_needed(d: Desk) -> None:
    proc = d.line.procs.get("DESK1")
    if proc is None or proc.poll() is not None:
        _start_desk(d)


def test_a_forgotten_pin_is_reset_with_the_puk_at_the_desk(desk):
    d = desk
    label = d._token_label(1)
    # The holder changed the PIN and forgot the new one: the store's PIN no longer opens.
    d.hsm.tool(
        *("--token-label", label, "--login", "--pin", d.pin(1)),
        *("--change-pin", "--new-pin", "999111"),
    )
    assert d.login_fails(1, d.pin(1))
    applied = sum(u.state == "applied" for u in d.updates(1))
    d.as_("hana", ["help_desk"], "card", "reset-pin", "1")
    with CardSlots() as slots:
        _start_desk_if_needed(d)
        card = slots.insert(READER_1, serial=d.card(1).chip_serial or "")
        d.wait_applied(1, applied + 1)
        slots.remove(card)
    assert d.updates(1)[-1].kind == "reset_pin"
    assert d.login_fails(1, "999111")
    objects = d.chip(1)  # the store's new PIN opens the card, every key still there
    assert _cert_serials(objects) == {_norm(c.serial) for c in d.certificates(1) if c.on_chip}


def test_a_re_certification_at_the_desk_keeps_the_keys_and_replaces_the_certificate(desk):
    d = desk
    before = d.chip(1)
    applied = sum(u.state == "applied" for u in d.updates(1))
    d.operator("card", "renew", "1", "--usage", "signature", "--keep-keys")
    with CardSlots() as slots:
        _start_desk_if_needed(d)
        card = slots.insert(READER_1, serial=d.card(1).chip_serial or "")
        d.wait_applied(1, applied + 1)
        slots.remove(card)
    update = d.updates(1)[-1]
    (new,) = [c for c in d.certificates(1) if c.update_id == update.id]
    assert new.usage == "signature"
    after = d.chip(1)
    assert {o["ID"] for o in _keys(after)} == {o["ID"] for o in _keys(before)}  # same keys
    assert _cert_serials(after) == {_norm(c.serial) for c in d.certificates(1) if c.on_chip}
    assert _norm(new.serial) in _cert_serials(after)
    assert d.verify(new).strip().endswith("OK")
