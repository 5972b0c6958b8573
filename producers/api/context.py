"""What the API's endpoints need, handed in by whoever starts it (``cardline api``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import Path as PathParam
from fastapi import Query

from db.engine import Store
from db.secrets import SecretBox
from schemas.alerts import AlertConfig
from schemas.bureau import BureauConfig
from schemas.cpr import CprConfig
from schemas.pki import PkiConfig
from schemas.policy import ApprovalSteps, Policy


@dataclass(frozen=True)
class ApiContext:
    store: Store
    box: SecretBox
    policy: Policy
    pki: PkiConfig
    crl_dir: Path  # where the pki worker publishes issuing.crl and root.crl
    ca_chain: Path  # ca-chain.pem (the AIA of issued certificates points here)
    rejects_dir: Path  # batch import reject reports
    cpr: CprConfig = field(default_factory=CprConfig)
    # Each identity system's CPR signing key (producers.cpr.load_identity_systems).
    cpr_keys: dict[str, Any] = field(default_factory=dict)
    # ``[approvals]``: the lifecycle processes that wait for an approver.
    approvals: ApprovalSteps = field(default_factory=ApprovalSteps)
    # ``[alerts]``: the limits of GET /alerts and of the alerts GET /metrics counts.
    alerts: AlertConfig = field(default_factory=AlertConfig)
    # ``[bureaus.NAME]`` and where their files and Cardline's signing identity live.
    bureaus: dict[str, BureauConfig] = field(default_factory=dict)
    bureau_dir: Path | None = None


# A row id in a path: a positive 32-bit integer (larger ones cannot name a row, and
# SQLite would refuse them as parameters).
RowId = Annotated[int, PathParam(ge=1, le=2**31 - 1)]

# The highest page number a search takes: any offset it makes (times at most
# ``producers.users.MAX_PAGE`` rows a page) fits every backend's 64-bit integers, where
# a 20-digit page number made SQLite and PostgreSQL fail with a 500.
MAX_PAGE_NUMBER = 10**6
PageNumber = Annotated[int, Query(ge=1, le=MAX_PAGE_NUMBER)]
