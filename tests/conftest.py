"""Shared fixtures: a fresh, migrated status store per test and a secret box."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from db.engine import Store, open_store, sqlite_url
from db.migrate import upgrade
from db.secrets import SecretBox


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite database built once; each test gets its own copy."""
    folder = tmp_path_factory.mktemp("template")
    st = open_store(sqlite_url(folder))
    upgrade(st)
    st.dispose()
    return folder / "cardline.db"


@pytest.fixture
def store(tmp_path: Path, sqlite_template: Path) -> Iterator[Store]:
    """A migrated SQLite status store in the test's own directory."""
    shutil.copy(sqlite_template, tmp_path / "cardline.db")
    st = open_store(sqlite_url(tmp_path))
    yield st
    st.dispose()


@pytest.fixture
def box() -> SecretBox:
    return SecretBox(os.urandom(32))
