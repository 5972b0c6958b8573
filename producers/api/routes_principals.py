"""/principals and /tokens: who may act, with which roles, and their tokens."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from producers import principals
from producers.api.auth import Allow, context
from producers.api.context import ApiContext, RowId
from producers.api.held import HELD, perform
from producers.principals import Caller
from schemas.roles import PrincipalKind, Role

router = APIRouter(tags=["principals"])
Ctx = Annotated[ApiContext, Depends(context)]


class PrincipalIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    kind: PrincipalKind = PrincipalKind.OPERATOR
    roles: list[Role] = Field(default_factory=list, max_length=len(Role))


class PrincipalOut(BaseModel):
    id: int
    name: str
    kind: str
    roles: list[str]
    created_by: str
    created_at: str
    disabled: bool
    live_tokens: int


class RolesIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    roles: list[Role] = Field(max_length=len(Role))


class RolesOut(BaseModel):
    roles: list[str]


class TokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    expires_days: int = Field(90, ge=1, le=3650)


class TokenOut(BaseModel):
    """The token, shown this once; only its digest is stored."""

    id: int
    principal_id: int
    token: str


def _view(principal_id: int, ctx: ApiContext) -> PrincipalOut:
    (view,) = [v for v in principals.list_principals(ctx.store) if v.id == principal_id]
    return PrincipalOut(**asdict(view))


@router.get("/principals")
def list_principals(
    ctx: Ctx, who: Annotated[Caller, Depends(Allow("principal.admin"))]
) -> list[PrincipalOut]:
    return [PrincipalOut(**asdict(v)) for v in principals.list_principals(ctx.store)]


@router.post("/principals", status_code=201, responses=HELD)
def create_principal(
    body: PrincipalIn, ctx: Ctx, who: Annotated[Caller, Depends(Allow("principal.admin"))]
) -> PrincipalOut:
    """A new principal. With the role-change approval step on, it starts with no role
    and its roles wait for an approver (``GET /approvals``)."""
    held = ctx.approvals.required("principal.roles")
    roles = [r.value for r in body.roles]
    pid = principals.create_principal(
        ctx.store, body.name, roles=[] if held else roles, by=who.actor, kind=body.kind
    )
    if held and roles:
        perform(ctx, who, "principal.roles", str(pid), {"roles": roles}, lambda r: r)
    return _view(pid, ctx)


@router.put("/principals/{principal_id}/roles", response_model=RolesOut, responses=HELD)
def set_roles(
    principal_id: RowId,
    body: RolesIn,
    ctx: Ctx,
    who: Annotated[Caller, Depends(Allow("principal.roles"))],
) -> Any:
    roles = sorted({r.value for r in body.roles})
    return perform(
        ctx,
        who,
        "principal.roles",
        str(principal_id),
        {"roles": roles},
        lambda chosen: RolesOut(roles=chosen),
    )


@router.post("/principals/{principal_id}/tokens", status_code=201)
def issue_token(
    principal_id: RowId,
    body: TokenIn,
    ctx: Ctx,
    who: Annotated[Caller, Depends(Allow("principal.admin"))],
) -> TokenOut:
    token_id, secret = principals.issue_token(
        ctx.store, principal_id, by=who.actor, expires_days=body.expires_days
    )
    return TokenOut(id=token_id, principal_id=principal_id, token=secret.reveal())


@router.delete("/tokens/{token_id}")
def revoke_token(
    token_id: RowId, ctx: Ctx, who: Annotated[Caller, Depends(Allow("principal.admin"))]
) -> dict[str, str]:
    principals.revoke_token(ctx.store, token_id, by=who.actor)
    return {"state": "revoked"}
