"""Users (card holders): create, edit, delete, find; and the same over many.

Attributes follow the batch CSV's rules (``schemas.batch.BatchRow``), so a user made
here and one made by an import are checked alike. E-mail and external id identify a
user and stay unique. An attribute edit is audited like a state change; the state
changes themselves (deactivate, reactivate, lock) live in ``producers.lifecycle``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import ValidationError
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from db.engine import Store
from db.models import Credential, User
from db.transition import create, record, transition
from producers.lookup import find_user
from schemas.api import UserOut
from schemas.batch import BatchRow, describe_errors
from schemas.errors import AlreadyExists, CardlineError, PermanentError, ValidationFailed
from schemas.policy import Policy
from schemas.states import UserState

EDITABLE = (
    "first_name",
    "last_name",
    "email",
    "upn",
    "organization",
    "org_unit",
    "title",
    "country",
    "username",
    "identifier",
    "external_id",
)
_CLOSED = (UserState.LOCKED, UserState.DELETED)
MAX_PAGE = 500


T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    total: int
    page: int
    per_page: int


def view(user: User, cards: int) -> UserOut:
    return UserOut(
        id=user.id,
        state=user.state,
        email=user.email,
        first_name=user.first_name,
        last_name=user.last_name,
        upn=user.upn,
        organization=user.organization,
        org_unit=user.org_unit,
        title=user.title,
        country=user.country,
        username=user.username,
        identifier=user.identifier,
        external_id=user.external_id,
        cards=cards,
        created_at=user.created_at.isoformat(timespec="seconds"),
        updated_at=user.updated_at.isoformat(timespec="seconds"),
    )


def validated(values: dict[str, Any]) -> BatchRow:
    """``values`` checked by the batch CSV's rules; the first problem names its field."""
    try:
        return BatchRow.model_validate({k: v for k, v in values.items() if k != "photo"})
    except ValidationError as exc:
        (where, reason), *_ = describe_errors(exc)
        raise ValidationFailed(reason, field=where) from None


def _check_unique(
    session: Session, row: BatchRow, *, other_than: int | None = None, email: bool = True
) -> None:
    """External ids are always unique; e-mails unless ``Policy.email_unique`` is off;
    UPNs (which smartcard-logon certificates carry) among users not deleted, whatever
    their case, so no one gets a card in another holder's name. Every audited writer
    holds the audit head lock, so no other transaction can take the name meanwhile."""
    checks = [("email", func.lower(User.email) == row.email)] if email else []
    if row.external_id:
        checks.append(("external_id", User.external_id == row.external_id))
    checks.append(
        ("upn", (func.lower(User.upn) == row.upn.lower()) & (User.state != UserState.DELETED))
    )
    for name, condition in checks:
        stmt = select(User.id).where(condition)
        if other_than is not None:
            stmt = stmt.where(User.id != other_than)
        holder = session.scalars(stmt).first()
        if holder is not None:
            raise AlreadyExists(f"{name} {getattr(row, name)!r} belongs to user {holder}")


def create_in(
    session: Session, row: BatchRow, *, by: str, state: str, why: str, unique_email: bool = True
) -> User:
    """A new user from validated attributes, inside the caller's transaction."""
    _check_unique(session, row, email=unique_email)
    user = User(state=state, **row.model_dump(exclude={"photo"}))
    return create(session, user, actor=by, reason=why)


def create_user(store: Store, values: dict[str, Any], *, by: str, policy: Policy) -> int:
    """A new user from ``values`` (the batch CSV's columns but ``photo``); returns its id.

    Its state is ``policy.user_status_after_create``.
    """
    with store.tx() as s:
        return create_user_in(s, values, by=by, policy=policy)


def create_user_in(session: Session, values: dict[str, Any], *, by: str, policy: Policy) -> int:
    """``create_user`` inside the caller's transaction."""
    user = create_in(
        session,
        validated(values),
        by=by,
        state=policy.user_status_after_create,
        why="user created",
        unique_email=policy.email_unique,
    )
    return user.id


def update_in(
    session: Session,
    user: User,
    changes: dict[str, Any],
    *,
    by: str,
    why: str = "changed",
    unique_email: bool = True,
) -> list[str]:
    """Change attributes of ``user`` inside the caller's transaction (audited); returns
    the names of those that changed."""
    unknown = sorted(set(changes) - set(EDITABLE))
    if unknown:
        raise ValidationFailed(f"not an editable attribute: {unknown[0]}", field=unknown[0])
    if user.state in _CLOSED:
        raise PermanentError(f"user {user.id} is {user.state}; it cannot be edited")
    current = {name: getattr(user, name) for name in EDITABLE}
    row = validated({**current, **changes})
    _check_unique(session, row, other_than=user.id, email=unique_email)
    wanted = row.model_dump(exclude={"photo"})
    changed = sorted(k for k in EDITABLE if wanted[k] != current[k])
    if not changed:
        return []
    record(
        session,
        user,
        "update",
        actor=by,
        reason=f"{why} {', '.join(changed)}",
        changes={name: wanted[name] for name in changed},
    )
    return changed


def apply_requested_changes(
    session: Session, cred: Credential, *, by: str, unique_email: bool = True
) -> list[str]:
    """Make the changes a batch row asked for on the card's holder (kept on the card
    until its request is approved); returns the attributes changed. The card's own
    approval clears ``user_changes``."""
    changes = dict(cred.user_changes or {})
    user = cred.user
    if not changes or user is None:
        return []
    photo = changes.pop("photo_path", None)
    why = f"batch {cred.batch_id} approved:"
    changed = update_in(session, user, changes, by=by, why=why, unique_email=unique_email)
    if photo is not None and photo != user.photo_path:
        record(
            session,
            user,
            "update",
            actor=by,
            reason=f"{why} photo_path",
            changes={"photo_path": photo},
        )
        changed.append("photo_path")
    return changed


def update_user(
    store: Store, who: str, changes: dict[str, Any], *, by: str, unique_email: bool = True
) -> list[str]:
    """Change attributes of user ``who``; returns the names of those that changed."""
    with store.tx() as s:
        return update_user_in(s, who, changes, by=by, unique_email=unique_email)


def update_user_in(
    session: Session, who: str, changes: dict[str, Any], *, by: str, unique_email: bool = True
) -> list[str]:
    """``update_user`` inside the caller's transaction."""
    user = find_user(session, who, lock=True)
    return update_in(session, user, changes, by=by, unique_email=unique_email)


def delete_user(store: Store, who: str, *, by: str, reason: str | None = None) -> str:
    """``locked -> deleted``: only a locked user (no live card or certificate) goes."""
    with store.tx() as s:
        return delete_user_in(s, who, by=by, reason=reason)


def delete_user_in(session: Session, who: str, *, by: str, reason: str | None = None) -> str:
    """``delete_user`` inside the caller's transaction."""
    user = find_user(session, who, lock=True)
    return transition(session, user, "delete", actor=by, reason=reason or "user deleted")


def _cards_of(session: Session, user_ids: list[int]) -> dict[int, int]:
    if not user_ids:
        return {}
    stmt = (
        select(Credential.user_id, func.count())
        .where(Credential.user_id.in_(user_ids))
        .group_by(Credential.user_id)
    )
    return {uid: int(n) for uid, n in session.execute(stmt) if uid is not None}


def get_user(store: Store, who: str) -> UserOut:
    with store.read() as s:
        user = find_user(s, who)
        return view(user, _cards_of(s, [user.id]).get(user.id, 0))


def _search(state: str | None, text: str | None) -> Any:
    stmt = select(User)
    if state is not None:
        stmt = stmt.where(User.state == state)
    if text:
        # Literal text: autoescape keeps "%" and "_" from matching everything (the bulk
        # operations' guard asks for a text that narrows the search).
        needle = text.strip().lower()
        columns = (
            User.email,
            User.first_name,
            User.last_name,
            User.organization,
            User.org_unit,
            func.coalesce(User.external_id, ""),
        )
        stmt = stmt.where(or_(*(func.lower(c).contains(needle, autoescape=True) for c in columns)))
    return stmt


def search_users(
    store: Store,
    *,
    state: str | None = None,
    text: str | None = None,
    page: int = 1,
    per_page: int = 50,
) -> Page[UserOut]:
    """Users in ``state`` whose name, e-mail, organisation or external id contains
    ``text``, by id, one page at a time."""
    if page < 1:
        raise ValidationFailed("pages start at 1", field="page")
    if not 1 <= per_page <= MAX_PAGE:
        raise ValidationFailed(f"between 1 and {MAX_PAGE}", field="per_page")
    if state is not None and state not in {s.value for s in UserState}:
        raise ValidationFailed(f"not a user state: {state}", field="state")
    stmt = _search(state, text)
    with store.read() as s:
        total = int(s.scalar(select(func.count()).select_from(stmt.subquery())) or 0)
        users = list(
            s.scalars(stmt.order_by(User.id).offset((page - 1) * per_page).limit(per_page))
        )
        cards = _cards_of(s, [u.id for u in users])
        items = [view(u, cards.get(u.id, 0)) for u in users]
    return Page(items=items, total=total, page=page, per_page=per_page)


@dataclass
class BulkReport:
    """What a multi-user operation did to each user it found."""

    done: list[int] = field(default_factory=list)
    refused: dict[int, str] = field(default_factory=dict)


def for_each_user(
    store: Store,
    *,
    state: str | None,
    text: str | None,
    action: Callable[[str], object],
    limit: int = 1000,
    on_progress: Callable[[int, int], None] | None = None,
) -> BulkReport:
    """Apply ``action`` (one of the single-user operations, each its own transaction)
    to every user the search finds. A user it refuses keeps its state; the others go on.
    ``on_progress(done, total)`` follows along (the CLI's progress bar).
    """
    if not (state or (text and text.strip())):
        raise ValidationFailed("narrow the search: give a state or a text", field="text")
    with store.read() as s:
        ids = list(s.scalars(_search(state, text).with_only_columns(User.id).order_by(User.id)))
    if len(ids) > limit:
        raise ValidationFailed(
            f"the search finds {len(ids)} users; at most {limit} at once", field="text"
        )
    report = BulkReport()
    for index, user_id in enumerate(ids, start=1):
        try:
            action(str(user_id))
        except CardlineError as exc:
            report.refused[user_id] = str(exc)
        else:
            report.done.append(user_id)
        if on_progress is not None:
            on_progress(index, len(ids))
    return report
