"""CPR intake (seed 000) through POST /cpr: the basic flow and every alternate flow,
and that a refused CPR leaves nothing behind."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
from collections.abc import Mapping
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import func, select

from db import models
from db.models import AuditEvent, CardProductionRequest, Credential, Principal, User
from db.secrets import SecretBox
from producers import cpr as cpr_module
from producers.api.app import create_app
from producers.api.context import ApiContext
from producers.cpr import load_identity_systems
from producers.tokens import create_token
from producers.users import create_user
from schemas.cpr import CprConfig, IdentitySystem
from schemas.errors import ConfigurationError
from schemas.pki import PkiConfig
from schemas.policy import Policy

GATEWAY = "idms1-gateway"
PERSON = {
    "first_name": "Katherine",
    "last_name": "Johnson",
    "email": "kj@example.org",
    "upn": "kj@corp.example.org",
    "organization": "NASA",
    "org_unit": "Flight Research",
    "title": "Mathematician",
    "external_id": "IDMS-0042",
}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# The keys an identity system may sign with: the two accepted kinds, and weak ones.
KEYS = {
    "rsa": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "ec": lambda: ec.generate_private_key(ec.SECP256R1()),
    "rsa1024": lambda: rsa.generate_private_key(65537, 1024),  # noqa: S505  # weak on purpose
    "p224": lambda: ec.generate_private_key(ec.SECP224R1()),
}


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class IdentitySystemKey:
    def __init__(
        self,
        name: str,
        kind: str,
        folder: Path,
        *,
        valid: tuple[dt.timedelta, dt.timedelta] = (-dt.timedelta(days=1), dt.timedelta(days=30)),
    ) -> None:
        """``valid``: the certificate's validity, relative to now."""
        self.name = name
        self.key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = KEYS[kind]()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now + valid[0])
            .not_valid_after(now + valid[1])
            .sign(self.key, hashes.SHA256())
        )
        self.cert_path = folder / f"{name}.pem"
        self.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def sign(self, payload: bytes) -> bytes:
        if isinstance(self.key, rsa.RSAPrivateKey):
            return self.key.sign(payload, padding.PKCS1v15(), hashes.SHA256())
        return self.key.sign(payload, ec.ECDSA(hashes.SHA256()))

    def cpr(
        self,
        user: Mapping[str, str | None],
        *,
        request_id: str = "R1",
        signer: str | None = None,
        names: str = "",
        issued_at: dt.datetime | None = None,
        line: str | None = None,
    ) -> dict[str, str]:
        """A CPR signed with this system's key, issued now unless ``issued_at`` says
        otherwise; ``names`` puts another system's name in the payload (and the wire
        form's ``signer`` stays this system's unless given)."""
        body: dict[str, object] = {
            "identity_system": names or self.name,
            "request_id": request_id,
            "issued_at": (issued_at or _now()).isoformat(),
            "user": user,
        }
        if line is not None:
            body["line"] = line
        return self.signed(json.dumps(body).encode(), signer=signer)

    def signed(self, payload: bytes, *, signer: str | None = None) -> dict[str, str]:
        """The wire form of ``payload`` (bytes as given) signed with this system's key."""
        return {
            "signer": signer or self.name,
            "payload": _b64(payload),
            "signature": _b64(self.sign(payload)),
        }


@pytest.fixture(params=["rsa", "ec"])
def idms(request, tmp_path):
    return IdentitySystemKey("idms1", request.param, tmp_path)


def _client(
    store,
    tmp_path: Path,
    idms: IdentitySystemKey,
    *,
    also: tuple[IdentitySystemKey, ...] = (),
    bound: Mapping[str, list[str]] | None = None,
    **options,
) -> TestClient:
    """A client with the token of ``idms1-gateway``, which speaks for every configured
    identity system unless ``bound`` (system -> principal names) says otherwise."""
    bound = bound or {s.name: [GATEWAY] for s in (idms, *also)}
    systems = {
        s.name: IdentitySystem(certificate=s.cert_path, principals=tuple(bound[s.name]))
        for s in (idms, *also)
    }
    config = CprConfig(identity_systems=systems, **options)
    ctx = ApiContext(
        store=store,
        box=SecretBox(os.urandom(32)),
        policy=Policy(),
        pki=PkiConfig(),
        crl_dir=tmp_path / "crl",
        ca_chain=tmp_path / "chain.pem",
        rejects_dir=tmp_path / "rejects",
        cpr=config,
        cpr_keys=load_identity_systems(config),
    )
    client = TestClient(create_app(ctx), raise_server_exceptions=False)
    client.headers.update(_bearer(store, GATEWAY))
    return client


def _bearer(store, name: str) -> dict[str, str]:
    _, token = create_token(store, name=name, role="identity_system", by="tests")
    return {"Authorization": f"Bearer {token.reveal()}"}


def _counts(store) -> tuple[int, int, int]:
    with store.read() as s:
        return tuple(  # type: ignore[return-value]  # three counts
            int(s.scalar(select(func.count()).select_from(model)) or 0)
            for model in (User, Credential, CardProductionRequest)
        )


def test_a_signed_cpr_creates_the_user_and_an_approved_card_request(store, tmp_path, idms):
    client = _client(store, tmp_path, idms)
    response = client.post("/cpr", json=idms.cpr(PERSON))
    assert response.status_code == 201, response.json()
    outcome = response.json()
    assert outcome["user_created"] is True
    assert outcome["cpr_replaced"] is False
    assert outcome["card_state"] == "approved"
    with store.read() as s:
        user = s.get(User, outcome["user_id"])
        assert user is not None
        assert (user.external_id, user.title) == ("IDMS-0042", "Mathematician")
        card = s.get(Credential, outcome["card_id"])
        assert card is not None
        # The principal that submitted it, by id; the reason names the identity system.
        gateway = s.scalars(select(Principal).where(Principal.name == "idms1-gateway")).one()
        assert card.requested_by == f"principal:{gateway.id}"
        created = s.scalars(
            select(AuditEvent).where(AuditEvent.entity == "card", AuditEvent.action == "create")
        ).one()
        assert (created.actor, created.reason) == (gateway.actor, "CPR R1 of idms1")
        kept = s.scalars(select(CardProductionRequest)).one()
        assert kept.request_id == "R1"
        assert json.loads(kept.payload)["user"]["email"] == "kj@example.org"


def test_an_existing_user_gets_the_cprs_attributes_and_a_second_cpr_replaces_the_first(
    store, tmp_path, idms
):
    client = _client(store, tmp_path, idms)
    first = client.post("/cpr", json=idms.cpr(PERSON)).json()
    with store.tx() as s:  # the first card done, so a new issuance may start
        card = s.get(Credential, first["card_id"])
        assert card is not None
        card.state = "active"
    changed = {**PERSON, "org_unit": "Langley", "title": None}
    second = client.post("/cpr", json=idms.cpr(changed, request_id="R2"))
    assert second.status_code == 201, second.json()
    assert second.json()["user_created"] is False
    assert second.json()["cpr_replaced"] is True
    with store.read() as s:
        user = s.get(User, first["user_id"])
        assert user is not None
        assert (user.org_unit, user.title) == ("Langley", None)
        kept = s.scalars(select(CardProductionRequest)).one()
        assert (kept.request_id, kept.replaced) == ("R2", 1)


def test_an_issuance_request_in_progress_refuses_the_cpr_with_409_and_changes_nothing(
    store, tmp_path, idms
):
    client = _client(store, tmp_path, idms)
    first = client.post("/cpr", json=idms.cpr(PERSON)).json()
    before = _counts(store)
    again = client.post("/cpr", json=idms.cpr({**PERSON, "title": "Director"}, request_id="R2"))
    assert again.status_code == 409
    error = again.json()["error"]
    assert error["code"] == "already_exists"
    assert f"card {first['card_id']} is approved" in error["message"]
    assert _counts(store) == before
    with store.read() as s:
        assert s.scalars(select(User.title)).one() == "Mathematician"
        assert s.scalars(select(CardProductionRequest.request_id)).one() == "R1"


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (lambda c: {**c, "payload": c["payload"][:-4] + "AAAA"}, "does not verify"),
        (lambda c: {**c, "signature": _b64(b"\x00" * 64)}, "does not verify"),
        (lambda c: {**c, "signature": "***"}, "not base64url"),
        (lambda c: {**c, "signer": "rogue"}, "not a configured identity system"),
    ],
    ids=["payload-changed", "forged-signature", "garbled-signature", "unknown-signer"],
)
def test_a_cpr_whose_signature_does_not_verify_is_refused_and_nothing_is_stored(
    store, tmp_path, idms, tamper, reason
):
    client = _client(store, tmp_path, idms)
    response = client.post("/cpr", json=tamper(idms.cpr(PERSON)))
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_cpr"
    assert reason in response.json()["error"]["message"]
    assert _counts(store) == (0, 0, 0)


def test_a_cpr_that_cannot_be_stored_is_refused_naming_the_field(store, tmp_path, idms):
    client = _client(store, tmp_path, idms)
    response = client.post("/cpr", json=idms.cpr({**PERSON, "email": "no-at-sign"}))
    assert response.status_code in (400, 422)
    assert "email" in response.json()["error"]["message"]
    assert _counts(store) == (0, 0, 0)


def test_a_cpr_validly_signed_by_one_system_but_naming_another_is_refused_by_the_name_check(
    store, tmp_path, idms
):
    # Both systems are configured and the signature is idms1's own, over the payload as
    # sent: only the check that the payload names its signer stands between idms1 and
    # CPRs in idms2's name.
    other = IdentitySystemKey("idms2", "ec", tmp_path)
    client = _client(store, tmp_path, idms, also=(other,))
    forged = idms.cpr(PERSON, names="idms2")
    assert forged["signer"] == "idms1"
    response = client.post("/cpr", json=forged)
    assert response.status_code == 400, response.json()
    error = response.json()["error"]
    assert error["code"] == "invalid_cpr"
    assert error["message"] == "signed by idms1 but names idms2"
    assert _counts(store) == (0, 0, 0)
    # The same two systems, each naming itself, are accepted: the refusal is the name's.
    assert client.post("/cpr", json=other.cpr(PERSON)).status_code == 201


def test_without_user_creation_an_unknown_user_is_refused(store, tmp_path, idms):
    client = _client(store, tmp_path, idms, create_users=False)
    response = client.post("/cpr", json=idms.cpr(PERSON))
    assert response.status_code == 404
    assert "may not create users" in response.json()["error"]["message"]
    assert _counts(store) == (0, 0, 0)


def test_cprs_can_require_an_approver(store, tmp_path, idms):
    client = _client(store, tmp_path, idms, approval_required=True)
    assert client.post("/cpr", json=idms.cpr(PERSON)).json()["card_state"] == "requested"


# Issue 17, point 3: CPR replay and the other holes a hostile or careless identity
# system (or a token that is not one) found.


def _receipts(store) -> list[tuple[str, str]]:
    with store.read() as s:
        rows = s.execute(
            select(models.CprReceipt.identity_system, models.CprReceipt.request_id).order_by(
                models.CprReceipt.id
            )
        )
        return [(system, request) for system, request in rows]


def _activate(store, card_id: int) -> None:
    """The card done (as the line would leave it), so a new issuance may start."""
    with store.tx() as s:
        card = s.get(Credential, card_id)
        assert card is not None
        card.state = "active"


def _user(store, user_id: int) -> User:
    with store.read() as s:
        user = s.get(User, user_id)
        assert user is not None
        s.expunge(user)
        return user


def test_a_cpr_already_received_is_refused_for_ever_even_once_its_card_is_active(
    store, tmp_path, idms
):
    client = _client(store, tmp_path, idms)
    signed = idms.cpr(PERSON)
    first = client.post("/cpr", json=signed).json()
    _activate(store, first["card_id"])
    before = _counts(store)
    again = client.post("/cpr", json=signed)
    assert again.status_code == 409, again.json()
    error = again.json()["error"]
    assert error["code"] == "already_exists"
    assert "CPR R1 of idms1" in error["message"]
    # The request id is used up for every user, not only for the first one's.
    other = client.post("/cpr", json=idms.cpr({**PERSON, "email": "dv@example.org"}))
    assert other.status_code == 409
    assert "CPR R1 of idms1" in other.json()["error"]["message"]
    assert _counts(store) == before
    assert _receipts(store) == [("idms1", "R1")]


@pytest.mark.parametrize(
    ("issued", "reason"),
    [
        (None, "issued_at"),
        (-dt.timedelta(seconds=700), "older than 600 s"),
        (dt.timedelta(seconds=120), "in the future"),
    ],
    ids=["missing", "too-old", "from-the-future"],
)
def test_a_cpr_needs_a_signed_issue_time_inside_the_window(store, tmp_path, idms, issued, reason):
    client = _client(store, tmp_path, idms)
    if issued is None:
        body = {"identity_system": "idms1", "request_id": "R1", "user": PERSON}
        signed = idms.signed(json.dumps(body).encode())
    else:
        signed = idms.cpr(PERSON, issued_at=_now() + issued)
    response = client.post("/cpr", json=signed)
    assert response.status_code == 400, response.json()
    assert response.json()["error"]["code"] == "invalid_cpr"
    assert reason in response.json()["error"]["message"]
    assert _counts(store) == (0, 0, 0)
    assert _receipts(store) == []


def test_the_issue_window_is_configurable_and_allows_a_small_clock_skew(store, tmp_path, idms):
    client = _client(store, tmp_path, idms, max_age_s=3600)
    old = client.post("/cpr", json=idms.cpr(PERSON, issued_at=_now() - dt.timedelta(hours=0.9)))
    assert old.status_code == 201, old.json()
    _activate(store, old.json()["card_id"])
    ahead = idms.cpr(PERSON, request_id="R2", issued_at=_now() + dt.timedelta(seconds=30))
    assert client.post("/cpr", json=ahead).status_code == 201


def test_an_older_cpr_never_overwrites_a_newer_one(store, tmp_path, idms):
    client = _client(store, tmp_path, idms)
    newer_at = _now() - dt.timedelta(seconds=10)
    older_at = newer_at - dt.timedelta(seconds=60)
    newer = client.post("/cpr", json=idms.cpr(PERSON, request_id="R2", issued_at=newer_at))
    assert newer.status_code == 201, newer.json()
    _activate(store, newer.json()["card_id"])
    before = _counts(store)
    stale = idms.cpr({**PERSON, "title": "Computer"}, request_id="R1", issued_at=older_at)
    response = client.post("/cpr", json=stale)
    assert response.status_code == 409, response.json()
    message = response.json()["error"]["message"]
    assert older_at.isoformat(timespec="seconds") in message
    assert newer_at.isoformat(timespec="seconds") in message
    assert _counts(store) == before
    assert _user(store, newer.json()["user_id"]).title == "Mathematician"
    with store.read() as s:
        assert s.scalars(select(CardProductionRequest.request_id)).one() == "R2"


def test_a_token_may_submit_cprs_only_for_the_identity_systems_it_is_bound_to(
    store, tmp_path, idms
):
    other = IdentitySystemKey("idms2", "ec", tmp_path)
    bound = {"idms1": [GATEWAY], "idms2": ["IDMS2-Gateway"]}  # names compare normalised
    client = _client(store, tmp_path, idms, also=(other,), bound=bound)
    second_gateway = _bearer(store, "idms2-gateway")
    response = client.post("/cpr", json=idms.cpr(PERSON), headers=second_gateway)
    assert response.status_code == 403, response.json()
    error = response.json()["error"]
    assert error["code"] == "refused"
    assert "idms2-gateway" in error["message"]
    assert "idms1" in error["message"]
    assert _counts(store) == (0, 0, 0)
    assert _receipts(store) == []
    # Each gateway speaks for its own system.
    assert client.post("/cpr", json=other.cpr(PERSON), headers=second_gateway).status_code == 201
    assert client.post("/cpr", json=other.cpr(PERSON, request_id="R9")).status_code == 403


def test_an_identity_system_must_name_the_principals_that_speak_for_it(tmp_path, idms):
    with pytest.raises(ValidationError, match="principals"):
        IdentitySystem(certificate=idms.cert_path)  # type: ignore[call-arg]  # the point
    with pytest.raises(ValidationError, match="principals"):
        IdentitySystem(certificate=idms.cert_path, principals=())


@pytest.mark.parametrize(
    ("kind", "valid", "reason"),
    [
        ("rsa1024", None, "1024-bit RSA"),
        ("p224", None, "secp224r1"),
        ("ec", (-dt.timedelta(days=30), -dt.timedelta(days=1)), "expired"),
        ("rsa", (dt.timedelta(days=1), dt.timedelta(days=30)), "not valid before"),
    ],
    ids=["rsa-1024", "ec-p224", "expired", "not-yet-valid"],
)
def test_a_weak_or_out_of_date_identity_system_certificate_is_refused_at_load(
    tmp_path, kind, valid, reason
):
    weak = IdentitySystemKey("idms9", kind, tmp_path, **({"valid": valid} if valid else {}))
    config = CprConfig(
        identity_systems={"idms9": IdentitySystem(certificate=weak.cert_path, principals=("x",))}
    )
    with pytest.raises(ConfigurationError, match="idms9") as refused:
        load_identity_systems(config)
    assert reason in str(refused.value)


def test_a_certificate_that_expired_since_it_was_loaded_refuses_the_cpr(
    store, tmp_path, idms, monkeypatch
):
    client = _client(store, tmp_path, idms)
    later = _now() + dt.timedelta(days=31)  # the certificate ends in 30 days
    monkeypatch.setattr(cpr_module, "utcnow", lambda: later)
    response = client.post("/cpr", json=idms.cpr(PERSON, issued_at=later))
    assert response.status_code == 400, response.json()
    assert response.json()["error"]["code"] == "invalid_cpr"
    assert "idms1's certificate expired" in response.json()["error"]["message"]
    assert _counts(store) == (0, 0, 0)


def test_a_cpr_that_omits_an_optional_attribute_leaves_it_as_it_was(store, tmp_path, idms):
    client = _client(store, tmp_path, idms)
    first = client.post("/cpr", json=idms.cpr({**PERSON, "country": "US"})).json()
    _activate(store, first["card_id"])
    without = {k: v for k, v in PERSON.items() if k != "title"}  # and no country either
    second = client.post("/cpr", json=idms.cpr({**without, "org_unit": "Langley"}, request_id="R2"))
    assert second.status_code == 201, second.json()
    user = _user(store, first["user_id"])
    assert (user.org_unit, user.title, user.country) == ("Langley", "Mathematician", "US")


def test_a_cpr_does_not_take_over_a_user_an_operator_or_an_import_created(store, tmp_path, idms):
    user_id = create_user(store, dict(PERSON), by="principal:77", policy=Policy())
    client = _client(store, tmp_path, idms)
    before = _counts(store)
    response = client.post("/cpr", json=idms.cpr({**PERSON, "title": "Director"}))
    assert response.status_code == 409, response.json()
    message = response.json()["error"]["message"]
    assert f"user {user_id}" in message
    assert "principal:77" in message  # the owner, from the user's creation
    assert "take_over_users" in message
    assert _counts(store) == before
    assert _user(store, user_id).title == "Mathematician"
    assert _receipts(store) == []
    # Configured to, the identity system takes the user over.
    taking = _client(store, tmp_path, idms, take_over_users=True)
    assert taking.post("/cpr", json=idms.cpr(PERSON, request_id="R2")).status_code == 201


def test_a_cpr_does_not_take_over_a_user_another_identity_system_created(store, tmp_path, idms):
    other = IdentitySystemKey("idms2", "ec", tmp_path)
    client = _client(store, tmp_path, idms, also=(other,))
    created = client.post("/cpr", json=other.cpr(PERSON)).json()
    _activate(store, created["card_id"])
    with store.read() as s:
        assert s.scalars(select(User.source)).one() == "cpr:idms2"
    response = client.post("/cpr", json=idms.cpr({**PERSON, "title": "Director"}))
    assert response.status_code == 409, response.json()
    assert "identity system idms2" in response.json()["error"]["message"]
    assert _user(store, created["user_id"]).title == "Mathematician"
    # The owner itself may still update its user.
    again = other.cpr({**PERSON, "title": "Director"}, request_id="R2")
    assert client.post("/cpr", json=again).status_code == 201
    assert _user(store, created["user_id"]).title == "Director"


def test_a_cpr_with_a_bad_line_name_is_refused_naming_the_field(store, tmp_path, idms):
    client = _client(store, tmp_path, idms)
    response = client.post("/cpr", json=idms.cpr(PERSON, line="Line 1; DROP"))
    assert response.status_code in (400, 422), response.json()
    assert "line" in response.json()["error"]["message"]
    assert _counts(store) == (0, 0, 0)
    good = client.post("/cpr", json=idms.cpr(PERSON, line="north-1"))
    assert good.status_code == 201, good.json()
    with store.read() as s:
        assert s.scalars(select(Credential.line)).one() == "north-1"


@pytest.mark.parametrize(
    ("payload", "key"),
    [
        (
            '{{"identity_system": "idms1", "request_id": "R1", "request_id": "R2", '
            '"issued_at": "{at}", "user": {user}}}',
            "request_id",
        ),
        (
            '{{"identity_system": "idms1", "request_id": "R1", "issued_at": "{at}", '
            '"user": {user_with_second_email}}}',
            "email",
        ),
    ],
    ids=["top-level", "in-the-user"],
)
def test_a_repeated_key_in_the_signed_payload_is_refused_naming_the_key(
    store, tmp_path, idms, payload, key
):
    client = _client(store, tmp_path, idms)
    user = json.dumps(PERSON)
    text = payload.format(
        at=_now().isoformat(),
        user=user,
        user_with_second_email=user[:-1] + ', "email": "someone-else@example.org"}',
    )
    response = client.post("/cpr", json=idms.signed(text.encode()))
    assert response.status_code == 400, response.json()
    assert response.json()["error"]["code"] == "invalid_cpr"
    assert f"repeated key {key!r}" in response.json()["error"]["message"]
    assert _counts(store) == (0, 0, 0)
