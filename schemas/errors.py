"""One error tree, grouped by how a caller reacts.

- ``TransientError``: try again later (a device hiccup, a lost connection).
- ``PermanentError``: the input or the request is wrong; retrying will not help.
- ``ConfigurationError``: the installation is wrong; fail at start-up (``SchemaOutOfDate``:
  the status store needs ``cardline db upgrade``).
- ``ConflictError``: the state of the world moved under the caller (``StateConflict``).

Errors carry their data as attributes. None of them ever carries a secret: callers
pass identifiers, never PINs, PUKs or keys.
"""

from __future__ import annotations

from collections.abc import Iterable


class CardlineError(Exception):
    """Base of every error Cardline raises on purpose."""


# How long a client is asked to wait (HTTP Retry-After) before trying again.
RETRY_AFTER_S = 5


class TransientError(CardlineError):
    """Retrying later may succeed."""


class PermanentError(CardlineError):
    """Retrying will not help: the request or the input is wrong."""


class ConfigurationError(CardlineError):
    """The installation or its configuration is wrong."""


class SchemaOutOfDate(ConfigurationError):
    """The status store's schema is not the revision this Cardline needs.

    ``url`` is shown without its password; ``current`` is None for a store with no schema.
    Only ``cardline db upgrade`` (and the demo on its own fresh data dir) migrates.
    """

    def __init__(self, url: str, current: str | None, head: str, *, known: bool = True) -> None:
        self.url = url
        self.current = current
        self.head = head
        at = f"the status store at {url} is at revision {current or 'none'}"
        if known:
            super().__init__(f"{at}, this Cardline needs {head}: run `cardline db upgrade`")
        else:
            super().__init__(f"{at}, unknown to this Cardline (at {head}): upgrade Cardline")


class ConflictError(CardlineError):
    """The state of the world is not what the caller expected."""


class StateConflict(ConflictError):
    """A transition was illegal from the current state, or another writer won the race.

    Nothing was changed by the call that raised it.
    """

    def __init__(
        self,
        entity: str,
        entity_id: object,
        action: str,
        current: str | None,
        expected: Iterable[str],
        detail: str = "",
    ) -> None:
        self.entity = entity
        self.entity_id = entity_id
        self.action = action
        self.current = current
        self.expected = tuple(sorted(expected))
        self.detail = detail
        message = (
            f"{entity} {entity_id}: cannot {action} from state "
            f"{None if current is None else str(current)!r} "
            f"(allowed from: {', '.join(self.expected) or 'nowhere'})"
        )
        super().__init__(f"{message}; {detail}" if detail else message)


class ValidationFailed(PermanentError):
    """Input was rejected; ``field`` and ``line`` say where."""

    def __init__(self, reason: str, *, field: str | None = None, line: int | None = None) -> None:
        self.reason = reason
        self.field = field
        self.line = line
        where = []
        if line is not None:
            where.append(f"line {line}")
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__(f"{', '.join(where)}: {reason}" if where else reason)


class FourEyesViolation(PermanentError):
    """The principal deciding on a request is the one who requested it.

    ``who`` is that principal (as the decider named it), ``what`` the request."""

    def __init__(self, who: str, what: str) -> None:
        self.who = who
        self.what = what
        super().__init__(
            f"{who} may not approve or reject {what}: they requested it (four-eyes rule)"
        )


class DeviceFault(TransientError):
    """A station device failed while producing a card.

    ``kind`` is one of ``schemas.states.FaultKind``; ``code`` keeps the raw device status
    (a CKR_* name, an SW1SW2 word, a CUPS job state) when there is one.
    """

    def __init__(self, kind: str, detail: str, *, code: str | None = None) -> None:
        self.kind = kind
        self.detail = detail
        self.code = code
        suffix = f" [{code}]" if code else ""
        super().__init__(f"{kind}: {detail}{suffix}")


class Forbidden(PermanentError):
    """The person acting lacks the role the action needs."""

    def __init__(self, who: str, action: str, roles: tuple[str, ...]) -> None:
        self.who = who
        self.action = action
        self.roles = roles
        super().__init__(f"{who} may not {action}: it needs the role {' or '.join(roles)}")


class Refused(PermanentError):
    """The action is not this principal's to take (not a matter of role)."""


class ApprovalRequired(Refused):
    """Validated issuance is on: nothing may issue a card without an approver."""

    def __init__(self) -> None:
        super().__init__(
            "validated issuance is on ([policy] approval_required): request the card "
            "(`cardline card request`, POST /cards) and have an approver approve it; "
            "no one issues a card alone"
        )


class NotFound(PermanentError):
    """The entity asked for does not exist."""

    def __init__(self, entity: str, entity_id: object) -> None:
        self.entity = entity
        self.entity_id = entity_id
        super().__init__(f"{entity} {entity_id} does not exist")


class AlreadyExists(ConflictError):
    """What the caller asks to create exists already (e.g. an open issuance request)."""


class Unauthorized(PermanentError):
    """No credentials, or credentials Cardline does not know (or revoked)."""


class InvalidCpr(PermanentError):
    """A card production request whose signature does not verify, or that cannot be
    stored; nothing of it was kept."""
