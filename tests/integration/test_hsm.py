"""The issuing CA key in a PKCS#11 token (SoftHSM2): made there, used there, never exported.

`cardline pki init` with ``key_store = "pkcs11"`` generates the issuing key on the token;
a line then issues through it, and what it signs must chain with openssl. OpenSC's
pkcs11-tool reads the token back: the key is there, sensitive and never extractable.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from db.secrets import Secret
from ops.config import Settings
from ops.line import EmbeddedLine, LineOptions
from ops.pki import export_ca, export_certs
from ops.store import open_migrated
from producers.approvals import approve_batch
from producers.batch_import import import_batch
from producers.generate import write_users_csv
from schemas.errors import ConfigurationError
from tests.hw.softhsm import shared_softhsm
from workers import hsm
from workers.ca import CertificateAuthority

pytestmark = pytest.mark.hardware

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
CA_PIN = "ca-pin-7391"
SO_PIN = "so-pin-5519"


@pytest.fixture(scope="module")
def softhsm(tmp_path_factory):
    """The process's private SoftHSM2 token directory (SOFTHSM2_CONF), shared with every
    other SoftHSM test in this pytest process: the library reads it once (tests.hw)."""
    return shared_softhsm(tmp_path_factory)


def _init_token(label: str) -> None:
    subprocess.run(
        [
            "softhsm2-util",
            "--init-token",
            "--free",
            "--label",
            label,
            "--so-pin",
            SO_PIN,
            "--pin",
            CA_PIN,
        ],
        check=True,
        capture_output=True,
    )


def _config(work: Path, algorithm: str, token: str) -> Path:
    config = work / "cardline.toml"
    config.write_text(
        f'[pki.ca]\nalgorithm = "{algorithm}"\nkey_store = "pkcs11"\n'
        f'pkcs11_module = "{MODULE}"\ntoken_label = "{token}"\nkey_label = "issuing-ca"\n'
    )
    return config


def _cardline(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ops.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize("algorithm", ["ec-p256", "rsa-2048"])
def test_line_signs_with_a_token_held_issuing_key_that_openssl_verifies(
    softhsm, tmp_path, algorithm
):
    token = f"ca-{algorithm}"
    _init_token(token)
    config = _config(tmp_path, algorithm, token)
    env = {
        "CARDLINE_CONFIG": str(config),
        "CARDLINE_CA_PIN": CA_PIN,
        "CARDLINE_DATA_DIR": str(tmp_path / "data"),
    }
    init = _cardline("pki", "init", env=env)
    assert init.returncode == 0, init.stderr
    assert "key in pkcs11" in init.stdout
    assert not (tmp_path / "data" / "ca" / "issuing.key.sealed").exists()
    assert CA_PIN not in init.stdout + init.stderr

    # The token holds the key: sensitive, never extractable, and it is the issuing CA's.
    listing = subprocess.run(
        [
            "pkcs11-tool",
            "--module",
            MODULE,
            "--token-label",
            token,
            "--login",
            "--pin",
            CA_PIN,
            "--list-objects",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    private = listing.split("Private Key Object")[1].split("Object")[0]
    assert "label:      issuing-ca" in private
    assert "never extractable" in private
    assert "sensitive" in private

    settings = Settings(data_dir=tmp_path / "data", config=config, ca_pin=CA_PIN)
    store = open_migrated(settings)
    csv = write_users_csv(tmp_path / "users.csv", 4, seed=11)
    report = import_batch(
        store, csv, policy=settings.policy, requested_by="alice", reject_dir=tmp_path / "rej"
    )
    approve_batch(store, report.batch_id, by="bob")
    line = EmbeddedLine(settings, settings.policy, LineOptions(stations=2, time_scale=0, seed=2))
    line.start()
    try:
        assert line.wait_drained(timeout_s=120)
    finally:
        line.stop()

    out = tmp_path / "out"
    export_ca(settings, out)
    assert export_certs(settings, "valid", out / "valid") == 4 * 3
    certs = sorted((out / "valid").glob("*.pem"))
    assert len(certs) == 4 * 3
    issuing = x509.load_pem_x509_certificate((out / "issuing.pem").read_bytes())
    token_key = hsm.load_key(
        hsm.TokenKeyRef(
            pin=Secret(CA_PIN), module=MODULE, token_label=token, key_label="issuing-ca"
        )
    )
    assert token_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == issuing.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for cert in certs:
        verdict = subprocess.run(
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
            capture_output=True,
            text=True,
            check=False,
        )
        assert verdict.returncode == 0, verdict.stdout + verdict.stderr


def test_token_key_cannot_be_exported(softhsm):
    _init_token("ca-export")
    ref = hsm.TokenKeyRef(pin=Secret(CA_PIN), module=MODULE, token_label="ca-export", key_label="k")
    hsm.generate_key(ref, "ec-p256")
    key = hsm.load_key(ref)
    with pytest.raises(TypeError, match="never leaves the token"):
        key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def test_second_key_with_the_same_label_is_refused(softhsm):
    _init_token("ca-twice")
    ref = hsm.TokenKeyRef(
        pin=Secret(CA_PIN), module=MODULE, token_label="ca-twice", key_label="issuing-ca"
    )
    hsm.generate_key(ref, "ec-p256")
    with pytest.raises(ConfigurationError, match="already holds"):
        hsm.generate_key(ref, "ec-p256")


def test_wrong_ca_pin_is_refused_without_echoing_it(softhsm, tmp_path):
    _init_token("ca-wrong-pin")
    config = _config(tmp_path, "ec-p256", "ca-wrong-pin")
    env = {
        "CARDLINE_CONFIG": str(config),
        "CARDLINE_CA_PIN": "not-the-pin-4242",
        "CARDLINE_DATA_DIR": str(tmp_path / "data"),
    }
    result = _cardline("pki", "init", env=env)
    assert result.returncode != 0
    assert "refused the CA PIN" in result.stderr
    assert "not-the-pin-4242" not in result.stdout + result.stderr
    # Nothing half-made: no CA on disk, so a retry with the right PIN can succeed.
    assert not (tmp_path / "data" / "ca" / "issuing.pem").exists()
    env["CARDLINE_CA_PIN"] = CA_PIN
    assert _cardline("pki", "init", env=env).returncode == 0


def test_missing_ca_pin_names_the_variable(softhsm, tmp_path):
    _init_token("ca-no-pin")
    config = _config(tmp_path, "ec-p256", "ca-no-pin")
    env = {"CARDLINE_CONFIG": str(config), "CARDLINE_DATA_DIR": str(tmp_path / "data")}
    environment = {k: v for k, v in os.environ.items() if k != "CARDLINE_CA_PIN"}
    result = subprocess.run(
        [sys.executable, "-m", "ops.cli", "pki", "init"],
        env={**environment, **env},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "CARDLINE_CA_PIN" in result.stderr


def test_ca_load_uses_the_token_key(softhsm, tmp_path):
    _init_token("ca-load")
    settings = Settings(
        data_dir=tmp_path / "data", config=_config(tmp_path, "ec-p384", "ca-load"), ca_pin=CA_PIN
    )
    box = settings.secret_box()
    (tmp_path / "data" / "ca").mkdir(parents=True)
    made = CertificateAuthority.init(
        tmp_path / "data" / "ca", box, settings.pki, pin=settings.ca_secret_pin()
    )
    loaded = CertificateAuthority.load(
        tmp_path / "data" / "ca", box, settings.pki, pin=settings.ca_secret_pin()
    )
    now = dt.datetime.now(dt.UTC)
    crl = loaded.crl([], number=1, this_update=now, next_update=now + dt.timedelta(hours=1))
    assert crl.is_signature_valid(made.issuing.public_key())  # type: ignore[arg-type]
