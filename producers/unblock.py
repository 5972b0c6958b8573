"""Help-desk unblock (seed 002 §5.3.10; seed 003 "unlock"): the card shows a challenge,
the holder reads it to the help desk, Cardline answers it with the card's admin key, the
holder types the response into the card, which resets the PIN. The PIN letter's promise
that the help desk can unblock a card rests on this.

Or, with the card at an update desk, ``request_pin_reset``: the desk resets the PIN with
the card's PUK (which the store keeps sealed) and the holder gets a new PIN letter; for
a card without an admin key, or a holder who would rather bring the card in.

Each answer is audited (``unblock`` on the card: who, which challenge's first digits,
never the response or the key). A card that has no admin key, or is not in a state in
which a holder uses it, is refused with ``StateConflict``.
"""

from __future__ import annotations

from dataclasses import dataclass

from db import updates
from db.adminkey import challenge_bytes, compute_response
from db.engine import Store
from db.secrets import SecretBox, context
from db.transition import record
from producers.lookup import find_card
from schemas.errors import StateConflict
from schemas.states import CardState, TempCardState

# The states in which a holder has the card and may need it unblocked.
IN_HOLDERS_HANDS = frozenset(
    {CardState.ACTIVE, CardState.ISSUED, CardState.INACTIVE, TempCardState.ASSIGNED}
)


def request_pin_reset(store: Store, card: str, *, by: str) -> int:
    """A PIN reset of ``card`` waiting for it at a desk; returns the update's id."""
    with store.tx() as s:
        cred = find_card(s, card, lock=True)
        if cred.state not in IN_HOLDERS_HANDS or cred.puk_sealed is None:
            raise StateConflict(
                cred.machine.name, cred.id, "reset_pin", cred.state, sorted(IN_HOLDERS_HANDS)
            )
        row = updates.request_pin_reset(s, cred, by=by)
        return row.id


@dataclass(frozen=True)
class UnblockResponse:
    card_number: str
    response: str  # 16 hex digits: what the holder types into the card


def unblock_response(
    store: Store, box: SecretBox, card: str, challenge: str, *, by: str
) -> UnblockResponse:
    """The response to the challenge card ``card`` shows, computed with its admin key."""
    challenge_bytes(challenge)  # ValidationFailed (field "challenge") before anything
    cleaned = "".join(challenge.split()).upper()
    with store.tx() as s:
        cred = find_card(s, card, lock=True)
        if cred.state not in IN_HOLDERS_HANDS:
            raise StateConflict(
                cred.machine.name, cred.id, "unblock", cred.state, sorted(IN_HOLDERS_HANDS)
            )
        if cred.admin_key_sealed is None:
            raise StateConflict(
                cred.machine.name,
                cred.id,
                "unblock",
                cred.state,
                (),
                detail="the card has no admin key: unblock it with its PUK at a desk",
            )
        record(
            s,
            cred,
            "unblock",
            actor=by,
            reason=f"unblock response given for challenge {cleaned[:4]}…",
        )
        sealed, cred_id = cred.admin_key_sealed, cred.id
        number = cred.card_number or str(cred.id)
    admin_key = box.open(sealed, context=context("credential", cred_id, "admin_key"))
    return UnblockResponse(card_number=number, response=compute_response(admin_key, cleaned))
