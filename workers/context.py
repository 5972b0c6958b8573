"""What every worker actor needs, built once by the process that runs the workers."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from db.engine import Store
from db.secrets import SecretBox
from schemas.pki import PkiConfig
from schemas.policy import Policy
from workers.ca import CertificateAuthority
from workers.mail import Mailer


@dataclass(frozen=True)
class WorkerContext:
    store: Store
    box: SecretBox
    policy: Policy
    ca: CertificateAuthority
    letters_dir: Path
    crl_dir: Path
    pki: PkiConfig = field(default_factory=PkiConfig)
    softtokens_dir: Path = Path("var/softtokens")
    mailer: Mailer | None = None
