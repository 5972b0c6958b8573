"""/users: create, find, edit, deactivate, reactivate, lock, delete; and the
multi-user forms under /bulk/users."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from producers import lifecycle, users
from producers.api.auth import Allow, context
from producers.api.context import ApiContext
from producers.principals import Caller
from schemas.api import (
    BulkIn,
    BulkLockIn,
    BulkOut,
    CountOut,
    LockIn,
    ReasonIn,
    StateOut,
    UserIn,
    UserOut,
    UserPage,
    UserPatch,
)

router = APIRouter(tags=["users"])
Ctx = Annotated[ApiContext, Depends(context)]


@router.post("/users", status_code=201)
def create_user(
    body: UserIn, ctx: Ctx, who: Annotated[Caller, Depends(Allow("user.create"))]
) -> UserOut:
    user_id = users.create_user(ctx.store, body.model_dump(), by=who.actor, policy=ctx.policy)
    return users.get_user(ctx.store, str(user_id))


@router.get("/users")
def search_users(
    ctx: Ctx,
    who: Annotated[Caller, Depends(Allow("user.read"))],
    state: str | None = None,
    text: Annotated[str | None, Query(max_length=200)] = None,
    page: Annotated[int, Query(ge=1)] = 1,
    per_page: Annotated[int, Query(ge=1, le=users.MAX_PAGE)] = 50,
) -> UserPage:
    found = users.search_users(ctx.store, state=state, text=text, page=page, per_page=per_page)
    return UserPage(
        items=found.items,
        total=found.total,
        page=found.page,
        per_page=found.per_page,
    )


@router.get("/users/{user}")
def get_user(user: str, ctx: Ctx, who: Annotated[Caller, Depends(Allow("user.read"))]) -> UserOut:
    return users.get_user(ctx.store, user)


@router.patch("/users/{user}")
def edit_user(
    user: str, body: UserPatch, ctx: Ctx, who: Annotated[Caller, Depends(Allow("user.edit"))]
) -> UserOut:
    users.update_user(
        ctx.store,
        user,
        body.model_dump(exclude_unset=True),
        by=who.actor,
        unique_email=ctx.policy.email_unique,
    )
    return users.get_user(ctx.store, user)


@router.post("/users/{user}/deactivate")
def deactivate_user(
    user: str, body: ReasonIn, ctx: Ctx, who: Annotated[Caller, Depends(Allow("user.deactivate"))]
) -> CountOut:
    held = lifecycle.deactivate_user(
        ctx.store, user, by=who.actor, reason=body.reason, reasons=ctx.policy.deactivation_reasons
    )
    return CountOut(certificates=held)


@router.post("/users/{user}/reactivate")
def reactivate_user(
    user: str, body: ReasonIn, ctx: Ctx, who: Annotated[Caller, Depends(Allow("user.reactivate"))]
) -> CountOut:
    released = lifecycle.reactivate_user(
        ctx.store, user, by=who.actor, reason=body.reason, reasons=ctx.policy.deactivation_reasons
    )
    return CountOut(certificates=released)


@router.post("/users/{user}/lock")
def lock_user(
    user: str, body: LockIn, ctx: Ctx, who: Annotated[Caller, Depends(Allow("user.lock"))]
) -> CountOut:
    revoked = lifecycle.lock_user(ctx.store, user, by=who.actor, reason=body.reason)
    return CountOut(certificates=revoked)


@router.delete("/users/{user}")
def delete_user(
    user: str, ctx: Ctx, who: Annotated[Caller, Depends(Allow("user.delete"))]
) -> StateOut:
    return StateOut(state=users.delete_user(ctx.store, user, by=who.actor))


@router.post("/bulk/users/deactivate")
def deactivate_users(
    body: BulkIn, ctx: Ctx, who: Annotated[Caller, Depends(Allow("user.bulk"))]
) -> BulkOut:
    report = users.for_each_user(
        ctx.store,
        state=body.state,
        text=body.text,
        action=lambda u: lifecycle.deactivate_user(
            ctx.store, u, by=who.actor, reason=body.reason, reasons=ctx.policy.deactivation_reasons
        ),
    )
    return BulkOut(done=report.done, refused=report.refused)


@router.post("/bulk/users/lock")
def lock_users(
    body: BulkLockIn, ctx: Ctx, who: Annotated[Caller, Depends(Allow("user.bulk"))]
) -> BulkOut:
    report = users.for_each_user(
        ctx.store,
        state=body.state,
        text=body.text,
        action=lambda u: lifecycle.lock_user(ctx.store, u, by=who.actor, reason=body.lock_reason),
    )
    return BulkOut(done=report.done, refused=report.refused)


@router.post("/bulk/users/delete")
def delete_users(
    body: BulkIn, ctx: Ctx, who: Annotated[Caller, Depends(Allow("user.bulk"))]
) -> BulkOut:
    report = users.for_each_user(
        ctx.store,
        state=body.state,
        text=body.text,
        action=lambda u: users.delete_user(ctx.store, u, by=who.actor, reason=body.reason),
    )
    return BulkOut(done=report.done, refused=report.refused)
