"""The bureau's books, asserted: a thin test wrapper over ``db.books.check_books``."""

from __future__ import annotations

from db.books import check_books
from db.engine import Store
from schemas.policy import Policy


def assert_books_balance(store: Store, policy: Policy, *, expect_letters: bool = True) -> dict:
    """Assert every invariant of a drained line; return a few counts for the caller."""
    with store.read() as s:
        books = check_books(s, policy, expect_letters=expect_letters)
    assert books.balanced, "\n".join(books.problems[:20])
    return {"cards": books.cards, "blanks": books.blanks, "spoiled": books.spoiled}
