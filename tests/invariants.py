"""The bureau's books: what must hold for every card once a line has drained."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from sqlalchemy import select

from db.audit import verify_chain
from db.engine import Store
from db.models import Certificate, Credential, OutboxMessage, ProductionAttempt
from schemas.policy import Policy


def assert_books_balance(store: Store, policy: Policy, *, expect_letters: bool = True) -> dict:
    """Assert every invariant of a drained line; return a few counts for the caller."""
    with store.read() as s:
        cards = s.scalars(select(Credential)).all()
        attempts = s.scalars(select(ProductionAttempt)).all()
        certs = s.scalars(select(Certificate)).all()
        unsent = s.scalars(select(OutboxMessage).where(OutboxMessage.sent_at.is_(None))).all()
        chain = verify_chain(s)
    by_card: dict[int, list[ProductionAttempt]] = {}
    for a in attempts:
        by_card.setdefault(a.credential_id, []).append(a)
    attempt_state = {a.id: a.state for a in attempts}
    states = Counter(c.state for c in cards)
    assert set(states) <= {"active", "failed"}, f"cards not finished: {states}"
    for card in cards:
        outcomes = Counter(a.state for a in by_card.get(card.id, []))
        assert outcomes["in_progress"] == 0, f"card {card.id} has a live attempt"
        if card.state == "active":
            assert outcomes["succeeded"] == 1, f"card {card.id}: {outcomes}"
            assert card.attempt_count == outcomes["succeeded"] + outcomes["spoiled"]
            if expect_letters:
                assert card.pin_letter_path
                assert Path(card.pin_letter_path).is_file()
        else:
            assert outcomes == Counter({"spoiled": policy.max_attempts}), outcomes
            assert not [c for c in certs if c.credential_id == card.id and c.state == "valid"]
    for cert in certs:
        if cert.attempt_id is not None and attempt_state[cert.attempt_id] == "spoiled":
            assert cert.state == "revoked", f"valid certificate {cert.serial} on a spoiled blank"
    valid_per_card = Counter((c.credential_id, c.usage) for c in certs if c.state == "valid")
    for card in cards:
        if card.state == "active":
            for usage in policy.certificates:
                assert valid_per_card[(card.id, usage)] == 1, (card.id, usage)
    outcomes_all = Counter(a.state for a in attempts)
    blanks = len(attempts)
    assert blanks == outcomes_all["succeeded"] + outcomes_all["spoiled"]
    assert not unsent, f"{len(unsent)} outbox rows unsent"
    assert chain.ok, f"audit chain broken at {chain.first_bad_seq}"
    return {"cards": dict(states), "blanks": blanks, "spoiled": outcomes_all["spoiled"]}
