"""Soft tokens through the ``cardline`` commands, checked by tools nobody here wrote.

An operator requests two soft tokens for a holder, a second person approves them, the
embedded line issues and delivers them (mailing each P12, and its passphrase in a
separate message, to a real SMTP server), and then: ``openssl pkcs12`` opens each P12
with the passphrase ``softtoken password`` displays and refuses a wrong one; each
certificate chains with ``openssl verify`` and passes pkilint; a revoked one fails the
CRL check as revoked. The passphrase never shows in the commands' logs.
"""

from __future__ import annotations

import email
import email.policy
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from click.testing import CliRunner

from db.engine import open_store, sqlite_url
from ops.cli import main
from tests.principals import token_for

BIN = Path(sys.executable).parent
USERS = (
    "first_name,last_name,email,upn,organization,org_unit\n"
    "Ada,Lovelace,ada@example.org,ada@corp.example.org,Example,R&D\n"
)
# The principals the commands act as, and their stored roles.
ROLES = {
    "alice": ["requester"],
    "bob": ["approver"],
    "olga": ["softtoken_admin"],
    "rita": ["requester"],
}


@dataclass
class Inbox:
    messages: list[email.message.EmailMessage] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(
            email.message_from_bytes(envelope.content, policy=email.policy.default)  # type: ignore[arg-type]
        )
        return "250 OK"


@dataclass
class World:
    data: Path
    env: dict[str, str]
    inbox: Inbox
    ids: dict[str, int]
    passwords: dict[int, str]
    log: str
    tokens: dict[str, str] = field(default_factory=dict)

    def cli(self, *args: object, as_: str | None = None) -> Any:
        """``cardline ARGS``; with ``as_``, as that principal (CARDLINE_TOKEN)."""
        env = self.env if as_ is None else {**self.env, "CARDLINE_TOKEN": self.tokens[as_]}
        return CliRunner().invoke(
            main, [str(a) for a in args] + ["--data-dir", str(self.data)], env=env
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ok(result: Any) -> str:
    assert result.exit_code == 0, result.output
    return str(result.output)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Any:
    work = tmp_path_factory.mktemp("softtokens")
    config = work / "cardline.toml"
    config.write_text("[pki]\nsofttoken_mail_passphrase = true\n")
    inbox = Inbox()
    port = _free_port()
    smtp = Controller(inbox, hostname="127.0.0.1", port=port)
    smtp.start()
    env = {
        "CARDLINE_CONFIG": str(config),
        "CARDLINE_SMTP_URL": f"smtp://127.0.0.1:{port}",
        "CARDLINE_MAIL_FROM": "pki@example.org",
    }
    w = World(work / "data", env, inbox, {}, {}, "")
    csv = work / "users.csv"
    csv.write_text(USERS)
    try:
        _ok(w.cli("db", "upgrade"))
        store = open_store(sqlite_url(w.data))
        try:
            w.tokens = {name: token_for(store, name, roles) for name, roles in ROLES.items()}
        finally:
            store.dispose()
        _ok(w.cli("batch", "import", csv, as_="alice"))
        out = _ok(
            w.cli(
                "softtoken",
                "request",
                "--user",
                "ada@example.org",
                "--type",
                "user-p12",
                "--type",
                "email-signing",
                as_="alice",
            )
        )
        assert out.count("requested") == 2, out
        w.ids = {"user-p12": 1, "email-signing": 2}
        for token_id in w.ids.values():
            _ok(w.cli("softtoken", "approve", token_id, as_="bob"))
        w.log = _ok(w.cli("run", "--stations", "1", "--time-scale", "0"))
        w.log += (w.data / "logs" / "cardline.log").read_text()
        for token_id in w.ids.values():
            w.passwords[token_id] = _ok(
                w.cli("softtoken", "password", token_id, as_="olga")
            ).strip()
        yield w
    finally:
        smtp.stop()


def _openssl_pkcs12(path: Path, password: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", "pkcs12", "-info", "-nokeys", "-in", str(path), "-passin", f"pass:{password}"],
        capture_output=True,
        text=True,
        check=False,
    )


def _verify(out: Path, cert: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "openssl",
            "verify",
            "-CAfile",
            str(out / "ca-chain.pem"),
            "-CRLfile",
            str(out / "crls.pem"),
            "-crl_check_all",
            str(cert),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
    )


def test_every_issued_p12_opens_with_its_passphrase_and_not_with_a_wrong_one(world):
    listing = _ok(world.cli("softtoken", "list", "--user", "ada@example.org", as_="alice"))
    assert listing.count("issued") == 2
    for name, token_id in world.ids.items():
        p12 = world.data / "softtokens" / f"{token_id}-{name}.p12"
        assert p12.stat().st_mode & 0o777 == 0o600
        opened = _openssl_pkcs12(p12, world.passwords[token_id])
        assert opened.returncode == 0, opened.stderr
        assert "subject=" in opened.stdout
        assert "Ada Lovelace" in opened.stdout
        wrong = _openssl_pkcs12(p12, world.passwords[token_id] + "x")
        assert wrong.returncode != 0
        assert "mac verify failure" in wrong.stderr.lower() or "invalid" in wrong.stderr.lower()


def test_soft_token_certificates_chain_and_pass_pkilint(world):
    out = world.data.parent / "export-valid"
    _ok(world.cli("pki", "export", "--out", out))
    _ok(world.cli("certs", "export", "--status", "valid", "--out", out / "valid", as_="alice"))
    for name, token_id in world.ids.items():
        pem = world.data / "softtokens" / f"{token_id}-{name}.pem"
        result = _verify(out, pem)
        assert result.returncode == 0, result.stdout
        assert (out / "valid").glob("*.pem")
        lint = subprocess.run(
            [str(BIN / "lint_pkix_cert"), "lint", "-s", "ERROR", str(pem)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert lint.returncode in (0, 1), lint.stderr
        assert lint.stdout.strip() == "", lint.stdout


def test_each_holder_gets_the_p12_and_the_passphrase_in_separate_messages(world):
    to_ada = [m for m in world.inbox.messages if m["To"] == "ada@example.org"]
    with_p12 = [m for m in to_ada if any(True for _ in m.iter_attachments())]
    with_passphrase = [m for m in to_ada if "Passphrase" in str(m["Subject"])]
    assert len(with_p12) == 2
    assert len(with_passphrase) == 2
    for message in with_p12:
        (attachment,) = message.iter_attachments()
        assert attachment.get_content_type() == "application/x-pkcs12"
        body = message.as_string()
        assert all(p not in body for p in world.passwords.values())
    bodies = "".join(m.get_body(("plain",)).get_content() for m in with_passphrase)
    assert all(p in bodies for p in world.passwords.values())
    assert all(m["From"] == "pki@example.org" for m in to_ada)


def test_displaying_a_passphrase_without_the_role_is_refused(world):
    refused = world.cli("softtoken", "password", 1, as_="rita")
    assert refused.exit_code != 0
    assert "softtoken_admin" in refused.output
    assert world.passwords[1] not in refused.output


def test_the_passphrase_never_shows_in_the_line_output_or_log(world):
    assert "pki.softtoken_issued" in world.log  # the log did capture the issuance
    for password in world.passwords.values():
        assert password not in world.log


def test_a_revoked_soft_token_fails_the_crl_check_as_revoked(world):
    token_id = world.ids["email-signing"]
    revoked = world.cli("softtoken", "revoke", token_id, "--reason", "key_compromise", as_="olga")
    assert "revoked" in _ok(revoked)
    out = world.data.parent / "export-revoked"
    _ok(world.cli("pki", "export", "--out", out))
    pem = world.data / "softtokens" / f"{token_id}-email-signing.pem"
    assert "certificate revoked" in _verify(out, pem).stdout
    other = world.data / "softtokens" / f"{world.ids['user-p12']}-user-p12.pem"
    assert _verify(out, other).returncode == 0
