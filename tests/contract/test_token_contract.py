"""One contract for the card's chip, run against the simulated token and the PKCS#11
token on SoftHSM2: what the station runtime relies on must hold for both.

The backends name the same refusal with their own raw code (the simulator speaks ISO
7816 status words, the PKCS#11 driver CKR_* names); ``Chip.codes`` maps each refusal to
the code its backend must report. The one behaviour they genuinely differ in, PIN
lockout, is tested as a difference (``test_only_the_simulator_locks_its_pin``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from structlog.testing import capture_logs

from db.secrets import Secret
from schemas.errors import DeviceFault
from schemas.states import CertUsage, FaultKind
from stations.pkcs11_token import Pkcs11Token
from stations.sim import SimToken, make_sim_drivers
from tests.hw.softhsm import SoftHsm, shared_softhsm, unique

AUTH, SIGN, ENC = CertUsage.AUTHENTICATION, CertUsage.SIGNATURE, CertUsage.ENCRYPTION

# Distinctive values, so that finding one in a message or a log event means a leak.
PIN, PUK, NEW_PIN = Secret("402913"), Secret("73910482"), Secret("558201")
TRANSPORT = Secret("transport-6611")
SECRET_TEXTS = ("402913", "73910482", "558201", "transport-6611")

SIM_CODES = {"bad_data": "6A80", "wrong_puk": "63C2", "no_session": "6982"}
PKCS11_CODES = {
    "bad_data": "CKR_DATA_INVALID",
    "wrong_puk": "CKR_PIN_INCORRECT",
    "no_session": "CKR_USER_NOT_LOGGED_IN",
}


@dataclass
class Chip:
    kind: str
    token: SimToken | Pkcs11Token
    codes: dict[str, str]
    feed_blank: Callable[[], None]  # put one more blank where initialise takes it from


@pytest.fixture(params=["sim", pytest.param("pkcs11", marks=pytest.mark.hardware)])
def chip(
    request: pytest.FixtureRequest, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Chip]:
    if request.param == "sim":
        _, _, sim = make_sim_drivers(time_scale=0, fault_rate=0, seed=1, output_dir=tmp_path)
        yield Chip("sim", sim, SIM_CODES, lambda: None)
        return
    hsm: SoftHsm = shared_softhsm(tmp_path_factory)
    hopper = unique("contract")

    def feed_blank() -> None:
        hsm.make_blank(unique(hopper), TRANSPORT.reveal())

    feed_blank()
    token = Pkcs11Token(hsm.module, token_label=f"{hopper}-*", transport_pin=TRANSPORT)
    yield Chip("pkcs11", token, PKCS11_CODES, feed_blank)
    token.close()


def _personalised(chip: Chip) -> SimToken | Pkcs11Token:
    chip.token.initialise(label="C0001", so_pin=PUK, pin=PIN)
    return chip.token


# A throwaway CA, so that certificates are real ones issued for the chip's CSRs.
_CA_KEY = ec.generate_private_key(ec.SECP256R1())
_CA_NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Contract Test CA")])


def _issue(csr_pem: str) -> str:
    csr = x509.load_pem_x509_csr(csr_pem.encode())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(_CA_NAME)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(_CA_KEY, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _escrow_pair(common_name: str) -> tuple[Secret, str, x509.Certificate]:
    """An escrowed encryption key (PEM in a Secret) and a certificate for it."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    cert_pem = _issue(csr.public_bytes(serialization.Encoding.PEM).decode())
    return Secret(pem), cert_pem, x509.load_pem_x509_certificate(cert_pem.encode())


_ESCROWED = _escrow_pair("C0001 encryption")
_RETIRED = _escrow_pair("C0001 old encryption")


def _ski(public: object) -> str:
    return x509.SubjectKeyIdentifier.from_public_key(public).digest.hex()  # type: ignore[arg-type]  # a certificate key


def _fault(call: Callable[[], object]) -> DeviceFault:
    with pytest.raises(DeviceFault) as caught:
        call()
    assert caught.value.kind == FaultKind.CHIP
    return caught.value


# --- keys, CSRs, certificates -----------------------------------------------------------


@pytest.mark.parametrize("key_type", ["ec-p256", "rsa-2048"])
def test_keys_generated_on_the_chip_sign_csrs_that_carry_their_public_key(chip, key_type):
    token = _personalised(chip)
    ids = {usage: token.generate_key(usage, key_type) for usage in (AUTH, SIGN)}
    assert len(set(ids.values())) == 2
    listed = {obj.key_id: obj for obj in token.objects()}
    for usage, key_id in ids.items():
        csr = x509.load_pem_x509_csr(token.make_csr(key_id, f"C0001 {usage}").encode())
        assert csr.is_signature_valid
        assert csr.subject.rfc4514_string() == f"CN=C0001 {usage}"
        public = serialization.load_pem_public_key(listed[key_id].public_key_pem.encode())
        assert csr.public_key() == public
        assert key_id == _ski(public)  # CKA_ID is the subject key identifier
        assert (listed[key_id].usage, listed[key_id].key_type) == (usage, key_type)
        assert listed[key_id].origin == "generated"


def test_a_written_certificate_is_read_back_beside_its_key_with_usage_and_label(chip):
    token = _personalised(chip)
    key_id = token.generate_key(AUTH, "ec-p256")
    token.write_certificate(key_id, AUTH, _issue(token.make_csr(key_id, "C0001 authentication")))
    [obj] = token.objects()
    assert (obj.key_id, obj.usage, obj.origin) == (key_id, AUTH, "generated")
    assert obj.label.endswith("authentication key")
    assert obj.cert_subject == "CN=C0001 authentication"


def test_a_certificate_for_another_key_is_refused_and_not_stored(chip):
    token = _personalised(chip)
    auth = token.generate_key(AUTH, "ec-p256")
    sign = token.generate_key(SIGN, "ec-p256")
    foreign = _issue(token.make_csr(sign, "C0001 signature"))
    fault = _fault(lambda: token.write_certificate(auth, AUTH, foreign))
    assert fault.code == chip.codes["bad_data"]
    assert all(obj.cert_subject is None for obj in token.objects())


def test_escrowed_keys_current_and_retired_are_imported_beside_each_other(chip):
    token = _personalised(chip)
    current = token.import_key(ENC, _ESCROWED[0], _ESCROWED[1])
    retired = token.import_key(ENC, _RETIRED[0], _RETIRED[1], retired=True)
    assert current == _ski(_ESCROWED[2].public_key())
    assert retired == _ski(_RETIRED[2].public_key())
    listed = {obj.key_id: obj for obj in token.objects()}
    assert listed.keys() == {current, retired}
    assert (listed[current].usage, listed[current].origin) == (ENC, "imported")
    assert listed[current].label.endswith("encryption key")
    assert "retired" not in listed[current].label
    assert listed[current].cert_subject == "CN=C0001 encryption"
    assert (listed[retired].usage, listed[retired].origin) == (ENC, "recovered")
    assert listed[retired].label.endswith("retired encryption key")
    assert listed[retired].cert_subject == "CN=C0001 old encryption"
    assert listed[current].key_type == listed[retired].key_type == "rsa-2048"


def test_importing_again_replaces_the_current_key_but_keeps_retired_ones(chip):
    token = _personalised(chip)
    token.import_key(ENC, _RETIRED[0], _RETIRED[1])
    retired = token.import_key(ENC, _RETIRED[0], _RETIRED[1], retired=True)
    current = token.import_key(ENC, _ESCROWED[0], _ESCROWED[1])
    listed = sorted((obj.key_id, obj.origin) for obj in token.objects())
    assert listed == sorted([(current, "imported"), (retired, "recovered")])


def test_an_escrowed_key_with_someone_elses_certificate_is_refused(chip):
    token = _personalised(chip)
    fault = _fault(lambda: token.import_key(ENC, _ESCROWED[0], _RETIRED[1]))
    assert fault.code == chip.codes["bad_data"]
    assert token.objects() == ()


def test_an_unknown_key_type_is_a_caller_bug(chip):
    with pytest.raises(ValueError, match="ec-p256"):
        _personalised(chip).generate_key(AUTH, "dsa-1024")


# --- PIN and PUK ------------------------------------------------------------------------


def test_a_wrong_pin_does_not_verify_and_the_right_one_does(chip):
    token = _personalised(chip)
    assert token.verify_pin(Secret("000000")) is False
    assert token.verify_pin(PIN) is True


def test_unblock_with_the_puk_sets_a_new_pin_that_then_verifies(chip):
    token = _personalised(chip)
    assert token.verify_pin(Secret("000000")) is False
    token.unblock(PUK, NEW_PIN)
    assert token.verify_pin(NEW_PIN) is True
    assert token.verify_pin(PIN) is False


def test_a_wrong_puk_is_a_chip_fault_and_leaves_the_pin_alone(chip):
    token = _personalised(chip)
    fault = _fault(lambda: token.unblock(Secret("99999999"), NEW_PIN))
    assert fault.code == chip.codes["wrong_puk"]
    assert token.verify_pin(PIN) is True


def test_only_the_simulator_locks_its_pin(chip):
    """The simulator blocks its PIN after 3 wrong tries (SW 6983), as a card does.
    SoftHSM2 never locks a PIN (no CKR_PIN_LOCKED after any number of wrong PINs), and the
    PKCS#11 driver invents no lockout: counting is Cardline's (``stations.pin.PinGuard``)."""
    token = _personalised(chip)
    for _ in range(3):
        assert token.verify_pin(Secret("000000")) is False
    if chip.kind == "sim":
        assert _fault(lambda: token.verify_pin(PIN)).code == "6983"
    else:
        for _ in range(5):
            assert token.verify_pin(Secret("000000")) is False
        assert token.verify_pin(PIN) is True


# --- sessions and cards -----------------------------------------------------------------


def test_nothing_works_before_initialise(chip):
    token = chip.token
    cert = _ESCROWED[1]
    for call in (
        lambda: token.generate_key(AUTH, "ec-p256"),
        lambda: token.make_csr("00", "x"),
        lambda: token.write_certificate("00", ENC, cert),
        lambda: token.import_key(ENC, _ESCROWED[0], cert),
        lambda: token.verify_pin(PIN),
        lambda: token.unblock(PUK, NEW_PIN),
    ):
        _fault(call)


def test_key_operations_after_close_need_the_pin_again(chip):
    token = _personalised(chip)
    key_id = token.generate_key(AUTH, "ec-p256")
    token.close()
    assert _fault(lambda: token.make_csr(key_id, "x")).code == chip.codes["no_session"]
    assert token.verify_pin(PIN) is True
    assert x509.load_pem_x509_csr(token.make_csr(key_id, "x").encode()).is_signature_valid


def test_the_next_card_starts_on_a_fresh_chip(chip):
    token = _personalised(chip)
    old = token.generate_key(AUTH, "ec-p256")
    chip.feed_blank()
    token.initialise(label="C0002", so_pin=PUK, pin=NEW_PIN)
    assert token.objects() == ()
    assert token.label == "C0002"
    _fault(lambda: token.make_csr(old, "x"))
    assert token.verify_pin(PIN) is False
    assert token.verify_pin(NEW_PIN) is True


def test_no_pin_puk_or_full_card_number_appears_in_any_fault_or_log_event(chip):
    card_number = "8999000000000014"
    seen: list[str] = []

    def attempt(call: Callable[[], object]) -> None:
        try:
            call()
        except Exception as exc:  # every failure's text is inspected
            seen.extend([str(exc), repr(exc), repr(exc.args), repr(exc.__cause__)])

    token = chip.token
    with capture_logs() as events:
        attempt(lambda: token.verify_pin(PIN))
        token.initialise(label=card_number, so_pin=PUK, pin=PIN)
        key_id = token.generate_key(AUTH, "ec-p256")
        attempt(lambda: token.write_certificate(key_id, AUTH, _ESCROWED[1]))
        attempt(lambda: token.import_key(ENC, _ESCROWED[0], _RETIRED[1]))
        attempt(lambda: token.import_key(ENC, Secret("-----BEGIN PRIVATE KEY-----\nx"), "x"))
        token.verify_pin(Secret("558201"))
        attempt(lambda: token.unblock(Secret("558201"), PIN))
        token.unblock(PUK, NEW_PIN)
        token.verify_pin(NEW_PIN)
        token.close()
    seen.extend(repr(event) for event in events)
    assert len(seen) > 8
    key_body = _ESCROWED[0].reveal().splitlines()[1]
    for text in seen:
        for secret in (*SECRET_TEXTS, key_body, card_number):
            assert secret not in text
