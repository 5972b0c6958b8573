"""/users: create, find, edit, deactivate, reactivate, lock, delete; and the
multi-user forms under /bulk/users."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from producers import pending, users
from producers.api.auth import Allow, context
from producers.api.context import ApiContext, PageNumber
from producers.api.held import HELD, perform
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


@router.post("/users", status_code=201, response_model=UserOut, responses=HELD)
def create_user(
    body: UserIn, ctx: Ctx, who: Annotated[Caller, Depends(Allow("user.create"))]
) -> Any:
    values = body.model_dump()
    return perform(
        ctx,
        who,
        "user.create",
        body.email,
        {"values": values},
        lambda user_id: users.get_user(ctx.store, str(user_id)),
    )


@router.get("/users")
def search_users(
    ctx: Ctx,
    who: Annotated[Caller, Depends(Allow("user.read"))],
    state: str | None = None,
    text: Annotated[str | None, Query(max_length=200)] = None,
    page: PageNumber = 1,
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


@router.patch("/users/{user}", response_model=UserOut, responses=HELD)
def edit_user(
    user: str, body: UserPatch, ctx: Ctx, who: Annotated[Caller, Depends(Allow("user.edit"))]
) -> Any:
    changes = body.model_dump(exclude_unset=True)
    return perform(
        ctx, who, "user.edit", user, {"changes": changes}, lambda _: users.get_user(ctx.store, user)
    )


def _count(n: int) -> CountOut:
    return CountOut(certificates=n)


@router.post("/users/{user}/deactivate", response_model=CountOut, responses=HELD)
def deactivate_user(
    user: str, body: ReasonIn, ctx: Ctx, who: Annotated[Caller, Depends(Allow("user.deactivate"))]
) -> Any:
    return perform(ctx, who, "user.deactivate", user, {"reason": body.reason}, _count)


@router.post("/users/{user}/reactivate", response_model=CountOut, responses=HELD)
def reactivate_user(
    user: str, body: ReasonIn, ctx: Ctx, who: Annotated[Caller, Depends(Allow("user.reactivate"))]
) -> Any:
    return perform(ctx, who, "user.reactivate", user, {"reason": body.reason}, _count)


@router.post("/users/{user}/lock", response_model=CountOut, responses=HELD)
def lock_user(
    user: str, body: LockIn, ctx: Ctx, who: Annotated[Caller, Depends(Allow("user.lock"))]
) -> Any:
    return perform(ctx, who, "user.lock", user, {"reason": body.reason}, _count)


@router.delete("/users/{user}", response_model=StateOut, responses=HELD)
def delete_user(user: str, ctx: Ctx, who: Annotated[Caller, Depends(Allow("user.delete"))]) -> Any:
    return perform(ctx, who, "user.delete", user, {}, lambda state: StateOut(state=state))


def _bulk(ctx: ApiContext, who: Caller, body: BulkIn, process: str, reason: str | None) -> BulkOut:
    """One ``process`` per user the search finds (each held for an approver when the
    process's approval step is on)."""
    report = users.for_each_user(
        ctx.store,
        state=body.state,
        text=body.text,
        action=lambda u: pending.perform(
            ctx.store,
            process,
            u,
            {"reason": reason},
            by=who.actor,
            policy=ctx.policy,
            steps=ctx.approvals,
        ),
    )
    return BulkOut(done=report.done, refused=report.refused)


@router.post("/bulk/users/deactivate")
def deactivate_users(
    body: BulkIn, ctx: Ctx, who: Annotated[Caller, Depends(Allow("user.bulk"))]
) -> BulkOut:
    return _bulk(ctx, who, body, "user.deactivate", body.reason)


@router.post("/bulk/users/lock")
def lock_users(
    body: BulkLockIn, ctx: Ctx, who: Annotated[Caller, Depends(Allow("user.bulk"))]
) -> BulkOut:
    return _bulk(ctx, who, body, "user.lock", body.lock_reason)


@router.post("/bulk/users/delete")
def delete_users(
    body: BulkIn, ctx: Ctx, who: Annotated[Caller, Depends(Allow("user.bulk"))]
) -> BulkOut:
    return _bulk(ctx, who, body, "user.delete", body.reason)
