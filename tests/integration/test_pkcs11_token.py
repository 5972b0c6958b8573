"""A card personalised the way a station does it, on SoftHSM2, read back by tools nobody
here wrote: OpenSC's pkcs11-tool lists what the chip holds, openssl checks the CSRs.

The station flow (``stations.runtime``): initialise (PIN, PUK) -> authentication and
signature keys generated on the chip -> CSRs signed there -> certificates written ->
the escrowed encryption key imported with its certificate (and an older one, retired)
-> close. The hopper holds two blanks; only the first may change.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from db import pkcs11 as token_lib
from db.secrets import Secret
from schemas.states import CertUsage
from stations.pkcs11_token import Pkcs11Token
from tests.hw.softhsm import SoftHsm, shared_softhsm, unique
from workers import hsm as hsm_module

pytestmark = pytest.mark.hardware

AUTH, SIGN, ENC = CertUsage.AUTHENTICATION, CertUsage.SIGNATURE, CertUsage.ENCRYPTION
PIN, PUK, TRANSPORT = "318406", "52093817", "transport-2207"
CARD = "C0000042"

_CA_KEY = ec.generate_private_key(ec.SECP256R1())
_CA_NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Station Test CA")])


def _issue(csr: x509.CertificateSigningRequest) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(_CA_NAME)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(_CA_KEY, hashes.SHA256())
    )


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _escrowed(common_name: str) -> tuple[Secret, x509.Certificate]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    return Secret(pem), _issue(csr)


@dataclass(frozen=True)
class Card:
    hsm: SoftHsm
    chip_label: str
    other_blank: str
    key_ids: dict[str, str]  # by label: CKA_ID as the driver returned it
    certs: dict[str, x509.Certificate]  # by label
    csr_files: tuple[Path, ...]


@pytest.fixture(scope="module")
def card(tmp_path_factory: pytest.TempPathFactory) -> Card:
    hsm = shared_softhsm(tmp_path_factory)
    hopper = unique("station")
    for blank in ("a", "b"):
        hsm.make_blank(f"{hopper}-{blank}", TRANSPORT)
    token = Pkcs11Token(hsm.module, token_label=f"{hopper}-*", transport_pin=Secret(TRANSPORT))
    token.initialise(label=CARD, so_pin=Secret(PUK), pin=Secret(PIN))
    assert token.chip_label == f"{hopper}-a"
    key_ids, certs, csr_files = {}, {}, []
    out = tmp_path_factory.mktemp("csrs")
    for usage in (AUTH, SIGN):
        key_id = token.generate_key(usage, "rsa-2048")
        csr_pem = token.make_csr(key_id, f"{CARD} {usage}")
        (out / f"{usage}.csr").write_text(csr_pem)
        csr_files.append(out / f"{usage}.csr")
        cert = _issue(x509.load_pem_x509_csr(csr_pem.encode()))
        token.write_certificate(key_id, usage, _pem(cert))
        key_ids[f"{CARD} {usage} key"], certs[f"{CARD} {usage} key"] = key_id, cert
    for label, retired in (
        (f"{CARD} encryption key", False),
        (f"{CARD} retired encryption key", True),
    ):
        key_pem, cert = _escrowed(label)
        key_ids[label] = token.import_key(ENC, key_pem, _pem(cert), retired=retired)
        certs[label] = cert
    token.close()
    return Card(hsm, f"{hopper}-a", f"{hopper}-b", key_ids, certs, tuple(csr_files))


def _objects(text: str) -> list[dict[str, str]]:
    """pkcs11-tool's --list-objects output as one dict per object (``kind`` + fields)."""
    found: list[dict[str, str]] = []
    for line in text.splitlines():
        if line and not line[0].isspace():
            found.append({"kind": line.split(";")[0].strip()})
        elif found and ":" in line:
            name, value = line.strip().split(":", 1)
            found[-1][name.strip()] = value.strip()
    return found


def _listing(card: Card, *login: str) -> list[dict[str, str]]:
    return _objects(
        card.hsm.tool("--token-label", card.chip_label, *login, "--list-objects").stdout
    )


def _user_listing(card: Card) -> list[dict[str, str]]:
    return _listing(card, "--login", "--pin", PIN)


def _by_kind(objects: list[dict[str, str]], kind: str) -> dict[str, dict[str, str]]:
    return {obj["label"]: obj for obj in objects if obj["kind"] == kind}


def _ski(cert: x509.Certificate) -> str:
    return x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest.hex()


def test_the_generated_keys_are_sensitive_never_extractable_and_under_their_ids(card):
    objects = _user_listing(card)
    private = _by_kind(objects, "Private Key Object")
    public = _by_kind(objects, "Public Key Object")
    for usage in (AUTH, SIGN):
        label = f"{CARD} {usage} key"
        access = private[label]["Access"]
        assert {"sensitive", "always sensitive", "never extractable", "local"} <= {
            a.strip() for a in access.split(",")
        }
        assert private[label]["ID"] == public[label]["ID"] == card.key_ids[label]
        assert card.key_ids[label] == _ski(card.certs[label])
        assert "sign" in private[label]["Usage"]


def test_each_certificate_is_stored_beside_its_key_with_the_same_label_and_id(card):
    certificates = _by_kind(_user_listing(card), "Certificate Object")
    assert certificates.keys() == card.certs.keys()
    for label, cert in card.certs.items():
        assert certificates[label]["ID"] == card.key_ids[label]
        assert certificates[label]["subject"] == f"DN: {cert.subject.rfc4514_string()}"
        assert certificates[label]["serial"] == f"{cert.serial_number:X}".rjust(
            len(certificates[label]["serial"]), "0"
        )


def test_the_escrowed_encryption_keys_are_on_the_card_beside_their_certificates(card):
    """Imported keys are sensitive but cannot be "never extractable": they were outside
    once (PKCS#11 sets CKA_NEVER_EXTRACTABLE false for any key not made on the token)."""
    objects = _user_listing(card)
    private = _by_kind(objects, "Private Key Object")
    public = _by_kind(objects, "Public Key Object")
    for label in (f"{CARD} encryption key", f"{CARD} retired encryption key"):
        access = {a.strip() for a in private[label]["Access"].split(",")}
        assert "sensitive" in access
        assert "local" not in access
        assert private[label]["ID"] == public[label]["ID"] == _ski(card.certs[label])
        assert "decrypt" in private[label]["Usage"]


def test_without_the_pin_no_private_key_is_visible(card):
    objects = _listing(card)
    assert not [obj for obj in objects if obj["kind"] == "Private Key Object"]
    assert len([obj for obj in objects if obj["kind"] == "Certificate Object"]) == 4


def test_a_wrong_pin_does_not_log_in(card):
    result = card.hsm.tool(
        "--token-label",
        card.chip_label,
        "--login",
        "--pin",
        "000000",
        "--list-objects",
        check=False,
    )
    assert result.returncode != 0
    assert "CKR_PIN_INCORRECT" in result.stderr


def test_openssl_accepts_the_csrs_signed_on_the_card(card):
    for csr in card.csr_files:
        verdict = subprocess.run(
            ["openssl", "req", "-in", str(csr), "-noout", "-verify"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert verdict.returncode == 0, verdict.stderr
        assert "verify OK" in verdict.stdout + verdict.stderr


def _so_login(card: Card, label: str, so_pin: str) -> subprocess.CompletedProcess[str]:
    return card.hsm.tool(
        *("--token-label", label, "--login", "--login-type", "so", "--so-pin", so_pin),
        *("--session-rw", "--list-objects"),
        check=False,
    )


def test_the_transport_key_no_longer_opens_the_card_and_the_puk_does(card):
    refused = _so_login(card, card.chip_label, TRANSPORT)
    assert refused.returncode != 0
    assert "CKR_PIN_INCORRECT" in refused.stderr
    assert _so_login(card, card.chip_label, PUK).returncode == 0


def test_the_second_blank_in_the_hopper_is_left_untouched(card):
    slots = card.hsm.tool("--list-token-slots").stdout
    block = slots.split(f"token label        : {card.other_blank}")[1].split("Slot ")[0]
    flags = block.split("token flags        :")[1].splitlines()[0]
    assert "token initialized" in flags
    assert "PIN initialized" not in flags
    opened = _so_login(card, card.other_blank, TRANSPORT)
    assert opened.returncode == 0, opened.stderr
    assert _objects(opened.stdout) == []


def test_a_ca_key_in_the_same_process_keeps_signing_while_a_station_takes_new_blanks(
    tmp_path_factory,
):
    """Taking a blank made after the library loaded reinitialises it, which closes every
    session of the process; the CA key's session must come back by itself, and the two
    must be able to sign at the same time from different threads (one lock for all)."""
    hsm = shared_softhsm(tmp_path_factory)
    ca_token = unique("ca")
    hsm.make_token(ca_token, so_pin="so-pin-1", pin="ca-pin-1")
    ref = hsm_module.TokenKeyRef(
        pin=Secret("ca-pin-1"), module=hsm.module, token_label=ca_token, key_label="issuing"
    )
    hsm_module.generate_key(ref, "ec-p256")
    ca_key = hsm_module.load_key(ref)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca_key.public_key().verify(
        ca_key.sign(b"before", ec.ECDSA(hashes.SHA256())), b"before", ec.ECDSA(hashes.SHA256())
    )

    library = token_lib.library(hsm.module)
    generation = library.generation
    hopper = unique("station")
    hsm.make_blank(f"{hopper}-1", TRANSPORT)
    station = Pkcs11Token(hsm.module, token_label=f"{hopper}-*", transport_pin=Secret(TRANSPORT))
    station.initialise(label=CARD, so_pin=Secret(PUK), pin=Secret(PIN))
    assert library.generation > generation  # the new blank needed a reinitialisation
    key_id = station.generate_key(AUTH, "ec-p256")

    errors: list[BaseException] = []

    def ca_signs() -> None:
        try:
            for i in range(40):
                data = f"crl {i}".encode()
                signature = ca_key.sign(data, ec.ECDSA(hashes.SHA256()))
                ca_key.public_key().verify(signature, data, ec.ECDSA(hashes.SHA256()))
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    def station_signs() -> None:
        try:
            for i in range(40):
                csr = station.make_csr(key_id, f"{CARD} {i}")
                assert x509.load_pem_x509_csr(csr.encode()).is_signature_valid
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=f) for f in (ca_signs, station_signs, ca_signs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    station.close()
