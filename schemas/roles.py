"""Roles (DESIGN.md "Principals, roles, approvals").

The seed's roles (seed 002 §7 and its use cases; seed 001's validation officer) beside
Cardline's own for stations and identity systems. A role grants exactly the use cases
``schemas.permissions.USE_CASES`` lists for it, and nothing else; roles are stored on
principals, and that table is the only thing permissions are checked against.
"""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    REQUESTER = "requester"  # asks for users, cards, soft tokens
    APPROVER = "approver"  # the validation officer: decides requests (never their own)
    OPERATOR = "operator"  # the issuance operator: card and user lifecycle
    HELP_DESK = "help_desk"  # unblocks cards, answers holders
    SOFTTOKEN_ADMIN = "softtoken_admin"  # software tokens: issue, display password
    VSC_MANAGER = "vsc_manager"  # virtual smart cards
    MOBILE_ID_MANAGER = "mobile_id_manager"  # Mobile ID profiles
    PASSKEY_MANAGER = "passkey_manager"  # FIDO2 passkeys
    BUREAU = "bureau"  # a service bureau exchanging order and delivery files
    AUDITOR = "auditor"  # reads everything, changes nothing
    ADMIN = "admin"  # principals, roles and tokens; everything else too
    SELF_SERVICE = "self_service"  # a holder acting on their own credentials
    STATION = "station"  # a production station reporting in
    IDENTITY_SYSTEM = "identity_system"  # an IDMS submitting signed CPRs
    MONITORING = "monitoring"  # a monitoring system (Prometheus): metrics, alerts, status


ALL_ROLES = tuple(Role)


class PrincipalKind(StrEnum):
    OPERATOR = "operator"  # a person with a named account
    IDENTITY_SYSTEM = "identity_system"
    BUREAU = "bureau"
    STATION = "station"
    SERVICE = "service"  # a Cardline process (relay, worker, demo)
