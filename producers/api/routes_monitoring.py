"""/alerts and /metrics: what the operators' monitoring reads.

``GET /alerts`` lists the open alerts (``db.alerts``: the same as ``cardline alerts``);
``GET /metrics`` is the Prometheus text format (``producers.api.metrics``), for a token
whose principal has the ``monitoring`` or ``operator`` role (Prometheus sends it with
``authorization: {type: Bearer, credentials_file: ...}`` in its scrape config).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from db.alerts import open_alerts
from producers.api import metrics
from producers.api.auth import Allow, context
from producers.api.context import ApiContext
from producers.principals import Caller

router = APIRouter(tags=["status"])
Ctx = Annotated[ApiContext, Depends(context)]


@router.get("/alerts")
def alerts(ctx: Ctx, who: Annotated[Caller, Depends(Allow("alerts.read"))]) -> dict[str, Any]:
    """The open alerts, most severe and oldest first, each saying what to do."""
    with ctx.store.read() as s:
        found = open_alerts(s, ctx.alerts)
    return {"alerts": [a.as_dict() for a in found], "count": len(found)}


@router.get("/metrics", response_class=Response)
def prometheus_metrics(
    request: Request, ctx: Ctx, who: Annotated[Caller, Depends(Allow("metrics.read"))]
) -> Response:
    """The line's metrics in the Prometheus text format, read from the store per scrape."""
    registry = getattr(request.app.state, "metrics_registry", None)
    if registry is None:
        registry = metrics.registry_for(ctx.store, ctx.alerts)
        request.app.state.metrics_registry = registry
    return Response(metrics.exposition(registry), media_type=CONTENT_TYPE_LATEST)
