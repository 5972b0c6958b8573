"""The simulated printer, reader and token: faults, timings and a chip that does real crypto."""

from __future__ import annotations

import datetime
import random
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from db.secrets import Secret
from schemas.errors import ConfigurationError, DeviceFault
from schemas.states import CertUsage, FaultKind
from stations.drivers import CardFaces, Printer, Reader, Token
from stations.sim import (
    SimClock,
    SimFaults,
    SimPrinter,
    SimReader,
    SimTimings,
    SimToken,
    make_sim_drivers,
)

AUTH, SIGN, ENC = CertUsage.AUTHENTICATION, CertUsage.SIGNATURE, CertUsage.ENCRYPTION
PIN, PUK = Secret("123456"), Secret("87654321")


@pytest.fixture
def faces(tmp_path: Path) -> CardFaces:
    front, back = tmp_path / "C1-front.png", tmp_path / "C1-back.png"
    front.write_bytes(b"front image")
    back.write_bytes(b"back image")
    return CardFaces(front=front, back=back)


Drivers = tuple[SimPrinter, SimReader, SimToken]


def _drivers(
    tmp_path: Path, *, fault_rate: float = 0.0, seed: int | None = 1, scale: float = 0.0
) -> Drivers:
    return make_sim_drivers(
        time_scale=scale, fault_rate=fault_rate, seed=seed, output_dir=tmp_path / "printed"
    )


def _token(faults: SimFaults | None = None, clock: SimClock | None = None) -> SimToken:
    return SimToken(SimTimings(), faults or SimFaults(), clock or SimClock(0), random.Random(3))


def _ready_token() -> SimToken:
    token = _token()
    token.initialise(label="C1", so_pin=PUK, pin=PIN)
    return token


def _attempt(drivers: Drivers, faces: CardFaces) -> str:
    """One card through feed, chip, token and print; its outcome as text."""
    printer, reader, token = drivers
    try:
        printer.feed()
        chip = reader.read_chip(timeout_s=5)
        token.initialise(label=chip.serial, so_pin=PUK, pin=PIN)
        token.generate_key(AUTH, "ec-p256")
        token.generate_key(SIGN, "ec-p256")
        printer.print_faces(faces)
    except DeviceFault as fault:
        printer.eject(reject=True)
        return f"{fault.kind}:{fault.code}"
    printer.eject(reject=False)
    return f"ok:{chip.serial}"


def _run(drivers: Drivers, faces: CardFaces, n: int) -> list[str]:
    return [_attempt(drivers, faces) for _ in range(n)]


# A test CA, so certificates are real ones issued for the token's CSRs.
_CA_KEY = ec.generate_private_key(ec.SECP256R1())
_CA_NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test CA")])


def _issue(csr_pem: str) -> str:
    csr = x509.load_pem_x509_csr(csr_pem.encode())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(_CA_NAME)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(_CA_KEY, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _escrow_pair() -> tuple[Secret, str]:
    """An escrowed encryption key (as PEM in a Secret) and a certificate for it."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "C1 encryption")]))
        .sign(key, hashes.SHA256())
    )
    return Secret(pem), _issue(csr.public_bytes(serialization.Encoding.PEM).decode())


def _full_card(drivers: Drivers, faces: CardFaces) -> None:
    """Every step of a typical card: 2 keys on chip, 1 escrowed key, 3 certificates."""
    printer, reader, token = drivers
    printer.feed()
    chip = reader.read_chip(timeout_s=5)
    token.initialise(label=chip.serial, so_pin=PUK, pin=PIN)
    for usage in (AUTH, SIGN):
        key_id = token.generate_key(usage, "ec-p256")
        token.write_certificate(key_id, usage, _issue(token.make_csr(key_id, f"C1 {usage}")))
    token.import_key(ENC, *_escrow_pair())
    printer.print_faces(faces)
    printer.eject(reject=False)
    token.close()


# --- protocols and wiring -------------------------------------------------------------


def test_make_sim_drivers_gives_one_station_sharing_one_clock(tmp_path):
    printer, reader, token = _drivers(tmp_path)
    assert isinstance(printer, SimPrinter)
    assert isinstance(reader, SimReader)
    assert isinstance(token, SimToken)
    assert printer.clock is reader.clock is token.clock
    _station_accepts(printer, reader, token)


def _station_accepts(printer: Printer, reader: Reader, token: Token) -> None:
    """The runtime sees only the protocols; mypy checks that the simulators fit them."""


# --- faults ---------------------------------------------------------------------------


def test_a_seed_reproduces_faults_and_serials(tmp_path, faces):
    first = _run(_drivers(tmp_path / "a", fault_rate=0.3, seed=42), faces, 150)
    again = _run(_drivers(tmp_path / "b", fault_rate=0.3, seed=42), faces, 150)
    other = _run(_drivers(tmp_path / "c", fault_rate=0.3, seed=43), faces, 150)
    assert first == again
    assert first != other


def test_fault_rate_zero_never_faults(tmp_path, faces):
    outcomes = _run(_drivers(tmp_path, fault_rate=0.0), faces, 200)
    assert all(o.startswith("ok:") for o in outcomes)


def test_fault_rate_one_always_faults(tmp_path, faces):
    outcomes = _run(_drivers(tmp_path, fault_rate=1.0), faces, 200)
    assert not any(o.startswith("ok:") for o in outcomes)


def test_fault_frequency_and_split_follow_the_fault_rate(tmp_path, faces):
    rate, n = 0.25, 2000
    outcomes = _run(_drivers(tmp_path, fault_rate=rate, seed=2024), faces, n)
    kinds = Counter(o.split(":")[0] for o in outcomes if not o.startswith("ok:"))
    faulted = sum(kinds.values())
    # Binomial sd at n=2000 is ~0.01; the seed makes the run deterministic anyway.
    assert faulted / n == pytest.approx(rate, abs=0.035)
    assert kinds[FaultKind.JAM] / faulted == pytest.approx(0.2, abs=0.06)
    assert kinds[FaultKind.CHIP] / faulted == pytest.approx(0.4, abs=0.07)
    assert kinds[FaultKind.PRINT] / faulted == pytest.approx(0.4, abs=0.07)
    chip_codes = Counter(o for o in outcomes if o.startswith(FaultKind.CHIP))
    assert chip_codes.keys() == {f"{FaultKind.CHIP}:6F00"}


def test_chip_faults_come_from_both_reader_and_token():
    faults = SimFaults(fault_rate=0.5)
    assert 0 < faults.chip_read_p < 1
    assert 0 < faults.token_p < 1
    reaches_token = 1 - faults.chip_read_p
    assert faults.chip_read_p == pytest.approx(reaches_token * faults.token_p)


def test_every_fault_keeps_its_device_code(tmp_path, faces):
    outcomes = _run(_drivers(tmp_path, fault_rate=1.0, seed=5), faces, 300)
    codes = {o.split(":", 1)[1] for o in outcomes}
    assert {"E-JAM", "6F00"} <= codes
    assert codes & {"E-RIBBON", "E-FILM", "E-HEAD"}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"fault_rate": 1.5},
        {"fault_rate": -0.1},
        {"jam_rate": 2.0},
        {"print_rate": -1.0},
    ],
)
def test_fault_settings_out_of_range_are_refused(kwargs):
    with pytest.raises(ConfigurationError):
        SimFaults(**kwargs)


def test_a_stage_override_replaces_the_split(tmp_path, faces):
    faults = SimFaults(fault_rate=0.0, print_rate=1.0)
    printer = SimPrinter(SimTimings(), faults, SimClock(0), random.Random(1), tmp_path / "out")
    printer.feed()
    with pytest.raises(DeviceFault) as caught:
        printer.print_faces(faces)
    assert caught.value.kind == FaultKind.PRINT
    assert caught.value.code in {"E-RIBBON", "E-FILM", "E-HEAD"}


# --- printer --------------------------------------------------------------------------


def test_a_printed_card_appears_in_the_output_dir(tmp_path, faces):
    printer, _, _ = _drivers(tmp_path)
    printer.feed()
    printer.print_faces(faces)
    printer.eject(reject=False)
    out = tmp_path / "printed"
    assert (out / "C1-front.png").read_bytes() == b"front image"
    assert (out / "C1-back.png").read_bytes() == b"back image"
    assert sorted(p.name for p in out.iterdir()) == ["C1-back.png", "C1-front.png"]
    assert (printer.fed, printer.printed, printer.ejected, printer.rejected) == (1, 1, 1, 0)


def test_every_blank_fed_is_accounted_for(tmp_path, faces):
    printer, reader, token = _drivers(tmp_path, fault_rate=0.4, seed=9)
    outcomes = _run((printer, reader, token), faces, 300)
    good = sum(o.startswith("ok:") for o in outcomes)
    assert printer.fed == 300 == printer.ejected + printer.rejected
    assert printer.ejected == good
    assert printer.rejected == 300 - good


def test_feeding_over_a_card_purges_it_to_the_reject_bin(tmp_path):
    printer, _, _ = _drivers(tmp_path)
    printer.feed()
    printer.feed()
    assert (printer.fed, printer.rejected) == (2, 1)


def test_printing_without_a_card_is_a_fault(tmp_path, faces):
    printer, _, _ = _drivers(tmp_path)
    with pytest.raises(DeviceFault) as caught:
        printer.print_faces(faces)
    assert caught.value.code == "E-NOCARD"


# --- reader ---------------------------------------------------------------------------


def test_each_chip_read_gives_a_new_16_hex_digit_serial(tmp_path):
    _, reader, _ = _drivers(tmp_path)
    chips = [reader.read_chip(timeout_s=5) for _ in range(500)]
    serials = {chip.serial for chip in chips}
    assert len(serials) == 500
    for chip in chips:
        assert len(chip.serial) == 16
        int(chip.serial, 16)
        bytes.fromhex(chip.atr)


def test_a_chip_slower_than_the_timeout_is_a_fault(tmp_path):
    _, reader, _ = _drivers(tmp_path)
    with pytest.raises(DeviceFault) as caught:
        reader.read_chip(timeout_s=0.01)
    assert (caught.value.kind, caught.value.code) == (FaultKind.CHIP, "SCARD_E_TIMEOUT")


# --- token ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key_type", "key_class"),
    [("ec-p256", ec.EllipticCurvePublicKey), ("rsa-2048", rsa.RSAPublicKey)],
)
def test_the_csr_is_signed_by_the_tokens_own_key(key_type, key_class):
    token = _ready_token()
    key_id = token.generate_key(AUTH, key_type)
    csr = x509.load_pem_x509_csr(token.make_csr(key_id, "C1 authentication").encode())
    assert csr.is_signature_valid
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "C1 authentication"
    [obj] = token.objects()
    assert obj.key_id == key_id
    assert obj.key_type == key_type
    public = serialization.load_pem_public_key(obj.public_key_pem.encode())
    assert isinstance(public, key_class)
    assert csr.public_key() == public


def test_rsa_keys_are_2048_bit_with_exponent_65537():
    token = _ready_token()
    key_id = token.generate_key(SIGN, "rsa-2048")
    public = x509.load_pem_x509_csr(token.make_csr(key_id, "x").encode()).public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    assert public.key_size == 2048
    assert public.public_numbers().e == 65537


def test_an_unknown_key_type_is_a_caller_bug():
    with pytest.raises(ValueError, match="ec-p256"):
        _ready_token().generate_key(AUTH, "dsa-1024")


def test_a_written_certificate_is_listed_beside_its_key():
    token = _ready_token()
    key_id = token.generate_key(AUTH, "ec-p256")
    token.write_certificate(key_id, AUTH, _issue(token.make_csr(key_id, "C1 authentication")))
    [obj] = token.objects()
    assert (obj.usage, obj.label, obj.origin) == (AUTH, "authentication key", "generated")
    assert obj.cert_subject == "CN=C1 authentication"


def test_a_certificate_for_another_key_is_refused_with_its_code():
    token = _ready_token()
    auth = token.generate_key(AUTH, "ec-p256")
    sign = token.generate_key(SIGN, "ec-p256")
    foreign = _issue(token.make_csr(sign, "C1 signature"))
    with pytest.raises(DeviceFault) as caught:
        token.write_certificate(auth, AUTH, foreign)
    assert (caught.value.kind, caught.value.code) == (FaultKind.CHIP, "6A80")
    assert all(obj.cert_subject is None for obj in token.objects())


def test_an_escrowed_key_is_imported_with_its_certificate():
    token = _ready_token()
    key_pem, cert_pem = _escrow_pair()
    key_id = token.import_key(ENC, key_pem, cert_pem)
    [obj] = token.objects()
    assert (obj.key_id, obj.usage, obj.origin, obj.key_type) == (
        key_id,
        ENC,
        "imported",
        "rsa-2048",
    )
    assert obj.cert_subject == "CN=C1 encryption"


def test_an_escrowed_key_with_someone_elses_certificate_is_refused():
    token = _ready_token()
    key_pem, _ = _escrow_pair()
    _, other_cert = _escrow_pair()
    with pytest.raises(DeviceFault) as caught:
        token.import_key(ENC, key_pem, other_cert)
    assert caught.value.code == "6A80"
    assert token.objects() == ()


def test_an_unreadable_escrowed_key_fault_does_not_quote_it():
    token = _ready_token()
    _, cert_pem = _escrow_pair()
    garbage = "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1tYXRlcmlhbA==\n-----END PRIVATE KEY-----"
    with pytest.raises(DeviceFault) as caught:
        token.import_key(ENC, Secret(garbage), cert_pem)
    assert caught.value.code == "6A80"
    assert "c2VjcmV0" not in str(caught.value)
    assert caught.value.__cause__ is None


def test_nothing_works_before_initialise():
    token = _token()
    for call in (
        lambda: token.generate_key(AUTH, "ec-p256"),
        lambda: token.make_csr("00", "x"),
        lambda: token.verify_pin(PIN),
    ):
        with pytest.raises(DeviceFault) as caught:
            call()
        assert caught.value.code == "6982"


def test_initialise_turns_the_chip_into_a_fresh_blank():
    token = _ready_token()
    old = token.generate_key(AUTH, "ec-p256")
    token.initialise(label="C2", so_pin=PUK, pin=Secret("999999"))
    assert token.objects() == ()
    assert token.label == "C2"
    with pytest.raises(DeviceFault) as caught:
        token.make_csr(old, "x")
    assert caught.value.code == "6A88"
    assert not token.verify_pin(PIN)
    assert token.verify_pin(Secret("999999"))


def test_close_ends_the_session_until_the_pin_is_verified_again():
    token = _ready_token()
    token.close()
    with pytest.raises(DeviceFault) as caught:
        token.generate_key(AUTH, "ec-p256")
    assert caught.value.code == "6982"
    assert token.verify_pin(PIN)
    token.generate_key(AUTH, "ec-p256")


def test_three_wrong_pins_lock_the_pin_and_the_puk_unblocks_it():
    token = _ready_token()
    wrong = Secret("000000")
    assert [token.verify_pin(wrong) for _ in range(3)] == [False, False, False]
    assert token.pin_tries_left == 0
    with pytest.raises(DeviceFault) as caught:
        token.verify_pin(PIN)
    assert (caught.value.kind, caught.value.code) == (FaultKind.CHIP, "6983")

    with pytest.raises(DeviceFault) as caught:
        token.unblock(Secret("11111111"), Secret("246810"))
    assert caught.value.code == "63C2"

    token.unblock(PUK, Secret("246810"))
    assert token.pin_tries_left == 3
    assert not token.verify_pin(PIN)
    assert token.verify_pin(Secret("246810"))
    assert token.pin_tries_left == 3


def test_three_wrong_puks_block_the_puk():
    token = _ready_token()
    for _ in range(3):
        with pytest.raises(DeviceFault):
            token.unblock(Secret("00000000"), PIN)
    with pytest.raises(DeviceFault) as caught:
        token.unblock(PUK, PIN)
    assert caught.value.code == "6983"


def test_a_token_fault_strikes_at_key_generation_and_the_chip_stays_bad():
    token = _token(SimFaults(chip_rate=1.0))
    token.initialise(label="C1", so_pin=PUK, pin=PIN)
    with pytest.raises(DeviceFault) as caught:
        token.generate_key(AUTH, "ec-p256")
    assert (caught.value.kind, caught.value.code) == (FaultKind.CHIP, "6F00")
    with pytest.raises(DeviceFault):
        token.generate_key(AUTH, "ec-p256")


def test_no_secret_or_private_key_shows_in_reprs():
    token = _ready_token()
    token.generate_key(AUTH, "ec-p256")
    shown = repr(token) + repr(token.objects()) + repr(vars(token))
    assert "PRIVATE" not in shown
    assert PIN.reveal() not in shown
    assert PUK.reveal() not in shown


# --- time -----------------------------------------------------------------------------


def test_default_timings_add_up_to_the_documented_card_time():
    timings = SimTimings()
    assert timings.total_for(2, 3, n_imports=1) == pytest.approx(SimTimings.TYPICAL_CARD_S)
    assert 20 <= SimTimings.TYPICAL_CARD_S <= 30
    assert timings.total_for(3, 3) - timings.total_for(2, 3) == pytest.approx(
        timings.keygen + timings.csr_sign
    )


def test_negative_timings_and_scales_are_refused():
    with pytest.raises(ConfigurationError):
        SimTimings(keygen=-1)
    with pytest.raises(ConfigurationError):
        SimClock(time_scale=-0.5)


def test_a_full_card_takes_total_for_of_device_time(tmp_path, faces, monkeypatch):
    waits: list[float] = []
    monkeypatch.setattr(time, "sleep", waits.append)
    drivers = _drivers(tmp_path, scale=0.01)
    _full_card(drivers, faces)
    expected = SimTimings().total_for(2, 3, n_imports=1)
    assert drivers[0].clock.simulated_s == pytest.approx(expected)
    assert sum(waits) == pytest.approx(expected * 0.01)


def test_time_scale_zero_never_sleeps(tmp_path, faces, monkeypatch):
    def no_sleep(seconds: float) -> None:
        raise AssertionError(f"slept {seconds}")

    monkeypatch.setattr(time, "sleep", no_sleep)
    drivers = _drivers(tmp_path, scale=0.0)
    _full_card(drivers, faces)
    assert drivers[0].clock.simulated_s == pytest.approx(SimTimings.TYPICAL_CARD_S)


def test_a_scaled_card_really_takes_its_scaled_time(tmp_path, faces):
    scale = 0.004  # 24 s of device time -> ~0.1 s
    drivers = _drivers(tmp_path, scale=scale)
    started = time.monotonic()
    _full_card(drivers, faces)
    elapsed = time.monotonic() - started
    assert elapsed >= SimTimings.TYPICAL_CARD_S * scale * 0.95
    assert elapsed < 10  # generous: only a gross scaling error fails this


def test_a_set_stop_event_cuts_waits_short():
    stop = threading.Event()
    clock = SimClock(time_scale=1.0, stop=stop)
    assert clock.sleep(0.0)
    stop.set()
    started = time.monotonic()
    assert clock.sleep(3600) is False
    assert time.monotonic() - started < 5
    assert clock.simulated_s == 3600


def test_a_stop_event_set_during_a_wait_ends_it():
    stop = threading.Event()
    clock = SimClock(time_scale=1.0, stop=stop)
    threading.Timer(0.05, stop.set).start()
    started = time.monotonic()
    assert clock.sleep(3600) is False
    assert time.monotonic() - started < 30
