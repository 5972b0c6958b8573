"""What the PKI issues is checked by tools nobody here wrote: openssl and pkilint.

A small line runs with faults (so spoiled blanks leave revoked certificates), an
operator revokes one certificate and holds another; then every valid certificate must
chain and pass CRL checking, revoked ones must fail as revoked, a held one fails until
released, and pkilint must find no error in any certificate profile, the CRL or the ARL.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from sqlalchemy import select

from db.models import Certificate, Credential
from ops.config import Settings
from ops.line import EmbeddedLine, LineOptions
from ops.pki import export_ca, export_certs
from ops.store import open_migrated
from producers.approvals import approve_batch
from producers.batch_import import import_batch
from producers.certificates import hold, release, revoke
from producers.generate import write_users_csv
from producers.lifecycle import deactivate_card, lock_card, reactivate_card
from schemas.states import RevocationReason

BIN = Path(sys.executable).parent  # pkilint's commands are installed beside the interpreter


def _openssl_verify(out: Path, cert: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "openssl",
            "verify",
            "-CAfile",
            str(out / "ca-chain.pem"),
            "-CRLfile",
            str(out / "crls.pem"),
            "-crl_check_all",
            str(cert),
        ],
        # openssl prints the verdict on stdout and the reason on stderr: keep both.
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
    )


def _lint(*args: str) -> str:
    """pkilint's findings at ERROR or worse (empty when clean)."""
    result = subprocess.run(
        [str(BIN / args[0]), "lint", *args[1:]], capture_output=True, text=True, check=False
    )
    assert result.returncode in (0, 1), result.stderr
    return result.stdout.strip()


@pytest.fixture(scope="module", params=["ec-p256", "ec-p384", "rsa-2048", "rsa-3072"])
def pki_line(request, tmp_path_factory):
    work = tmp_path_factory.mktemp(f"pki-{request.param}")
    config = work / "cardline.toml"
    config.write_text(f'[pki.ca]\nalgorithm = "{request.param}"\n')
    settings = Settings(data_dir=work / "data", config=config)
    store = open_migrated(settings)
    csv = write_users_csv(work / "users.csv", 10, seed=3)
    report = import_batch(
        store, csv, policy=settings.policy, requested_by="alice", reject_dir=work / "rejects"
    )
    approve_batch(store, report.batch_id, by="bob")
    line = EmbeddedLine(
        settings, settings.policy, LineOptions(stations=2, time_scale=0, fault_rate=0.5, seed=4)
    )
    line.start()
    try:
        assert line.wait_drained(timeout_s=120)
    finally:
        line.stop()
    return settings, store, work


def _export(settings: Settings, out: Path) -> dict[str, list[Path]]:
    export_ca(settings, out)
    found = {}
    for status in ("valid", "hold", "revoked"):
        export_certs(settings, status, out / status)
        found[status] = sorted((out / status).glob("*.pem")) if (out / status).exists() else []
    return found


def test_valid_certificates_chain_and_pass_crl_checks_and_revoked_ones_fail(pki_line):
    settings, _store, work = pki_line
    exported = _export(settings, work / "out1")
    assert exported["valid"], "the line issued no certificates"
    assert exported["revoked"], "a 50% fault rate should have left revoked certificates"
    for cert in exported["valid"]:
        result = _openssl_verify(work / "out1", cert)
        assert result.returncode == 0, result.stdout
    for cert in exported["revoked"]:
        result = _openssl_verify(work / "out1", cert)
        assert result.returncode != 0
        assert "certificate revoked" in result.stdout


def test_a_held_certificate_fails_as_hold_until_released_and_a_revoked_one_for_good(pki_line):
    settings, store, work = pki_line
    valid = _export(settings, work / "before")["valid"]
    held, revoked = valid[0], valid[1]
    hold(store, held.stem, by="alice")
    revoke(store, revoked.stem, reason=RevocationReason.KEY_COMPROMISE, by="alice")
    out = work / "during"
    _export(settings, out)
    crl = x509.load_pem_x509_crl((out / "crl.pem").read_bytes())
    reasons = {
        f"{r.serial_number:x}": r.extensions.get_extension_for_class(x509.CRLReason).value.reason
        for r in crl
    }
    assert reasons[held.stem] is x509.ReasonFlags.certificate_hold
    assert reasons[revoked.stem] is x509.ReasonFlags.key_compromise
    assert "certificate revoked" in _openssl_verify(out, held).stdout
    release(store, held.stem, by="bob")
    after = work / "after"
    _export(settings, after)
    assert _openssl_verify(after, held).returncode == 0
    assert "certificate revoked" in _openssl_verify(after, revoked).stdout


def test_pkilint_finds_no_error_in_any_profile_the_crl_or_the_arl(pki_line):
    settings, _store, work = pki_line
    out = work / "lint"
    exported = _export(settings, out)
    by_usage: dict[str, Path] = {}
    for cert_path in exported["valid"]:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key_usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        kind = (
            "signature"
            if key_usage.content_commitment
            else "authentication"
            if key_usage.digital_signature
            else "encryption"
        )
        by_usage.setdefault(kind, cert_path)
    assert set(by_usage) == {"authentication", "signature", "encryption"}
    for path in [*by_usage.values(), out / "issuing.pem", out / "root.pem"]:
        assert _lint("lint_pkix_cert", "-s", "ERROR", str(path)) == "", path
    assert _lint("lint_crl", "-t", "CRL", "-p", "PKIX", "-s", "ERROR", str(out / "crl.pem")) == ""
    assert (
        _lint("lint_crl", "-t", "ARL", "-p", "PKIX", "-s", "ERROR", str(out / "root-crl.pem")) == ""
    )


def test_card_deactivation_holds_its_certificates_on_the_crl_and_lock_revokes_them(pki_line):
    settings, store, work = pki_line
    with store.read() as s:
        # An active card none of the earlier tests touched: all three certificates valid.
        for card in s.scalars(select(Credential).where(Credential.state == "active")):
            pems = s.scalars(
                select(Certificate.pem).where(
                    Certificate.credential_id == card.id, Certificate.state == "valid"
                )
            ).all()
            if len(pems) == 3:
                break
    assert len(pems) == 3
    files = []
    for n, pem in enumerate(pems):
        files.append(work / f"card-{card.id}-{n}.pem")
        files[-1].write_text(pem)

    def verdicts(step: str) -> list[str]:
        out = work / f"card-{step}"
        _export(settings, out)
        return [_openssl_verify(out, f).stdout for f in files]

    assert all(v.rstrip().endswith("OK") for v in verdicts("before"))
    deactivate_card(store, str(card.id), by="olga", reason="on leave")
    assert all("certificate revoked" in v for v in verdicts("inactive"))
    crl = x509.load_pem_x509_crl((work / "card-inactive" / "crl.pem").read_bytes())
    for f in files:
        serial = x509.load_pem_x509_certificate(f.read_bytes()).serial_number
        entry = crl.get_revoked_certificate_by_serial_number(serial)
        assert entry is not None
        reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
        assert reason is x509.ReasonFlags.certificate_hold
    reactivate_card(store, str(card.id), by="olga")
    assert all(v.rstrip().endswith("OK") for v in verdicts("reactivated"))
    lock_card(store, str(card.id), by="olga", reason="privilege_withdrawn")
    assert all("certificate revoked" in v for v in verdicts("locked"))
    crl = x509.load_pem_x509_crl((work / "card-locked" / "crl.pem").read_bytes())
    for f in files:
        serial = x509.load_pem_x509_certificate(f.read_bytes()).serial_number
        entry = crl.get_revoked_certificate_by_serial_number(serial)
        assert entry is not None
        reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
        assert reason is x509.ReasonFlags.privilege_withdrawn
