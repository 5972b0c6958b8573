"""The bureau's books: what must hold for every card once a line has drained.

Every blank fed is an attempt that ended succeeded or spoiled; every active card has
exactly one succeeded attempt and its certificates; a failed card used all its
attempts and keeps no valid certificate; no valid certificate sits on a spoiled blank;
nothing waits in the outbox; the audit chain verifies (against its signed checkpoints
too, given the checkpoint key).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from db import checkpoints
from db.audit import verify_chain
from db.checkpoints import CheckpointKey
from db.models import Certificate, Credential, OutboxMessage, ProductionAttempt
from db.production import ATTEMPTS_CAP_FACTOR, CARD_FAULTS
from schemas.policy import Policy
from schemas.states import AttemptState, CardState, CertState


@dataclass
class Books:
    problems: list[str] = field(default_factory=list)
    cards: dict[str, int] = field(default_factory=dict)
    blanks: int = 0
    succeeded: int = 0
    spoiled: int = 0

    @property
    def balanced(self) -> bool:
        return not self.problems


def check_books(
    session: Session,
    policy: Policy,
    *,
    expect_letters: bool = True,
    checkpoint_key: CheckpointKey | None = None,
) -> Books:
    """Check every invariant of a drained line; list each one that does not hold."""
    cards = session.scalars(select(Credential)).all()
    attempts = session.scalars(select(ProductionAttempt)).all()
    certs = session.scalars(select(Certificate)).all()
    unsent = session.scalars(select(OutboxMessage.id).where(OutboxMessage.sent_at.is_(None)))
    books = Books(cards=dict(Counter(c.state for c in cards)))
    outcomes = Counter(a.state for a in attempts)
    books.blanks = len(attempts)
    books.succeeded = outcomes[AttemptState.SUCCEEDED]
    books.spoiled = outcomes[AttemptState.SPOILED]
    problems = books.problems
    unfinished = set(books.cards) - {CardState.ACTIVE, CardState.FAILED}
    if unfinished:
        problems.append(f"cards not finished: { {s: books.cards[s] for s in unfinished} }")
    if books.blanks != books.succeeded + books.spoiled:
        problems.append(
            f"{books.blanks} blanks but {books.succeeded} succeeded + "
            f"{books.spoiled} spoiled attempts"
        )
    _check_cards(cards, attempts, certs, policy, expect_letters, problems)
    spoiled_ids = {a.id for a in attempts if a.state == AttemptState.SPOILED}
    for cert in certs:
        if cert.attempt_id in spoiled_ids and cert.state != CertState.REVOKED:
            problems.append(f"certificate {cert.serial} is {cert.state} on a spoiled blank")
    if pending := len(list(unsent)):
        problems.append(f"{pending} outbox messages unsent")
    if checkpoint_key is None:
        chain = verify_chain(session)
        if not chain.ok:
            problems.append(f"audit chain broken at event {chain.first_bad_seq}")
    else:
        # Everything verify_chain checks, and the chain through every signed checkpoint.
        sealed = checkpoints.verify(session, checkpoint_key, full=True)
        if not sealed.ok:
            problems.append(f"audit chain broken: {sealed.problem}")
    return books


def _check_cards(
    cards: Sequence[Credential],
    attempts: Sequence[ProductionAttempt],
    certs: Sequence[Certificate],
    policy: Policy,
    expect_letters: bool,
    problems: list[str],
) -> None:
    by_card: dict[int, Counter[str]] = {}
    card_faults: Counter[int] = Counter()
    for a in attempts:
        by_card.setdefault(a.credential_id, Counter())[a.state] += 1
        if a.state == AttemptState.SPOILED and a.fault in CARD_FAULTS:
            card_faults[a.credential_id] += 1
    valid = Counter((c.credential_id, c.usage) for c in certs if c.state == CertState.VALID)
    for card in cards:
        seen = by_card.get(card.id, Counter())
        if seen[AttemptState.IN_PROGRESS]:
            problems.append(f"card {card.id} still has a live attempt")
        if card.state == CardState.ACTIVE:
            if seen[AttemptState.SUCCEEDED] != 1:
                problems.append(
                    f"active card {card.id} has {seen[AttemptState.SUCCEEDED]} succeeded attempts"
                )
            for usage in policy.certificates:
                if valid[(card.id, usage)] != 1:
                    problems.append(
                        f"active card {card.id} has {valid[(card.id, usage)]} "
                        f"valid {usage} certificates"
                    )
            if expect_letters and not (
                card.pin_letter_path and Path(card.pin_letter_path).is_file()
            ):
                problems.append(f"active card {card.id} has no PIN letter")
        elif card.state == CardState.FAILED:
            faults = card_faults.get(card.id, 0)
            total = sum(seen.values())
            if set(seen) != {AttemptState.SPOILED} or not (
                faults == policy.max_attempts or total == policy.max_attempts * ATTEMPTS_CAP_FACTOR
            ):
                problems.append(
                    f"failed card {card.id} has attempts {dict(seen)}, {faults} card faults"
                )
            if any(valid[(card.id, u)] for u in policy.certificates):
                problems.append(f"failed card {card.id} keeps a valid certificate")
