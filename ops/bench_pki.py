"""``python -m ops.bench_pki``: PKI worker throughput against the raw signing floor.

For each CA key (RSA-2048, EC P-256) in each key store (a sealed file, a PKCS#11 token
in a private SoftHSM2 token directory), the real ``pki`` worker function issues one
certificate per pre-generated CSR, each for its own credential, so every call verifies
the CSR, signs, and stores a certificate row. In the same run, with the same CA key
object, the floor is a bare ``x509.CertificateBuilder`` build and sign. Prints a table
and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import NameOID
from pydantic import SecretStr
from rich.console import Console
from rich.table import Table
from sqlalchemy import func, select

from db import keys
from db.engine import Store
from db.models import Certificate, Credential, User
from db.secrets import SecretBox
from db.transition import create
from ops.config import Settings
from ops.line import DataPaths, worker_context
from ops.logging import configure
from ops.store import open_migrated
from schemas.messages import IssueCertificate
from schemas.pki import CaConfig
from schemas.states import CertUsage
from workers.ca import ISSUING_KEY_CONTEXT, CertificateAuthority, hash_for
from workers.pki import issue_certificate

DEFAULT_COUNT = 200
ALGORITHMS = ("rsa-2048", "ec-p256")
KEY_STORES = ("file", "pkcs11")
CONFIGURATIONS: tuple[tuple[str, str], ...] = tuple(
    (algorithm, store) for algorithm in ALGORITHMS for store in KEY_STORES
)
MODULE = CaConfig().pkcs11_module  # /usr/lib/softhsm/libsofthsm2.so
CA_PIN = "bench-ca-pin-4821"
SO_PIN = "bench-so-pin-9930"

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


@dataclass(frozen=True)
class SoftHsm:
    """A private SoftHSM2 token directory (``SOFTHSM2_CONF``), one per process.

    The PKCS#11 library is loaded once per process (``workers.hsm``); it reads its
    configuration when it initialises, so the bench uses one configuration file and adds
    one token per configuration (``workers.hsm`` reinitialises to see a new token).
    """

    conf: Path
    util: str

    @classmethod
    def available(cls) -> str | None:
        """Why the PKCS#11 rows cannot run here, or None when they can."""
        if not Path(MODULE).exists():
            return f"{MODULE} is missing (ops/system-deps.sh installs softhsm2)"
        if shutil.which("softhsm2-util") is None:
            return "softhsm2-util is not on PATH (ops/system-deps.sh installs softhsm2)"
        return None

    @classmethod
    def create(cls, root: Path) -> SoftHsm:
        util = shutil.which("softhsm2-util")
        if util is None:
            raise RuntimeError("softhsm2-util is not on PATH")
        tokens = root / "tokens"
        tokens.mkdir(parents=True, exist_ok=True)
        conf = root / "softhsm2.conf"
        conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n")
        return cls(conf, util)

    def init_token(self, label: str) -> None:
        subprocess.run(  # noqa: S603  (softhsm2-util with fixed arguments)
            [
                self.util,
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
            env={**os.environ, "SOFTHSM2_CONF": str(self.conf)},
        )


_shared: SoftHsm | None = None


def shared_softhsm() -> SoftHsm:
    """This process's SoftHSM2 token directory, made on first use, removed at exit.

    Not removed earlier: once the PKCS#11 library has been initialised with a token
    directory, deleting it makes the library's later reinitialisation fail (a token
    created afterwards, here or elsewhere in the process, would then be unusable).
    """
    global _shared
    if _shared is None:
        root = Path(tempfile.mkdtemp(prefix="cardline-bench-softhsm-"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        _shared = SoftHsm.create(root)
    return _shared


@contextmanager
def softhsm_env(hsm: SoftHsm) -> Iterator[None]:
    """``SOFTHSM2_CONF`` points at ``hsm`` for the duration; restored afterwards."""
    before = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(hsm.conf)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = before


@dataclass(frozen=True)
class PkiRow:
    ca_algorithm: str
    key_store: str
    count: int
    worker_elapsed_s: float
    worker_certs_per_s: float
    cpu_ms_per_cert: float
    floor_signs_per_s: float
    worker_over_floor: float
    certificates_stored: int


def card_csrs(count: int) -> list[tuple[str, PublicKey]]:
    """``count`` CSRs for fresh EC P-256 card keys, with their public keys."""
    out: list[tuple[str, PublicKey]] = []
    for i in range(count):
        key = keys.generate("ec-p256")
        out.append((keys.csr_pem(key, f"bench card {i}"), key.public_key()))
    return out


def _config_toml(path: Path, algorithm: str, key_store: str, token_label: str) -> Path:
    path.write_text(
        "[pki.ca]\n"
        f'algorithm = "{algorithm}"\n'
        f'key_store = "{key_store}"\n'
        f'pkcs11_module = "{MODULE}"\n'
        f'token_label = "{token_label}"\n'
        'key_label = "issuing-ca"\n'
    )
    return path


def _seed_credentials(store: Store, count: int) -> list[int]:
    """One user and one requested card per certificate to issue (the escrow path)."""
    ids: list[int] = []
    with store.tx() as s:
        for i in range(count):
            user = create(
                s,
                User(
                    state="active",
                    email=f"bench{i}@example.org",
                    first_name="Bench",
                    last_name=f"Holder{i}",
                    upn=f"bench{i}@example.org",
                    organization="Bench",
                    org_unit="PKI",
                ),
                actor="bench",
            )
            card = create(
                s,
                Credential(state="requested", user_id=user.id, requested_by="bench"),
                actor="bench",
            )
            ids.append(card.id)
    return ids


def _issuing_key(
    ca: CertificateAuthority, ca_dir: Path, box: SecretBox, settings: Settings
) -> CertificateIssuerPrivateKeyTypes:
    """The CA's issuing key as the CA itself loads it: unsealed from its file, or the
    token-backed key (``workers.hsm.load_key``) sharing the CA's token session."""
    ref_file = ca_dir / "issuing.key.pkcs11.json"
    key: CertificateIssuerPrivateKeyTypes
    if ref_file.exists():
        from workers import hsm

        pin = settings.ca_secret_pin()
        if pin is None:
            raise RuntimeError("a token-held CA key needs the CA PIN")
        key = hsm.load_key(hsm.TokenKeyRef(pin=pin, **json.loads(ref_file.read_text())))
    else:
        sealed = (ca_dir / "issuing.key.sealed").read_text()
        loaded = serialization.load_der_private_key(
            box.open_bytes(sealed, context=ISSUING_KEY_CONTEXT), password=None
        )
        if not isinstance(loaded, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise RuntimeError(f"unexpected issuing key type {type(loaded).__name__}")
        key = loaded
    if key.public_key() != ca.issuing.public_key():
        raise RuntimeError("the floor's key is not the CA's issuing key")
    return key


def bench_floor(
    key: CertificateIssuerPrivateKeyTypes, issuer: x509.Name, publics: Sequence[PublicKey]
) -> float:
    """Certificates built and signed per second: a bare builder, no CSR, no store."""
    algorithm = hash_for(key)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Bench Floor")])
    t0 = time.perf_counter()
    for public in publics:
        now = dt.datetime.now(dt.UTC)
        (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=365))
            .sign(key, algorithm)
        )
    return len(publics) / (time.perf_counter() - t0)


def bench_configuration(
    work: Path,
    algorithm: str,
    key_store: str,
    csrs: Sequence[tuple[str, PublicKey]],
    hsm: SoftHsm | None = None,
) -> PkiRow:
    """One row: the ``pki`` worker issuing ``len(csrs)`` certificates, and its floor."""
    count = len(csrs)
    token_label = f"bench-{algorithm}-{uuid.uuid4().hex[:8]}"
    if key_store == "pkcs11":
        if hsm is None:
            raise ValueError("a pkcs11 configuration needs a SoftHsm")
        hsm.init_token(token_label)
    work.mkdir(parents=True)
    settings = Settings(
        data_dir=work / "data",
        config=_config_toml(work / "cardline.toml", algorithm, key_store, token_label),
        ca_pin=SecretStr(CA_PIN),
        database_url=None,
        master_key=None,
        smtp_url=None,
    )
    store = open_migrated(settings)
    try:
        box = settings.secret_box()
        ca_dir = DataPaths(settings.data_dir).ca
        CertificateAuthority.init(ca_dir, box, settings.pki, pin=settings.ca_secret_pin())
        ctx = worker_context(settings, store, box)  # loads the CA just made
        credential_ids = _seed_credentials(store, count)
        jobs = [
            IssueCertificate(
                credential_id=cid, attempt_id=None, usage=CertUsage.ENCRYPTION, csr_pem=csr
            )
            for cid, (csr, _) in zip(credential_ids, csrs, strict=True)
        ]

        cpu0, t0 = time.process_time(), time.perf_counter()
        for job in jobs:
            issue_certificate(ctx, job)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0

        with store.read() as s:
            stored = s.scalar(select(func.count()).select_from(Certificate)) or 0
            last = s.scalars(select(Certificate.pem).order_by(Certificate.id.desc())).first()
        if stored != count or last is None:
            raise RuntimeError(
                f"{algorithm}/{key_store}: the worker stored {stored} of {count} certificates"
            )
        # What the worker stored was signed by this CA's issuing key.
        x509.load_pem_x509_certificate(last.encode()).verify_directly_issued_by(ctx.ca.issuing)
        floor = bench_floor(
            _issuing_key(ctx.ca, ca_dir, box, settings),
            ctx.ca.issuing.subject,
            [public for _, public in csrs],
        )
    finally:
        store.dispose()
    rate = count / elapsed
    return PkiRow(
        ca_algorithm=algorithm,
        key_store=key_store,
        count=count,
        worker_elapsed_s=round(elapsed, 3),
        worker_certs_per_s=round(rate, 1),
        cpu_ms_per_cert=round(cpu * 1000 / count, 2),
        floor_signs_per_s=round(floor, 1),
        worker_over_floor=round(rate / floor, 3),
        certificates_stored=stored,
    )


@dataclass(frozen=True)
class PkiBench:
    rows: list[PkiRow]
    skipped: list[str]

    def as_json(self) -> dict[str, object]:
        return {"bench_pki": [asdict(r) for r in self.rows], "skipped": self.skipped}


def run(
    count: int = DEFAULT_COUNT,
    configurations: Sequence[tuple[str, str]] = CONFIGURATIONS,
) -> PkiBench:
    """Every configuration in one run; PKCS#11 rows are skipped without SoftHSM2."""
    configure(log_file=None, console_level="CRITICAL")
    wanted = list(configurations)
    skipped: list[str] = []
    missing = SoftHsm.available() if any(ks == "pkcs11" for _, ks in wanted) else None
    if missing:
        skipped = [f"{a}/{ks}: {missing}" for a, ks in wanted if ks == "pkcs11"]
        wanted = [(a, ks) for a, ks in wanted if ks != "pkcs11"]
    csrs = card_csrs(count)  # before any timing
    rows: list[PkiRow] = []
    with tempfile.TemporaryDirectory(
        prefix="cardline-bench-pki-", ignore_cleanup_errors=True
    ) as tmp:
        work = Path(tmp)
        hsm = shared_softhsm() if any(ks == "pkcs11" for _, ks in wanted) else None
        with softhsm_env(hsm) if hsm else _nothing():
            for algorithm, key_store in wanted:
                rows.append(
                    bench_configuration(
                        work / f"{algorithm}-{key_store}", algorithm, key_store, csrs, hsm
                    )
                )
    return PkiBench(rows, skipped)


@contextmanager
def _nothing() -> Iterator[None]:
    yield


COLUMNS = (
    ("CA key", "ca_algorithm"),
    ("store", "key_store"),
    ("worker cert/s", "worker_certs_per_s"),
    ("CPU ms/cert", "cpu_ms_per_cert"),
    ("floor sign/s", "floor_signs_per_s"),
    ("worker/floor", "worker_over_floor"),
)


def table(bench: PkiBench) -> Table:
    count = bench.rows[0].count if bench.rows else 0
    t = Table(
        title=f"Cardline PKI bench: {count} CSRs per CA key (EC P-256 card keys); "
        "floor = raw build+sign with the same key, same run"
    )
    for title, _ in COLUMNS:
        t.add_column(title, justify="left" if title in ("CA key", "store") else "right")
    for row in bench.rows:
        values = asdict(row)
        t.add_row(*(str(values[key]) for _, key in COLUMNS))
    return t


def emit(bench: PkiBench) -> None:
    """The table (and any skip notes), then exactly one JSON line."""
    console = Console()
    for note in bench.skipped:
        console.print(f"[yellow]skipped[/yellow] {note}")
    console.print(table(bench))
    print(json.dumps(bench.as_json(), sort_keys=True))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m ops.bench_pki",
        description="PKI worker throughput against the raw build+sign floor.",
    )
    parser.add_argument(
        "--count",
        type=int,
        default=DEFAULT_COUNT,
        help=f"CSRs per configuration (default {DEFAULT_COUNT})",
    )
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be at least 1")
    emit(run(args.count))


if __name__ == "__main__":
    main(sys.argv[1:])
