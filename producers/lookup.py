"""Finding the card or user an operator names: by card number or id, by e-mail or id."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import Credential, User
from schemas.errors import NotFound, ValidationFailed

# Card numbers are long; a short all-digit reference is a credential id.
_MAX_ID_DIGITS = 9


def _is_id(text: str) -> bool:
    """ASCII digits only ("¹" and "٣" are digits to str.isdigit, not to int())."""
    return text.isascii() and text.isdigit() and len(text) <= _MAX_ID_DIGITS


def find_card(session: Session, card: str, *, lock: bool = False) -> Credential:
    """The credential with card number ``card``, or with id ``card``."""
    stmt = select(Credential).where(Credential.card_number == card)
    if _is_id(card):
        stmt = select(Credential).where(Credential.id == int(card))
    cred = session.scalars(stmt.with_for_update() if lock else stmt).first()
    if cred is None:
        raise NotFound("card", card)
    return cred


def find_user(session: Session, who: str, *, lock: bool = False) -> User:
    """The user with e-mail ``who`` (any case), or with id ``who``."""
    stmt = select(User).where(User.email == who.strip().lower())
    if _is_id(who):
        stmt = select(User).where(User.id == int(who))
    found = session.scalars((stmt.with_for_update() if lock else stmt).limit(2)).all()
    if not found:
        raise NotFound("user", who)
    if len(found) > 1:  # e-mails may be shared when Policy.email_unique is off
        raise ValidationFailed(f"several users have the e-mail {who}; name one by id", field="user")
    return found[0]
