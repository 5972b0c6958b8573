"""The CLI's role matrix: every operator command runs as the principal of its token and
only for the roles the one table (schemas.permissions) gives its use case; every other
command is a host or process command, listed here by hand. A refused command writes
nothing but the audit event of its refusal."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from db.engine import open_store, sqlite_url
from db.migrate import upgrade
from db.models import AuditEvent, Base
from ops.cli import main
from ops.cli.context import use_case_of
from schemas.permissions import roles_for
from schemas.roles import Role
from tests.principals import token_for

# Commands that need the host (the store's credentials, the master key, the CA key or
# the data dir) rather than an operator's token; each is a decision made here.
HOST_COMMANDS = {
    "admin bootstrap",
    "audit verify",
    "api routes",
    "db upgrade",
    "demo",
    "run",
    "status",
    "relay",
    "worker",
    "station",
    "pki init",
    "pki export",
    "pki crl",
    "expiry check",
    "waits",
    "roles",
    "login",
    "logout",
    "whoami",
    "softtoken types",
    "bureau certificate",  # Cardline's order-signing identity: made with the master key
    "bureau schema",  # the published file formats
}


def _leaves(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    found = []
    for name, command in sorted(group.commands.items()):
        path = f"{prefix}{name}"
        if isinstance(command, click.Group):
            found += _leaves(command, f"{path} ")
        else:
            found.append((path, command))
    return found


COMMANDS = _leaves(main)
OPERATOR_COMMANDS = [(p, c) for p, c in COMMANDS if use_case_of(c) is not None]


def test_every_command_is_an_operator_command_with_a_use_case_or_a_host_command():
    unclassified = {p for p, c in COMMANDS if use_case_of(c) is None} - HOST_COMMANDS
    assert not unclassified
    assert not {p for p, c in OPERATOR_COMMANDS} & HOST_COMMANDS
    assert {p for p, _ in COMMANDS} >= HOST_COMMANDS
    for _path, command in OPERATOR_COMMANDS:
        roles_for(use_case_of(command) or "")  # a KeyError: a use case not in the table
        assert "--by" not in {o for p in command.params for o in getattr(p, "opts", [])}


def _argv(command: click.Command, tmp: Path) -> list[str]:
    """Values of the right shape for every required parameter (the refusal comes
    before anything reads them)."""
    argv: list[str] = []
    for param in command.params:
        if not param.required:
            continue
        if isinstance(param.type, click.Choice):
            value = str(param.type.choices[0])
        elif isinstance(param.type, click.IntRange):
            value = str(param.type.min or 1)
        elif isinstance(param.type, click.Path):
            value = str(tmp / ("x.csv" if param.type.file_okay else "out"))
        else:
            value = "999999"  # names nothing: an admitted command changes nothing
        if isinstance(param, click.Option):
            argv += [param.opts[0], value]
        else:
            argv.append(value)
    return argv


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    data = tmp_path_factory.mktemp("cli-roles")
    (data / "x.csv").write_text("email\n", encoding="utf-8")
    store = open_store(sqlite_url(data))
    upgrade(store)
    tokens = {role: token_for(store, f"only-{role.value}", [role.value]) for role in Role}
    yield data, store, tokens
    store.dispose()


def _rows(store) -> dict[str, int]:
    with store.read() as s:
        return {
            t.name: int(s.scalar(select(func.count()).select_from(t)) or 0)
            for t in Base.metadata.sorted_tables
        }


@pytest.mark.parametrize(
    ("path", "command"), OPERATOR_COMMANDS, ids=[p for p, _ in OPERATOR_COMMANDS]
)
def test_an_operator_command_refuses_every_role_its_use_case_does_not_grant(world, path, command):
    data, store, tokens = world
    use_case = use_case_of(command)
    assert use_case is not None
    allowed = roles_for(use_case)
    argv = [*path.split(), *_argv(command, data), "--data-dir", str(data)]
    runner = CliRunner()
    anonymous = runner.invoke(main, argv, env={"CARDLINE_TOKEN": ""})
    assert anonymous.exit_code == 2
    assert "no token" in anonymous.output or "not a Cardline token" in anonymous.output
    for role in Role:
        before = _rows(store)
        result = runner.invoke(main, argv, env={"CARDLINE_TOKEN": tokens[role]})
        refused = f"may not {use_case}" in result.output
        assert refused == (role not in allowed), (role, result.output)
        if refused:
            assert result.exit_code == 2
            after = _rows(store)
            assert after["audit_events"] == before["audit_events"] + 1
            assert {t: n for t, n in after.items() if t != "audit_events"} == {
                t: n for t, n in before.items() if t != "audit_events"
            }
            with store.read() as s:
                last = s.scalars(select(AuditEvent).order_by(AuditEvent.seq.desc()).limit(1)).one()
            assert last.action == "refused"
            assert use_case in (last.reason or "")
