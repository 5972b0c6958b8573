"""What every worker actor needs, built once by the process that runs the workers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from db.engine import Store
from db.secrets import SecretBox
from schemas.policy import Policy
from workers.ca import CertificateAuthority


@dataclass(frozen=True)
class WorkerContext:
    store: Store
    box: SecretBox
    policy: Policy
    ca: CertificateAuthority
    letters_dir: Path
