"""``cardline api``: the HTTP API over the configured store, served by uvicorn."""

from __future__ import annotations

from fastapi import FastAPI

from db.files import atomic_write
from ops.config import Settings
from ops.line import DataPaths, worker_context
from ops.store import open_checked
from producers.api.app import api_routes, create_app, roles_of
from producers.api.context import ApiContext
from producers.cpr import load_identity_systems


def build_app(settings: Settings) -> FastAPI:
    """The app over ``settings``' store; the CA exists (made on first use) so the CA
    chain and CRLs it serves are there."""
    paths = DataPaths(settings.data_dir)
    paths.make()
    store = open_checked(settings)
    box = settings.secret_box()
    ca = worker_context(settings, store, box).ca
    chain = paths.root / "ca-chain.pem"
    atomic_write(chain, ca.chain_pem())
    ctx = ApiContext(
        store=store,
        box=box,
        policy=settings.policy,
        pki=settings.pki,
        crl_dir=paths.crl,
        ca_chain=chain,
        rejects_dir=paths.rejects,
        cpr=settings.cpr,
        cpr_keys=load_identity_systems(settings.cpr),
        approvals=settings.approvals,
        alerts=settings.alerts,
        bureaus=settings.bureaus,
        bureau_dir=settings.data_dir / "bureaus",
    )
    return create_app(ctx)


def route_table(app: FastAPI) -> list[tuple[str, str, str, str]]:
    """(method, path, roles, summary) of every operation, by path."""
    rows = []
    for route in api_routes(app.routes):
        roles = roles_of(route)
        allowed = ", ".join(sorted(r.value for r in roles)) if roles else "public"
        summary = (route.description or route.name.replace("_", " ")).split("\n")[0]
        for method in sorted(route.methods or ()):
            rows.append((method, route.path, allowed, summary))
    return sorted(rows, key=lambda r: (r[1], r[0]))


def serve(settings: Settings, *, host: str, port: int) -> None:
    import uvicorn

    uvicorn.run(build_app(settings), host=host, port=port, log_level="info", access_log=False)
