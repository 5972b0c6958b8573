"""The data dir is its owner's alone: the database and its WAL, logs, faces, letters,
CA material and input files are 0600 and every folder 0700, whatever the umask."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from ops.cli import main


@pytest.fixture
def lax_umask() -> Iterator[None]:
    """The umask of a typical host (files 0644, folders 0755 unless told otherwise)."""
    before = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(before)


def _shared(root: Path) -> list[str]:
    """Every path under ``root`` (and itself) that its group or others may access."""
    paths = [root, *root.rglob("*")]
    return [
        f"{stat.filemode(p.lstat().st_mode)} {p.relative_to(root.parent)}"
        for p in paths
        if p.lstat().st_mode & 0o077
    ]


def test_nothing_a_demo_leaves_in_its_data_dir_is_group_or_world_accessible(tmp_path, lax_umask):
    data = tmp_path / "d"
    argv = ["demo", "--cards", "3", "--time-scale", "0", "--data-dir", str(data)]
    result = CliRunner().invoke(main, argv, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert (data / "cardline.db").exists()
    assert (data / "logs" / "cardline.log").exists()
    assert any((data / "faces").iterdir())
    assert _shared(data) == []


def test_the_store_and_its_wal_are_private_while_the_store_is_open(tmp_path, lax_umask):
    from sqlalchemy import text

    from db.engine import open_store, sqlite_url

    data = tmp_path / "d"
    data.mkdir()
    store = open_store(sqlite_url(data))
    try:
        with store.tx(audited=False) as s:
            s.execute(text("CREATE TABLE t (x INTEGER)"))
            s.execute(text("INSERT INTO t VALUES (1)"))
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in data.iterdir()}
        assert "cardline.db-wal" in modes
        assert {name: mode for name, mode in modes.items() if mode & 0o077} == {}
    finally:
        store.dispose()


def test_the_demo_reuses_a_data_dir_that_holds_only_cardlines_log_and_refuses_any_other(
    tmp_path,
):
    import pytest

    from ops.demo import fresh_data_dir
    from schemas.errors import ConfigurationError

    logged = tmp_path / "var"
    (logged / "logs").mkdir(parents=True)
    (logged / "logs" / "cardline.log").write_text('{"event": "migration"}\n')
    fresh_data_dir(logged)  # a process logged there, no store: still Cardline's
    assert list(logged.iterdir()) == []
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ConfigurationError, match="not a Cardline data dir"):
        fresh_data_dir(other)
    assert (other / "notes.txt").read_text() == "mine"
