"""One station on the real stacks, end to end, as an operator would run it:

``cardline station --id ST1 --config stations.toml`` with a SoftHSM2 token as the card's
chip (a blank with a transport key), our card program in a vpcd reader (pcscd), and a
cups-pdf printer on a private CUPS, beside ``cardline relay`` and ``cardline worker`` on
PostgreSQL and RabbitMQ, produces a seeded card: OpenSC's pkcs11-tool reads back the key
pairs and certificates the station wrote, the faces PDF is on disk with the holder's
name and CR80 pages, and the card is ``active`` with the chip serial the reader read.
"""

from __future__ import annotations

import base64
import os
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from db.engine import open_store
from db.models import Credential, ProductionAttempt
from db.secrets import SecretBox, context
from ops.brokers import flush
from ops.procline import CARDLINE, PgDatabase, ProcessLine, Role, line_env
from ops.services import AMQP_URL, PG_URL
from tests.backends import require
from tests.hw.cups import pdf_pages, pdf_text, session_cups
from tests.hw.pcsc import READER_0, CardSlots, session_pcscd
from tests.hw.softhsm import MODULE, parse_listing, require_softhsm
from tests.principals import token_for
from workers.broker import WORKER_QUEUES

pytestmark = [pytest.mark.hardware, pytest.mark.slow]

TRANSPORT_PIN = "31415926"
CHIP_SERIAL = "04A1B2C3D4E5F6"


@pytest.fixture(scope="module")
def pcscd(tmp_path_factory):
    yield from session_pcscd(tmp_path_factory)


@pytest.fixture(scope="module")
def private_cups(tmp_path_factory):
    yield from session_cups(tmp_path_factory)


def _station_tokens(root: Path) -> dict[str, str]:
    """A token directory of the station's own (one per station process), with a blank."""
    (root / "tokens").mkdir(parents=True)
    conf = root / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {root / 'tokens'}\nobjectstore.backend = file\n")
    env = {**os.environ, "SOFTHSM2_CONF": str(conf)}
    subprocess.run(
        [
            *("pkcs11-tool", "--module", MODULE, "--slot-index", "0", "--init-token"),
            *("--label", "BLANK-0001", "--so-pin", TRANSPORT_PIN),
        ],
        check=True,
        capture_output=True,
        env=env,
    )
    return env


def _as(line: ProcessLine, token: str, *args: str) -> None:
    """A one-shot ``cardline`` operator command in the line's environment, acting as the
    principal of ``token`` (only this command gets it, not the line's processes)."""
    done = subprocess.run(
        [*CARDLINE, *args],
        env={**line.env, "CARDLINE_TOKEN": token},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, (args, done.stdout, done.stderr)


def _objects(env: dict[str, str], pin: str) -> str:
    done = subprocess.run(
        [
            *("pkcs11-tool", "--module", MODULE, "--token-label", "BLANK-0001"),
            *("--login", "--pin", pin, "--list-objects"),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return done.stdout


def test_a_station_on_softhsm_pcscd_and_cups_produces_a_seeded_card(tmp_path, pcscd, private_cups):
    require("postgres")
    require("rabbitmq")
    require_softhsm()
    token_env = _station_tokens(tmp_path / "softhsm")
    config = tmp_path / "stations.toml"
    config.write_text(
        f"""
[stations.ST1]
chip_timeout_s = 30

[stations.ST1.reader]
driver = "pcsc"
name = "{READER_0}*"

[stations.ST1.token]
driver = "pkcs11"
module = "{MODULE}"
token_label = "BLANK-*"

[stations.ST1.printer]
driver = "cups"
queue = "{private_cups.pdf_queue}"
server = "{private_cups.socket}"
job_timeout_s = 60
"""
    )
    db = PgDatabase(PG_URL, "cardline_real_station_test").create()
    flush(AMQP_URL, [*WORKER_QUEUES, "line.default"])
    env = line_env(database_url=db.url, broker_url=AMQP_URL, data_dir=tmp_path / "data")
    env.update(SOFTHSM2_CONF=token_env["SOFTHSM2_CONF"], CARDLINE_TRANSPORT_PIN=TRANSPORT_PIN)
    roles = [
        Role("relay", ("relay",)),
        Role("worker", ("worker",)),
        Role("ST1", ("station", "--id", "ST1", "--config", str(config))),
    ]
    line = ProcessLine(env=env, roles=roles, log_dir=tmp_path / "logs")
    store = None
    try:
        with CardSlots() as slots:
            slots.insert(READER_0, serial=CHIP_SERIAL)
            csv = tmp_path / "one.csv"
            csv.write_text(
                "first_name,last_name,email,upn,organization,org_unit\n"
                "Zoë,Müller,zoe@example.org,zoe@corp.example.org,Example,Vault\n"
            )
            line.cardline("db", "upgrade")
            store = open_store(db.url, pool_size=1)
            _as(line, token_for(store, "alice", ["requester"]), "batch", "import", str(csv))
            _as(line, token_for(store, "bob", ["approver"]), "batch", "approve", "1")
            line.start_all()
            deadline = time.monotonic() + 120
            state = None
            while time.monotonic() < deadline:
                with store.read() as s:
                    state = s.scalars(select(Credential.state)).one()
                if state in ("active", "failed"):
                    break
                time.sleep(0.2)
            logs = "\n".join(p.read_text() for p in (tmp_path / "logs").glob("*.log"))
            assert state == "active", logs[-4000:]
        with store.read() as s:
            card = s.scalars(select(Credential)).one()
            attempt = s.scalars(select(ProductionAttempt)).one()
            number, sealed_pin, name = card.card_number, card.pin_sealed, card.user.display_name
            assert attempt.chip_serial == CHIP_SERIAL
            assert attempt.state == "succeeded"
        assert number is not None
        assert sealed_pin is not None
        box = SecretBox(base64.b64decode(env["CARDLINE_MASTER_KEY"]))
        pin = box.open(sealed_pin, context=context("credential", card.id, "pin")).reveal()
        listing = _objects(token_env, pin)
        objects = parse_listing(listing)
        for usage in ("authentication", "signature", "encryption"):
            label = f"{number} {usage} key"
            ids = {o["ID"] for o in objects if o.get("label") == label}
            assert len(ids) == 1, (label, listing)  # key pair and certificate share CKA_ID
            kinds = sorted(o["kind"].split(";")[0] for o in objects if o.get("label") == label)
            assert kinds == ["Certificate Object", "Private Key Object", "Public Key Object"]
        on_chip = [o for o in objects if o["kind"].startswith("Private Key")]
        generated = [o for o in on_chip if "never extractable" in o.get("Access", "")]
        assert len(generated) == 2  # authentication and signature keys were made on the chip
        assert any(o.get("label") == f"{number} admin key" for o in objects)
        assert listing.count("Private Key Object") == 3
        assert listing.count("Certificate Object") == 3
        faces = private_cups.output(f"{number}-faces")
        pages = pdf_pages(faces)
        assert len(pages) == 2
        for page in pages:
            width, height = sorted(page.size_mm, reverse=True)
            assert abs(width - 85.6) < 0.5
            assert abs(height - 54.0) < 0.5
        # The printer got the station's PDF; cups-pdf's copy went through PostScript and
        # Ghostscript, which keeps Latin-1 text extractable (not "Ł": it still prints).
        assert name == "Zoë Müller"
        assert all(part in pdf_text(faces).split() for part in name.split())
        sent = tmp_path / "data" / "faces" / f"{number}-faces.pdf"
        assert name in " ".join(pdf_text(sent).split())
    finally:
        line.stop_all(timeout_s=10)
        if store is not None:
            store.dispose()
        db.drop()
