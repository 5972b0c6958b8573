"""The ``cardline`` commands as an operator uses them."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from db.engine import open_store, sqlite_url
from ops.cli import main
from tests.principals import token_for

GOOD = (
    "first_name,last_name,email,upn,organization,org_unit\n"
    "Ada,Lovelace,ada@example.org,ada@example.org,Example,R&D\n"
)
BAD_ROW = "Bob,,bob@example.org,bob@example.org,Example,R&D\n"


# The principals these tests act as, and their roles.
ROLES = {
    "alice": ["requester", "approver", "operator"],  # four-eyes holds even so
    "rita": ["requester"],
    "bob": ["approver"],
    "olga": ["operator"],
    "helpdesk": ["operator"],
}


def _invoke(*args, env=None):
    """``cardline ARGS``; ``--as NAME`` (a test's own switch) runs it with a token of
    principal NAME (created with ``ROLES[NAME]`` in the --data-dir's store)."""
    argv = [str(a) for a in args]
    if "--as" in argv:
        at = argv.index("--as")
        name = argv[at + 1]
        del argv[at : at + 2]
        store = open_store(sqlite_url(Path(argv[argv.index("--data-dir") + 1])))
        try:
            env = {**(env or {}), "CARDLINE_TOKEN": token_for(store, name, ROLES[name])}
        finally:
            store.dispose()
    return CliRunner().invoke(main, argv, env=env, catch_exceptions=False)


def _upgraded(data):
    """A data dir with a status store at the newest schema (``cardline db upgrade``)."""
    assert _invoke("db", "upgrade", "--data-dir", data).exit_code == 0
    return data


def test_batch_import_reports_the_rejected_line_and_exits_1(tmp_path):
    csv = tmp_path / "b.csv"
    csv.write_text(GOOD + BAD_ROW, encoding="utf-8")
    _upgraded(tmp_path / "d")
    result = _invoke(
        "batch", "import", csv, "--as", "alice", "--data-dir", tmp_path / "d", "--json"
    )
    assert result.exit_code == 1
    report = json.loads(result.output)
    assert report["cards_requested"] == 1
    assert report["rejected"][0]["line"] == 3
    assert report["rejected"][0]["field"] == "last_name"


def test_approval_by_the_requester_is_refused_with_a_clear_error(tmp_path):
    csv = tmp_path / "b.csv"
    csv.write_text(GOOD, encoding="utf-8")
    data = _upgraded(tmp_path / "d")
    assert _invoke("batch", "import", csv, "--as", "alice", "--data-dir", data).exit_code == 0
    refused = _invoke("batch", "approve", "1", "--as", "alice", "--data-dir", data)
    assert refused.exit_code == 2
    assert "four-eyes" in refused.output
    approved = _invoke("batch", "approve", "1", "--as", "bob", "--data-dir", data)
    assert approved.exit_code == 0
    status = _invoke("status", "--json", "--data-dir", data)
    assert json.loads(status.output.splitlines()[-1])["cards"] == {"approved": 1}


def test_demo_json_summary_balances_and_is_the_last_line(tmp_path):
    result = _invoke(
        "demo",
        "--cards",
        "6",
        "--stations",
        "2",
        "--time-scale",
        "0",
        "--data-dir",
        tmp_path / "d",
        "--json",
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["cards"] == {"active": 6}
    assert summary["attempts"] == {"succeeded": 6, "spoiled": 0}
    assert summary["blanks_used"] == 6
    assert summary["certificates"]["valid"] == 18
    assert summary["audit_chain_ok"] is True
    assert summary["elapsed_s"] > 0


def test_demo_refuses_to_wipe_a_folder_that_is_not_a_cardline_data_dir(tmp_path):
    precious = tmp_path / "thesis"
    precious.mkdir()
    (precious / "chapter1.tex").write_text("...")
    result = _invoke("demo", "--cards", "1", "--data-dir", precious)
    assert result.exit_code == 3
    assert (precious / "chapter1.tex").exists()


def test_run_on_an_empty_data_dir_says_what_to_do(tmp_path):
    result = _invoke("run", "--data-dir", tmp_path / "nothing")
    assert result.exit_code == 3
    assert "cardline demo" in result.output


def test_card_and_user_lifecycle_commands_move_certificates_and_refuse_illegal_steps(tmp_path):
    data = tmp_path / "d"
    demo = _invoke("demo", "--cards", "2", "--time-scale", "0", "--data-dir", data, "--json")
    assert demo.exit_code == 0, demo.output

    def certificates() -> dict[str, int]:
        status = _invoke("status", "--json", "--data-dir", data)
        return json.loads(status.output.splitlines()[-1])["certificates"]

    off = _invoke("user", "deactivate", "1", "--as", "olga", "--reason", "left", "--data-dir", data)
    assert off.exit_code == 0, off.output
    assert "3 certificates on hold" in off.output
    assert certificates()["hold"] == 3
    again = _invoke("card", "reactivate", "1", "--as", "olga", "--data-dir", data)
    assert again.exit_code == 2
    assert "reactivate the user" in again.output
    on = _invoke("user", "reactivate", "1", "--as", "olga", "--data-dir", data)
    assert on.exit_code == 0, on.output
    assert certificates()["hold"] == 0
    bad = _invoke("card", "lock", "2", "--as", "olga", "--reason", "bored", "--data-dir", data)
    assert bad.exit_code == 2
    locked = _invoke(
        "card", "lock", "2", "--as", "olga", "--reason", "key_compromise", "--data-dir", data
    )
    assert locked.exit_code == 0, locked.output
    assert certificates()["revoked"] == 3
    illegal = _invoke("card", "deactivate", "2", "--as", "olga", "--data-dir", data)
    assert illegal.exit_code == 2
    assert "locked" in illegal.output


def test_a_token_is_printed_once_and_the_api_routes_list_their_roles(tmp_path):
    data = _upgraded(tmp_path / "d")
    admin = _invoke("admin", "bootstrap", "--json", "--data-dir", data)
    assert admin.exit_code == 0, admin.output
    env = {"CARDLINE_TOKEN": json.loads(admin.stdout.splitlines()[-1])["token"]}
    made = _invoke("principal", "create", "olga", "--role", "operator", "--data-dir", data, env=env)
    assert made.exit_code == 0, made.output
    created = CliRunner().invoke(
        main, ["token", "create", "olga", "--data-dir", str(data)], env=env
    )
    assert created.exit_code == 0, created.output
    token = created.stdout.strip().splitlines()[-1]
    assert token.startswith("cl_")
    listing = _invoke("token", "list", "--data-dir", data, env=env)
    assert "olga" in listing.output
    assert token not in listing.output
    routes = _invoke("api", "routes", "--markdown", "--data-dir", data)
    assert "| POST | `/cards/{card}/approve` | admin, approver |" in routes.output
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    assert routes.output.strip() in readme  # the README's endpoint table is this one


def test_an_operator_runs_the_card_life_from_the_command_line(tmp_path):
    data = _upgraded(tmp_path / "d")

    def ok(*args):
        result = _invoke(*args, "--data-dir", data)
        assert result.exit_code == 0, (args, result.output)
        return result.output

    def run():
        ok("run", "--stations", "1", "--time-scale", "0")

    person = ("first_name=Ada", "last_name=Lovelace", "email=ada@example.org")
    rest = ("upn=ada@corp.example.org", "organization=Engines", "org_unit=R&D")
    ok("user", "create", *[f"--set={v}" for v in person + rest], "--as", "rita")
    incomplete = _invoke(
        "user", "create", "--set=email=x@example.org", "--as", "rita", "--data-dir", data
    )
    assert incomplete.exit_code == 2
    assert "first_name" in incomplete.output
    ok("card", "request", "ada@example.org", "--as", "alice")
    own = _invoke("card", "decide", "approve", "1", "--as", "alice", "--data-dir", data)
    assert own.exit_code == 2
    assert "four-eyes" in own.output
    ok("card", "decide", "approve", "1", "--as", "bob")
    run()
    assert "active" in ok("card", "list", "--state", "active", "--as", "olga")
    assert ok("card", "renew", "1", "--as", "olga").strip() == "active"
    run()
    ok("tempcard", "stock", "1", "--as", "alice")
    ok("batch", "approve", "1", "--as", "bob")
    run()
    assert ok("tempcard", "assign", "2", "ada@example.org", "--as", "olga").strip() == "assigned"
    run()
    declared = ok("incident", "declare", "1", "--kind", "lost", "--as", "helpdesk")
    assert "incident 1 open; replacement: card 3" in declared
    ok("incident", "approve", "1", "--as", "bob")
    assert "closed" in ok("incident", "list", "--as", "olga")
    bulk = ok("user", "bulk", "deactivate", "--text", "lovelace", "--as", "olga")
    assert "deactivate: 1 done, 0 refused" in bulk
    assert "inactive" in ok("user", "list", "--text", "ada", "--as", "olga")


def test_batch_list_and_show_follow_a_batch_from_the_cli(tmp_path):
    data = _upgraded(tmp_path / "d")
    csv = tmp_path / "users.csv"
    csv.write_text(GOOD)
    assert _invoke("batch", "import", csv, "--as", "alice", "--data-dir", data).exit_code == 0
    listed = _invoke("batch", "list", "--json", "--as", "bob", "--data-dir", data)
    assert listed.exit_code == 0, listed.output
    (item,) = json.loads(listed.output)["items"]
    assert (item["state"], item["cards"]) == ("requested", {"requested": 1})
    shown = _invoke("batch", "show", str(item["id"]), "--as", "bob", "--data-dir", data)
    assert "requested: 1" in shown.output
    missing = _invoke("batch", "show", "99", "--as", "bob", "--data-dir", data)
    assert missing.exit_code != 0
    assert "batch 99 does not exist" in missing.output
