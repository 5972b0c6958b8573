"""The roles of the HTTP API (DESIGN.md "Secrets and roles")."""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    REQUESTER = "requester"  # asks for users, cards, soft tokens
    APPROVER = "approver"  # decides requests (never their own)
    OPERATOR = "operator"  # runs the card and user lifecycle
    STATION = "station"  # a production station reporting in
    BUREAU = "bureau"  # a service bureau exchanging order and delivery files
    AUDITOR = "auditor"  # reads everything, changes nothing
    ADMIN = "admin"  # everything, and the configuration of roles


ALL_ROLES = tuple(Role)
