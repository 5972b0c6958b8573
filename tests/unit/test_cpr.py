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
from sqlalchemy import func, select

from db.models import AuditEvent, CardProductionRequest, Credential, Principal, User
from db.secrets import SecretBox
from producers.api.app import create_app
from producers.api.context import ApiContext
from producers.cpr import load_identity_systems
from producers.tokens import create_token
from schemas.cpr import CprConfig, IdentitySystem
from schemas.pki import PkiConfig
from schemas.policy import Policy

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


class IdentitySystemKey:
    def __init__(self, name: str, kind: str, folder: Path) -> None:
        self.name = name
        self.key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = (
            rsa.generate_private_key(public_exponent=65537, key_size=2048)
            if kind == "rsa"
            else ec.generate_private_key(ec.SECP256R1())
        )
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
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
    ) -> dict[str, str]:
        """A CPR signed with this system's key; ``names`` puts another system's name in
        the payload (and the wire form's ``signer`` stays this system's unless given)."""
        body = {"identity_system": names or self.name, "request_id": request_id, "user": user}
        payload = json.dumps(body).encode()
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
    **options,
) -> TestClient:
    systems = {s.name: IdentitySystem(certificate=s.cert_path) for s in (idms, *also)}
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
    _, token = create_token(store, name="idms1-gateway", role="identity_system", by="tests")
    client.headers["Authorization"] = f"Bearer {token.reveal()}"
    return client


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
