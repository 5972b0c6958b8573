"""What the API's endpoints need, handed in by whoever starts it (``cardline api``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from db.engine import Store
from db.secrets import SecretBox
from schemas.pki import PkiConfig
from schemas.policy import Policy


@dataclass(frozen=True)
class ApiContext:
    store: Store
    box: SecretBox
    policy: Policy
    pki: PkiConfig
    crl_dir: Path  # where the pki worker publishes issuing.crl and root.crl
    ca_chain: Path  # ca-chain.pem (the AIA of issued certificates points here)
    rejects_dir: Path  # batch import reject reports
