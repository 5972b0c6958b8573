"""The configuration: one frozen model, loaded once, refusing what it does not know."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from db.engine import open_store, sqlite_url
from ops import config as config_mod
from ops.cli import main
from ops.config import ENVIRONMENT, ConfigFile, Settings
from schemas.errors import ConfigurationError
from tests.principals import token_for

ROOT = Path(__file__).parents[2]


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cardline.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[polcy]\napproval_required = false\n", "polcy: unknown table"),
        ("[policy]\naproval_required = false\n", "policy.aproval_required: unknown key"),
        ('[pki.ca]\nnme = "x"\n', "pki.ca.nme: unknown key"),
        ("[expiry]\nwarn_days = 14\nevery = 3\n", "expiry.every: unknown key"),
        ("approval_required = false\n", "approval_required: unknown key"),
        ("[policy]\npin_length = 2\n", "policy.pin_length: Input should be greater than"),
        ('[roles]\nolga = ["operator"]\n', "roles: unknown table"),  # roles live on principals
    ],
)
def test_the_file_names_itself_and_the_dotted_key_it_refuses(tmp_path, text, problem):
    path = _file(tmp_path, text)
    with pytest.raises(ConfigurationError) as err:
        ConfigFile.read(path)
    assert str(err.value).startswith(f"{path}: {problem}")


def test_every_problem_of_a_file_is_named_at_once(tmp_path):
    path = _file(tmp_path, "[polcy]\n[policy]\naproval_required = true\nmax_atempts = 2\n")
    with pytest.raises(ConfigurationError) as err:
        config_mod.load(environ={"CARDLINE_CONFIG": str(path)})
    assert str(err.value) == (
        f"{path}: polcy: unknown table; policy.aproval_required: unknown key; "
        "policy.max_atempts: unknown key"
    )


def test_a_file_that_is_not_toml_or_not_there_is_named(tmp_path):
    with pytest.raises(ConfigurationError, match=r"cardline\.toml: Expected"):
        ConfigFile.read(_file(tmp_path, "[policy\n"))
    with pytest.raises(ConfigurationError, match=r"nowhere\.toml"):
        config_mod.load(environ={"CARDLINE_CONFIG": str(tmp_path / "nowhere.toml")})


def test_a_good_file_and_the_environment_make_one_frozen_model(tmp_path):
    path = _file(
        tmp_path,
        "[policy]\napproval_required = false\n"
        '[expiry]\nfrequency = "weekly"\n[pki]\nsofttoken_approval = false\n',
    )
    env = {
        "CARDLINE_CONFIG": str(path),
        "CARDLINE_DATA_DIR": str(tmp_path / "d"),
        "CARDLINE_LOG_LEVEL": "debug",
        "CARDLINE_DATABASE_URL": "",  # empty: unset
        "CARDLINE_MASTER_KEY": "c2VjcmV0",
    }
    settings = config_mod.load(environ=env)
    assert settings.policy.approval_required is False
    assert settings.expiry.frequency == "weekly"
    assert settings.pki.softtoken_approval is False
    assert settings.data_dir == tmp_path / "d"
    assert settings.log_level == "DEBUG"
    assert settings.database_url is None
    assert "c2VjcmV0" not in repr(settings)
    with pytest.raises(ValidationError):
        settings.broker_url = "redis://elsewhere"  # type: ignore[misc]  # frozen, on purpose
    assert config_mod.load(tmp_path / "x", environ=env).data_dir == tmp_path / "x"


def test_a_wrong_environment_variable_is_named(tmp_path):
    with pytest.raises(ConfigurationError, match=r"^CARDLINE_LOG_LEVEL: "):
        config_mod.load(environ={"CARDLINE_LOG_LEVEL": "loud"})


def test_a_command_reads_the_file_once_and_refuses_a_wrong_one_with_exit_3(tmp_path, monkeypatch):
    reads: list[Path] = []
    real = ConfigFile.read.__func__  # type: ignore[attr-defined]  # the classmethod's function

    def counting(cls, path):
        reads.append(path)
        return real(cls, path)

    monkeypatch.setattr(ConfigFile, "read", classmethod(counting))
    good = _file(tmp_path, "[pki]\nsofttoken_approval = false\n")
    data = tmp_path / "d"
    env = {"CARDLINE_CONFIG": str(good)}
    assert (
        CliRunner().invoke(main, ["db", "upgrade", "--data-dir", str(data)], env=env).exit_code == 0
    )
    store = open_store(sqlite_url(data))
    try:
        env["CARDLINE_TOKEN"] = token_for(store, "olga", ["softtoken_admin"])
    finally:
        store.dispose()
    reads.clear()
    listing = CliRunner().invoke(main, ["softtoken", "list", "--data-dir", str(data)], env=env)
    assert listing.exit_code == 0, listing.output
    assert reads == [good]

    bad = tmp_path / "bad.toml"
    bad.write_text("[polcy]\n")
    refused = CliRunner().invoke(
        main, ["status", "--data-dir", str(data)], env={"CARDLINE_CONFIG": str(bad)}
    )
    assert refused.exit_code == 3
    assert refused.stderr == f"configuration error: {bad}: polcy: unknown table\n"


SOURCE_DIRS = ("schemas", "db", "producers", "workers", "stations", "ops", "tests")
TOP_FILES = ("Makefile", "Dockerfile", "docker-compose.yml", "pyproject.toml")


def _variables_in_the_source() -> set[str]:
    paths = [ROOT / name for name in TOP_FILES]
    for folder in SOURCE_DIRS:
        paths += [p for p in (ROOT / folder).rglob("*") if p.suffix in {".py", ".sh", ".toml"}]
    found: set[str] = set()
    for path in paths:
        found |= set(re.findall(r"CARDLINE_[A-Z_]+", path.read_text(encoding="utf-8")))
    return found


def test_every_environment_variable_is_listed_in_ops_config_and_the_readme():
    listed = {v.name for v in ENVIRONMENT}
    used = _variables_in_the_source()
    assert used, "the grep found nothing: is this a git checkout?"
    assert used <= listed, f"read but not in ops.config.ENVIRONMENT: {sorted(used - listed)}"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows = set(re.findall(r"^\| `([A-Z0-9_]+)` \|", section, flags=re.MULTILINE))
    assert rows == listed, "README's configuration table and ops.config.ENVIRONMENT differ"
    settings_fields = {v.setting for v in ENVIRONMENT if v.setting}
    assert settings_fields <= set(Settings.model_fields)
