"""States and the transition tables (DESIGN.md, "Credential states").

The tables are data: ``db.transition`` enforces them and the tests generate every
allowed and every disallowed transition from them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class CardState(StrEnum):
    REQUESTED = "requested"
    APPROVED = "approved"
    READY = "ready"
    PRODUCING = "producing"
    AT_BUREAU = "at_bureau"  # in an order file a service bureau is producing
    ISSUED = "issued"
    ACTIVE = "active"
    INACTIVE = "inactive"
    LOCKED = "locked"
    EXPIRED = "expired"
    REJECTED = "rejected"
    CANCELLED = "cancelled"
    FAILED = "failed"


class TempCardState(StrEnum):
    REQUESTED = "requested"
    APPROVED = "approved"
    READY = "ready"
    PRODUCING = "producing"
    UNASSIGNED = "unassigned"
    ASSIGNED = "assigned"
    LOCKED = "locked"
    REJECTED = "rejected"
    CANCELLED = "cancelled"
    FAILED = "failed"


class CertState(StrEnum):
    VALID = "valid"
    HOLD = "hold"
    REVOKED = "revoked"
    EXPIRED = "expired"


class UserState(StrEnum):
    ACTIVE = "active"
    INACTIVE = "inactive"
    LOCKED = "locked"
    DELETED = "deleted"


class AttemptState(StrEnum):
    IN_PROGRESS = "in_progress"
    SUCCEEDED = "succeeded"
    SPOILED = "spoiled"


class BatchState(StrEnum):
    # A large file being imported a chunk at a time: its cards exist, ``requested``,
    # but nobody may decide on them until the import has finished.
    IMPORTING = "importing"
    REQUESTED = "requested"
    APPROVED = "approved"
    REJECTED = "rejected"
    # An import that did not finish (refused part-way or interrupted): its cards are
    # rejected and the file may be imported again.
    FAILED = "failed"
    # Withdrawn by an operator: its cards not yet at a station are cancelled with it
    # (those at a station finish).
    CANCELLED = "cancelled"


class SoftTokenState(StrEnum):
    REQUESTED = "requested"
    APPROVED = "approved"
    ISSUED = "issued"
    REVOKED = "revoked"
    REJECTED = "rejected"
    CANCELLED = "cancelled"


class IncidentState(StrEnum):
    OPEN = "open"  # the replacement request waits (for approval, production, assignment)
    CANCELLED = "cancelled"  # the card was found: the replacement request withdrawn
    CLOSED = "closed"  # the replacement was produced or assigned


class UpdateState(StrEnum):
    """A change to a chip already in a holder's hands (issue 13): renewal and the like."""

    PENDING = "pending"  # waiting for the card to be inserted at a desk or station
    IN_PROGRESS = "in_progress"  # a desk has the card and is writing it
    APPLIED = "applied"  # the chip carries it, read back
    FAILED = "failed"  # the chip refused it (a fault of the card): nothing half-done kept
    CANCELLED = "cancelled"  # no longer wanted (the card was locked, the holder left)


class BureauLineState(StrEnum):
    """One card in a service bureau's order file (schemas.bureau)."""

    ORDERED = "ordered"  # in an order file, not yet in a delivery file
    PRODUCED = "produced"  # delivered: the card exists, bound to its chip serial
    REJECTED = "rejected"  # the bureau could not make it (a reason code)


class UpdateKind(StrEnum):
    RENEW = "renew"  # new keys generated on the chip, new certificates, old ones erased
    RECOVER = "recover"  # chosen escrowed keys of the holder's earlier cards imported
    # A temporary card: new keys and certificates for its holder, valid until the end
    # of the assignment, and a new PIN (assign; extend for a longer assignment).
    ASSIGN = "assign"
    EXTEND = "extend"
    WIPE = "wipe"  # a withdrawn temporary card: every key erased, PIN and PUK rotated
    # A PIN forgotten, changed and forgotten, or blocked: reset with the card's PUK at a
    # desk, and a new PIN letter (seed 002 §5.3.10).
    RESET_PIN = "reset_pin"
    # A card a service bureau delivered: personalised at the desk (PIN and PUK set, keys
    # made, certificates written, the escrowed key imported), then active; the holder's
    # previous card is terminated at that moment and not before (seed 000).
    ACTIVATE = "activate"


class RequestState(StrEnum):
    """An operation waiting for an approver (seed 002 §4.2's approval step)."""

    PENDING = "pending"
    APPROVED = "approved"  # approved, and carried out in the same transaction
    REJECTED = "rejected"
    FAILED = "failed"  # approved, but no longer possible: nothing was changed
    CANCELLED = "cancelled"  # withdrawn by its requester


class IncidentKind(StrEnum):
    FORGOTTEN = "forgotten"
    LOST = "lost"
    STOLEN = "stolen"
    DAMAGED = "damaged"


class CredentialKind(StrEnum):
    CARD = "card"
    TEMP_CARD = "temp_card"


class CertUsage(StrEnum):
    AUTHENTICATION = "authentication"
    SIGNATURE = "signature"
    ENCRYPTION = "encryption"


class FaultKind(StrEnum):
    CHIP = "chip_failure"
    PRINT = "print_failure"
    JAM = "jam"
    LEASE_EXPIRED = "lease_expired"
    STATION_RESTART = "station_restart"
    CERTIFICATE_TIMEOUT = "certificate_timeout"
    LOST_RACE = "lost_race"


class RevocationReason(StrEnum):
    """RFC 5280 CRLReason names used by Cardline."""

    UNSPECIFIED = "unspecified"
    KEY_COMPROMISE = "key_compromise"
    AFFILIATION_CHANGED = "affiliation_changed"
    SUPERSEDED = "superseded"
    CESSATION_OF_OPERATION = "cessation_of_operation"
    CERTIFICATE_HOLD = "certificate_hold"
    PRIVILEGE_WITHDRAWN = "privilege_withdrawn"


# The reasons an operator may give to revoke a certificate (seed 002: cessation of
# operation, affiliation changed, key compromise, privilege withdrawn; plus superseded
# and unspecified).
OPERATOR_REASONS = (
    RevocationReason.CESSATION_OF_OPERATION,
    RevocationReason.AFFILIATION_CHANGED,
    RevocationReason.KEY_COMPROMISE,
    RevocationReason.PRIVILEGE_WITHDRAWN,
    RevocationReason.SUPERSEDED,
    RevocationReason.UNSPECIFIED,
)
# The reasons a card or a user may be locked for (its certificates are revoked with it).
LOCK_REASONS = (
    RevocationReason.PRIVILEGE_WITHDRAWN,
    RevocationReason.AFFILIATION_CHANGED,
    RevocationReason.CESSATION_OF_OPERATION,
    RevocationReason.KEY_COMPROMISE,
    RevocationReason.UNSPECIFIED,
)


@dataclass(frozen=True)
class Edge:
    """An action allowed from any of ``sources``, leading to ``target``."""

    action: str
    sources: frozenset[str]
    target: str


@dataclass(frozen=True)
class Machine:
    """A state machine: the states, the states a new entity may start in, the edges."""

    name: str
    states: frozenset[str]
    initial: frozenset[str]
    edges: tuple[Edge, ...]

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for edge in self.edges:
            if edge.action in seen:
                raise ValueError(f"{self.name}: action {edge.action!r} defined twice")
            seen.add(edge.action)
            unknown = (edge.sources | {edge.target}) - self.states
            if unknown:
                raise ValueError(f"{self.name}.{edge.action}: unknown states {sorted(unknown)}")

    def edge(self, action: str) -> Edge:
        for edge in self.edges:
            if edge.action == action:
                return edge
        raise KeyError(f"{self.name} has no action {action!r}")

    @property
    def actions(self) -> tuple[str, ...]:
        return tuple(edge.action for edge in self.edges)

    def target(self, state: str, action: str) -> str | None:
        """Where ``action`` leads from ``state``, or None when it is not allowed there
        (an action this machine does not have is allowed nowhere)."""
        if action not in self.actions:
            return None
        edge = self.edge(action)
        return edge.target if state in edge.sources else None

    def terminal_states(self) -> frozenset[str]:
        return frozenset(s for s in self.states if not any(s in e.sources for e in self.edges))


def _e(action: str, sources: str | tuple[str, ...], target: str) -> Edge:
    srcs = (sources,) if isinstance(sources, str) else sources
    return Edge(action, frozenset(srcs), target)


C = CardState
CARD = Machine(
    name="card",
    states=frozenset(C),
    initial=frozenset({C.REQUESTED, C.APPROVED}),
    edges=(
        _e("approve", C.REQUESTED, C.APPROVED),
        _e("reject", C.REQUESTED, C.REJECTED),
        _e("postpone", C.REQUESTED, C.REQUESTED),
        _e("cancel", (C.REQUESTED, C.APPROVED, C.READY), C.CANCELLED),
        # Secrets sealed and the escrowed key's certificate requested: the card stays
        # approved until that certificate exists (a card is ready only when every
        # server-side part is done).
        _e("escrow", C.APPROVED, C.APPROVED),
        _e("prepare", C.APPROVED, C.READY),
        _e("claim", C.READY, C.PRODUCING),
        _e("complete", C.PRODUCING, C.ACTIVE),
        _e("complete_issued", C.PRODUCING, C.ISSUED),
        _e("fault", C.PRODUCING, C.READY),
        _e("fail", C.PRODUCING, C.FAILED),
        # An operator gives a failed card a new attempt budget: it is prepared again
        # (its certificates were revoked when it failed) and queued on a new blank.
        _e("retry", C.FAILED, C.APPROVED),
        _e("activate", C.ISSUED, C.ACTIVE),
        # A service bureau (schemas.bureau): ordered in an order file, then delivered
        # (bound to its chip serial, issued: activated at a desk), or rejected by the
        # bureau and ordered again or failed, per the reason's policy.
        _e("export", C.READY, C.AT_BUREAU),
        _e("deliver", C.AT_BUREAU, C.ISSUED),
        _e("reorder", C.AT_BUREAU, C.READY),
        _e("bureau_fail", C.AT_BUREAU, C.FAILED),
        _e("deactivate", C.ACTIVE, C.INACTIVE),
        _e("reactivate", C.INACTIVE, C.ACTIVE),
        _e("lock", (C.ISSUED, C.ACTIVE, C.INACTIVE), C.LOCKED),
        _e("renew", C.ACTIVE, C.ACTIVE),
        _e("expire", (C.ACTIVE, C.INACTIVE, C.ISSUED), C.EXPIRED),
    ),
)

T = TempCardState
_T_LIVE = (T.REQUESTED, T.APPROVED, T.READY, T.UNASSIGNED, T.ASSIGNED)
TEMP_CARD = Machine(
    name="temp_card",
    states=frozenset(T),
    initial=frozenset({T.REQUESTED, T.APPROVED}),
    edges=(
        _e("approve", T.REQUESTED, T.APPROVED),
        _e("reject", T.REQUESTED, T.REJECTED),
        _e("postpone", T.REQUESTED, T.REQUESTED),
        _e("cancel", (T.REQUESTED, T.APPROVED, T.READY), T.CANCELLED),
        _e("escrow", T.APPROVED, T.APPROVED),
        _e("prepare", T.APPROVED, T.READY),
        _e("claim", T.READY, T.PRODUCING),
        _e("complete", T.PRODUCING, T.UNASSIGNED),
        _e("fault", T.PRODUCING, T.READY),
        _e("fail", T.PRODUCING, T.FAILED),
        _e("retry", T.FAILED, T.APPROVED),
        _e("assign", T.UNASSIGNED, T.ASSIGNED),
        _e("withdraw", T.ASSIGNED, T.UNASSIGNED),
        _e("extend", T.ASSIGNED, T.ASSIGNED),
        _e("lock", _T_LIVE, T.LOCKED),
    ),
)

K = CertState
CERTIFICATE = Machine(
    name="certificate",
    states=frozenset(K),
    initial=frozenset({K.VALID}),
    edges=(
        _e("hold", K.VALID, K.HOLD),
        _e("release", K.HOLD, K.VALID),
        _e("revoke", (K.VALID, K.HOLD), K.REVOKED),
        _e("expire", K.VALID, K.EXPIRED),
    ),
)

U = UserState
USER = Machine(
    name="user",
    states=frozenset(U),
    initial=frozenset({U.ACTIVE, U.INACTIVE}),
    edges=(
        _e("deactivate", U.ACTIVE, U.INACTIVE),
        _e("reactivate", U.INACTIVE, U.ACTIVE),
        _e("lock", (U.ACTIVE, U.INACTIVE), U.LOCKED),
        _e("delete", U.LOCKED, U.DELETED),
    ),
)

A = AttemptState
ATTEMPT = Machine(
    name="attempt",
    states=frozenset(A),
    initial=frozenset({A.IN_PROGRESS}),
    edges=(
        _e("succeed", A.IN_PROGRESS, A.SUCCEEDED),
        _e("spoil", A.IN_PROGRESS, A.SPOILED),
    ),
)

B = BatchState
BATCH = Machine(
    name="batch",
    states=frozenset(B),
    initial=frozenset({B.IMPORTING, B.REQUESTED, B.APPROVED}),
    edges=(
        _e("finish", B.IMPORTING, B.REQUESTED),
        _e("finish_approved", B.IMPORTING, B.APPROVED),  # no approval step: approved at once
        _e("abandon", B.IMPORTING, B.FAILED),
        _e("approve", B.REQUESTED, B.APPROVED),
        _e("reject", B.REQUESTED, B.REJECTED),
        _e("cancel", (B.REQUESTED, B.APPROVED), B.CANCELLED),
    ),
)

P = SoftTokenState
SOFT_TOKEN = Machine(
    name="soft_token",
    states=frozenset(P),
    initial=frozenset({P.REQUESTED, P.APPROVED}),
    edges=(
        _e("approve", P.REQUESTED, P.APPROVED),
        _e("reject", P.REQUESTED, P.REJECTED),
        _e("cancel", (P.REQUESTED, P.APPROVED), P.CANCELLED),
        _e("issue", P.APPROVED, P.ISSUED),
        # Audited reads of the stored passphrase ("display password") and redelivery.
        _e("reveal_passphrase", P.ISSUED, P.ISSUED),
        _e("revoke", P.ISSUED, P.REVOKED),
    ),
)

N = IncidentState
INCIDENT = Machine(
    name="incident",
    states=frozenset(N),
    initial=frozenset({N.OPEN}),
    edges=(
        _e("cancel", N.OPEN, N.CANCELLED),
        _e("close", N.OPEN, N.CLOSED),
    ),
)

Q = RequestState
APPROVAL_REQUEST = Machine(
    name="approval_request",
    states=frozenset(Q),
    initial=frozenset({Q.PENDING}),
    edges=(
        _e("approve", Q.PENDING, Q.APPROVED),
        _e("reject", Q.PENDING, Q.REJECTED),
        _e("fail", Q.PENDING, Q.FAILED),
        _e("cancel", Q.PENDING, Q.CANCELLED),
    ),
)

D = UpdateState
CARD_UPDATE = Machine(
    name="card_update",
    states=frozenset(D),
    initial=frozenset({D.PENDING}),
    edges=(
        _e("claim", D.PENDING, D.IN_PROGRESS),
        # A desk records each step it finished on the chip (keys made, written, old erased).
        _e("step", D.IN_PROGRESS, D.IN_PROGRESS),
        # The card left the desk before the end, or the desk died: it resumes where the
        # journal says at the next insertion.
        _e("release", D.IN_PROGRESS, D.PENDING),
        _e("apply", D.IN_PROGRESS, D.APPLIED),
        _e("fail", D.IN_PROGRESS, D.FAILED),
        _e("cancel", D.PENDING, D.CANCELLED),
    ),
)

BL = BureauLineState
BUREAU_LINE = Machine(
    name="bureau_line",
    states=frozenset(BL),
    initial=frozenset({BL.ORDERED}),
    edges=(
        _e("deliver", BL.ORDERED, BL.PRODUCED),
        _e("reject", BL.ORDERED, BL.REJECTED),
    ),
)

MACHINES: dict[str, Machine] = {
    m.name: m
    for m in (
        CARD,
        TEMP_CARD,
        CERTIFICATE,
        USER,
        ATTEMPT,
        BATCH,
        SOFT_TOKEN,
        INCIDENT,
        APPROVAL_REQUEST,
        CARD_UPDATE,
        BUREAU_LINE,
    )
}

# States in which a credential still needs the production line.
IN_PRODUCTION = frozenset({C.APPROVED, C.READY, C.PRODUCING})
# States in which a credential counts against the per-user card limit.
LIVE_CARD_STATES = frozenset(
    {C.REQUESTED, C.APPROVED, C.READY, C.PRODUCING, C.AT_BUREAU, C.ISSUED, C.ACTIVE, C.INACTIVE}
)
