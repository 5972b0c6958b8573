"""/certificates, /softtokens, and the public CRL and CA chain (CDP and AIA)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response

from producers import certificates, softtokens
from producers.api.auth import Allow, context
from producers.api.context import ApiContext, RowId
from producers.api.held import HELD, perform
from producers.principals import Caller
from schemas.api import (
    CardsCreated,
    CommentIn,
    PassphraseOut,
    ReasonIn,
    RequiredReasonIn,
    RevokeIn,
    SoftTokenOut,
    SoftTokenRequestIn,
    StateOut,
)
from schemas.errors import NotFound
from schemas.states import RevocationReason

router = APIRouter()
Ctx = Annotated[ApiContext, Depends(context)]


@router.post(
    "/certificates/{serial}/revoke", tags=["certificates"], response_model=StateOut, responses=HELD
)
def revoke_certificate(
    serial: str,
    body: RevokeIn,
    ctx: Ctx,
    who: Annotated[Caller, Depends(Allow("certificate.revoke"))],
) -> Any:
    params = {"reason": str(body.reason)}
    return perform(
        ctx, who, "certificate.revoke", serial, params, lambda state: StateOut(state=state)
    )


@router.post("/certificates/{serial}/hold", tags=["certificates"])
def hold_certificate(
    serial: str,
    body: ReasonIn,
    ctx: Ctx,
    who: Annotated[Caller, Depends(Allow("certificate.hold"))],
) -> StateOut:
    return StateOut(state=certificates.hold(ctx.store, serial, by=who.actor, reason=body.reason))


@router.post("/certificates/{serial}/release", tags=["certificates"])
def release_certificate(
    serial: str,
    body: ReasonIn,
    ctx: Ctx,
    who: Annotated[Caller, Depends(Allow("certificate.hold"))],
) -> StateOut:
    state = certificates.release(ctx.store, serial, by=who.actor, reason=body.reason)
    return StateOut(state=state)


def _file(path: Path, media_type: str) -> Response:
    try:
        return Response(path.read_bytes(), media_type=media_type)
    except FileNotFoundError:
        raise NotFound("published file", path.name) from None


@router.get("/crl/issuing.crl", tags=["pki"], response_class=Response)
def issuing_crl(ctx: Ctx) -> Response:
    """The issuing CA's current CRL (DER): the CRL distribution point. No token needed."""
    return _file(ctx.crl_dir / "issuing.crl", "application/pkix-crl")


@router.get("/crl/root.crl", tags=["pki"], response_class=Response)
def root_crl(ctx: Ctx) -> Response:
    """The root's ARL (DER). No token needed."""
    return _file(ctx.crl_dir / "root.crl", "application/pkix-crl")


@router.get("/ca/chain.pem", tags=["pki"], response_class=Response)
def ca_chain(ctx: Ctx) -> Response:
    """The issuing and root CA certificates (PEM). No token needed."""
    return _file(ctx.ca_chain, "application/x-pem-file")


@router.post("/softtokens", status_code=201, tags=["softtokens"])
def request_softtokens(
    body: SoftTokenRequestIn, ctx: Ctx, who: Annotated[Caller, Depends(Allow("softtoken.request"))]
) -> CardsCreated:
    ids = softtokens.request_softtokens(ctx.store, body.user, body.types, by=who.actor, pki=ctx.pki)
    return CardsCreated(ids=ids, state="requested" if ctx.pki.softtoken_approval else "approved")


@router.get("/softtokens", tags=["softtokens"])
def list_softtokens(
    ctx: Ctx,
    who: Annotated[Caller, Depends(Allow("softtoken.read"))],
    user: Annotated[str | None, Query(max_length=254)] = None,
    state: Annotated[str | None, Query(max_length=32)] = None,
) -> list[SoftTokenOut]:
    return [
        SoftTokenOut(
            id=v.id,
            user_email=v.user_email,
            token_type=v.token_type,
            state=v.state,
            requested_by=v.requested_by,
            approved_by=v.approved_by,
            serial=v.serial,
        )
        for v in softtokens.list_softtokens(ctx.store, user=user, state=state)
    ]


@router.post("/softtokens/{token_id}/approve", tags=["softtokens"])
def approve_softtoken(
    token_id: RowId,
    body: CommentIn,
    ctx: Ctx,
    who: Annotated[Caller, Depends(Allow("softtoken.decide"))],
) -> StateOut:
    return StateOut(state=softtokens.approve(ctx.store, token_id, by=who.actor))


@router.post("/softtokens/{token_id}/reject", tags=["softtokens"])
def reject_softtoken(
    token_id: RowId,
    body: RequiredReasonIn,
    ctx: Ctx,
    who: Annotated[Caller, Depends(Allow("softtoken.decide"))],
) -> StateOut:
    state = softtokens.reject(ctx.store, token_id, by=who.actor, reason=body.reason)
    return StateOut(state=state)


@router.post("/softtokens/{token_id}/cancel", tags=["softtokens"])
def cancel_softtoken(
    token_id: RowId,
    body: ReasonIn,
    ctx: Ctx,
    who: Annotated[Caller, Depends(Allow("softtoken.manage"))],
) -> StateOut:
    state = softtokens.cancel(ctx.store, token_id, by=who.actor, reason=body.reason)
    return StateOut(state=state)


@router.post("/softtokens/{token_id}/revoke", tags=["softtokens"])
def revoke_softtoken(
    token_id: RowId,
    body: RevokeIn,
    ctx: Ctx,
    who: Annotated[Caller, Depends(Allow("softtoken.manage"))],
) -> StateOut:
    reason = RevocationReason(body.reason)
    return StateOut(state=softtokens.revoke(ctx.store, token_id, by=who.actor, reason=reason))


@router.post("/softtokens/{token_id}/passphrase", tags=["softtokens"])
def display_passphrase(
    token_id: RowId, ctx: Ctx, who: Annotated[Caller, Depends(Allow("softtoken.password"))]
) -> PassphraseOut:
    """ "Display password": audited; a POST, so no cache or log keeps it as a URL."""
    secret = softtokens.reveal_passphrase(
        ctx.store, ctx.box, token_id, by=who.actor, roles=frozenset(r.value for r in who.roles)
    )
    return PassphraseOut(passphrase=secret.reveal())
