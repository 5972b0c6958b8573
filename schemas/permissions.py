"""Which role may run which use case: one table, the only source of permissions.

The HTTP API, the console and the CLI check a principal's stored roles against this
table and nothing else; the README's role table and ``cardline roles`` are rendered
from it. It starts from seed 002 §7 ("Roles vs use cases"), split by the seed's finer
roles (approver / validation officer, issuance operator, help desk, soft token
administrator, ...), plus Cardline's own use cases for stations, identity systems and
bureaus. ``admin`` administers principals, roles and tokens and may run every use case.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.roles import Role

R = Role
READERS = (R.REQUESTER, R.APPROVER, R.OPERATOR, R.HELP_DESK, R.AUDITOR)


@dataclass(frozen=True)
class UseCase:
    name: str
    what: str
    roles: frozenset[Role]
    seed: str = ""  # where the use case comes from


def _u(name: str, what: str, roles: tuple[Role, ...], seed: str = "") -> UseCase:
    return UseCase(name, what, frozenset(roles), seed)


USE_CASES: tuple[UseCase, ...] = (
    # users (seed 002 §5.1)
    _u("user.read", "find and read users", READERS),
    _u("user.create", "create a user", (R.REQUESTER, R.OPERATOR), "002 §5.1.1"),
    _u("user.edit", "edit a user's attributes", (R.OPERATOR,), "002 §5.1.6"),
    _u("user.deactivate", "deactivate a user", (R.OPERATOR,), "002 §5.1.3"),
    _u("user.reactivate", "reactivate a user", (R.OPERATOR,), "002 §5.1.4"),
    _u("user.lock", "lock a user", (R.OPERATOR,), "002 §5.1.5"),
    _u("user.delete", "delete a locked user", (R.OPERATOR,), "002 §5.1.7"),
    _u("user.bulk", "deactivate, lock or delete users by search", (R.OPERATOR,), "002 §5.1.14"),
    # batches and CPRs (seed 000)
    _u("batch.read", "list batches and their progress", (*READERS, R.BUREAU)),
    _u("batch.import", "import a batch file", (R.REQUESTER, R.BUREAU)),
    _u("batch.decide", "approve or reject a batch", (R.APPROVER,), "001 validated"),
    _u("batch.cancel", "cancel a batch's cards not yet at a station", (R.OPERATOR,)),
    _u("batch.priority", "set a batch's priority on the line", (R.OPERATOR, R.APPROVER)),
    _u("cpr.submit", "submit a signed card production request", (R.IDENTITY_SYSTEM,), "000"),
    # service bureaus (seed 000: order files out, delivery files in)
    _u("bureau.export", "export a bureau's order file", (R.OPERATOR, R.BUREAU), "000"),
    _u("bureau.import", "import a bureau's delivery file", (R.OPERATOR, R.BUREAU), "000"),
    _u("bureau.read", "read the bureau accounting", (*READERS, R.BUREAU), "000"),
    # cards (seed 002 §5.3)
    _u("card.read", "find and read cards", READERS),
    _u("card.request", "request a card", (R.REQUESTER, R.OPERATOR), "002 §5.3.1"),
    _u("card.issue", "issue a card (local issuance)", (R.OPERATOR,), "001 local; 002 §5.3.2"),
    _u("card.decide", "approve, reject or postpone a card request", (R.APPROVER,), "001"),
    _u("card.cancel", "cancel a card request not yet produced", (R.REQUESTER, R.OPERATOR)),
    _u("card.edit", "edit a card before production", (R.OPERATOR,), "002 §5.3.6"),
    _u("card.retry", "give a failed card a new attempt budget", (R.OPERATOR,)),
    _u("card.activate", "activate an issued card", (R.OPERATOR,)),
    _u("card.deactivate", "deactivate a card", (R.OPERATOR,), "002 §5.3.7"),
    _u("card.reactivate", "reactivate a card", (R.OPERATOR,), "002 §5.3.8"),
    _u("card.lock", "lock a card", (R.OPERATOR,), "002 §5.3.9"),
    _u("card.renew", "renew a card's certificates", (R.OPERATOR,), "002 §5.3.5"),
    _u("card.recover", "recover escrowed keys onto a card", (R.OPERATOR,), "002 §5.3.4"),
    _u("card.unblock", "answer a card's unblock challenge", (R.HELP_DESK,), "002 §5.3.10"),
    _u("card.incident", "declare a card forgotten, lost, stolen or damaged", (R.OPERATOR,), "003"),
    _u("incident.decide", "approve a replacement request", (R.APPROVER,), "003"),
    _u("incident.read", "list device incidents", (R.APPROVER, R.OPERATOR, R.AUDITOR)),
    # temporary cards (seed 002 §5.4)
    _u("tempcard.stock", "order a stock of temporary cards", (R.OPERATOR,), "002 §5.4.1"),
    _u("tempcard.assign", "assign a temporary card", (R.OPERATOR,), "002 §5.4.2"),
    _u("tempcard.extend", "extend a temporary card", (R.OPERATOR,), "002 §5.4.5"),
    _u("tempcard.withdraw", "withdraw a temporary card", (R.OPERATOR,), "002 §5.4.3"),
    # certificates and the CA (seed 002 §5.2)
    _u("certificate.read", "find certificates, export them", READERS),
    _u("certificate.revoke", "revoke a certificate", (R.OPERATOR,), "002 §5.2.4"),
    _u("certificate.hold", "hold or release a certificate", (R.OPERATOR,)),
    _u("escrow.export", "export an escrowed key as a PFX", (R.OPERATOR,), "003"),
    _u("pki.admin", "initialise the CA, publish a CRL", ()),
    # soft tokens (seed 004, seed 002 §5.2.1-5.2.3)
    _u("softtoken.request", "request a soft token", (R.REQUESTER, R.SOFTTOKEN_ADMIN), "004"),
    _u("softtoken.decide", "approve or reject a soft token request", (R.APPROVER,), "004"),
    _u("softtoken.manage", "cancel or revoke a soft token", (R.SOFTTOKEN_ADMIN,), "004"),
    _u("softtoken.password", "display a soft token's passphrase", (R.SOFTTOKEN_ADMIN,), "002"),
    _u("softtoken.read", "list soft tokens", (*READERS, R.SOFTTOKEN_ADMIN)),
    # the line
    _u("line.status", "read the line's status", (*READERS, R.BUREAU, R.STATION, R.MONITORING)),
    _u("alerts.read", "list the open alerts", (*READERS, R.MONITORING)),
    _u("metrics.read", "scrape the line's metrics (Prometheus)", (R.OPERATOR, R.MONITORING)),
    _u("station.report", "a station reporting its work", (R.STATION,)),
    _u("line.pause", "pause or resume a line or a station", (R.OPERATOR,)),
    _u("approvals.read", "list what waits for a decision", (R.APPROVER, R.AUDITOR)),
    _u("attention.read", "list work that needs a person", READERS),
    _u("attention.resolve", "mark work that needed a person fixed", (R.OPERATOR,)),
    _u("request.decide", "approve or reject a held lifecycle request", (R.APPROVER,), "002 §4.2"),
    _u("request.cancel", "withdraw one's own held request", (R.REQUESTER, R.OPERATOR, R.HELP_DESK)),
    _u("audit.read", "read the audit log", (R.AUDITOR,)),
    # administration
    _u("principal.admin", "create principals, issue and revoke tokens", ()),
    _u("principal.roles", "change a principal's roles", (), "002 §5.1.12"),
)

BY_NAME: dict[str, UseCase] = {u.name: u for u in USE_CASES}
if len(BY_NAME) != len(USE_CASES):  # pragma: no cover - a typo in the table above
    raise ValueError("a use case is listed twice")


def roles_for(use_case: str) -> frozenset[Role]:
    """The roles that may run ``use_case`` (``admin`` always may); KeyError if unknown."""
    return BY_NAME[use_case].roles | {Role.ADMIN}


def may(roles: frozenset[Role] | set[Role], use_case: str) -> bool:
    return bool(roles_for(use_case) & set(roles))


def markdown_table() -> str:
    """The table as Markdown (README, ``cardline roles --markdown``)."""
    rows = ["| use case | what | roles | seed |", "|---|---|---|---|"]
    for u in USE_CASES:
        roles = ", ".join(sorted(r.value for r in roles_for(u.name)))
        rows.append(f"| `{u.name}` | {u.what} | {roles} | {u.seed} |")
    return "\n".join(rows) + "\n"
