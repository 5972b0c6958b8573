"""User search text is literal: ``%`` and ``_`` match themselves, not everything, so a
search cannot widen a bulk operation past what it names. On SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from db.engine import Store
from producers import users
from tests import factories


def _users(store: Store) -> dict[str, int]:
    """Three users; only the first has a literal "%" and only the second a "_"."""
    with store.tx() as s:
        percent, underscore, plain = factories.user(s), factories.user(s), factories.user(s)
        percent.org_unit = "R%D"
        underscore.org_unit = "Field_Service"
        return {"%": percent.id, "_": underscore.id, "plain": plain.id}


@pytest.mark.parametrize("wildcard", ["%", "_"])
def test_a_like_wildcard_in_search_text_finds_only_users_holding_it_literally(store, wildcard):
    made = _users(store)
    found = users.search_users(store, text=wildcard)
    assert [u.id for u in found.items] == [made[wildcard]]
    assert found.total == 1


def test_a_bulk_operation_by_the_text_percent_reaches_only_users_holding_a_percent(store):
    made = _users(store)
    seen: list[str] = []
    report = users.for_each_user(store, state=None, text="%", action=seen.append)
    assert seen == [str(made["%"])]
    assert report.done == [made["%"]]


def test_search_text_still_matches_any_part_of_a_name_whatever_its_case(store):
    made = _users(store)
    found = users.search_users(store, text="r%d")
    assert [u.id for u in found.items] == [made["%"]]
    assert [u.id for u in users.search_users(store, text="FIELD_serv").items] == [made["_"]]
