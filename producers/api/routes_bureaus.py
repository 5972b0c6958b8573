"""/bureaus: a service bureau's order files out and delivery files in (seed 000)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from producers import bureaus
from producers.api.auth import Allow, context
from producers.api.context import ApiContext
from producers.principals import Caller
from schemas.bureau import BureauConfig

router = APIRouter(tags=["bureaus"])
Ctx = Annotated[ApiContext, Depends(context)]
MAX_DELIVERY = 200 * 1024 * 1024

_CMS = {"application/pkcs7-mime": {"schema": {"type": "string", "format": "binary"}}}
# The delivery file as sent: its bytes (DER CMS), whatever the Content-Type says.
_BYTES = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}


def _bureau(ctx: ApiContext, name: str) -> BureauConfig:
    if name not in ctx.bureaus:
        raise HTTPException(404, f"no bureau {name!r} is configured")
    return ctx.bureaus[name]


@router.post(
    "/bureaus/{name}/orders",
    responses={200: {"content": _CMS}, 204: {"description": "nothing to order"}},
)
def export(name: str, ctx: Ctx, who: Annotated[Caller, Depends(Allow("bureau.export"))]) -> Any:
    """The bureau's next order file (CMS: signed by Cardline, encrypted to the bureau),
    every ready card routed to it in it; 204 when there is nothing to order."""
    config = _bureau(ctx, name)
    assert ctx.bureau_dir is not None  # set with the bureaus (ops.api)
    me = bureaus.identity(ctx.bureau_dir, ctx.box)
    done = bureaus.export_order(
        ctx.store,
        name,
        config,
        me,
        ctx.bureau_dir / name / "orders",
        by=who.actor,
        policy=ctx.policy,
    )
    if done is None:
        return Response(status_code=204)
    return Response(
        content=done.path.read_bytes(),
        media_type="application/pkcs7-mime",
        headers={
            "Content-Disposition": f'attachment; filename="{done.path.name}"',
            "X-Order-Sequence": str(done.sequence),
            "X-Order-Cards": str(done.cards),
        },
    )


@router.post(
    "/bureaus/{name}/deliveries",
    openapi_extra={"requestBody": {"required": True, "content": _BYTES}},
)
async def deliver(
    name: str,
    request: Request,
    ctx: Ctx,
    who: Annotated[Caller, Depends(Allow("bureau.import"))],
) -> dict[str, Any]:
    """Import a delivery file signed by the bureau: refused whole (422, naming the
    record) or applied in one transaction."""
    config = _bureau(ctx, name)
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_DELIVERY:
            raise HTTPException(413, f"a delivery file is at most {MAX_DELIVERY} bytes")
    assert ctx.bureau_dir is not None
    keep = ctx.bureau_dir / name / "deliveries"
    done = await run_in_threadpool(
        bureaus.import_delivery,
        ctx.store,
        name,
        config,
        bytes(data),
        by=who.actor,
        policy=ctx.policy,
        keep_dir=keep,
    )
    return done.__dict__


@router.get("/bureaus/report")
def report(
    ctx: Ctx, who: Annotated[Caller, Depends(Allow("bureau.read"))], bureau: str | None = None
) -> dict[str, Any]:
    """Per order file: ordered = produced + rejected + outstanding, cards outstanding
    too long, blanks the bureau spoiled."""
    return bureaus.report(ctx.store, ctx.bureaus, only=bureau).as_dict()
