"""The FastAPI application: routes, the token check and request metrics."""

from __future__ import annotations

import os
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Message, Receive, Scope, Send

from stemd import __version__
from stemd.http import ops
from stemd.http.answers import describe_guard, method_not_allowed
from stemd.http.api import router as api_router
from stemd.http.auth import OPEN_PATHS, authorized
from stemd.http.context import Context
from stemd.http.origins import host_refusal, origin_refusal
from stemd.http.predict import predict_router
from stemd.ledger import LedgerUnavailable

# The routes the seed also served where its platform told it to
PREDICT_ROUTE_ENV = "AIP_PREDICT_ROUTE"
HEALTH_ROUTE_ENV = "AIP_HEALTH_ROUTE"
STATIC = resources.files("stemd.http") / "static"


def create_app(ctx: Context) -> Guard:
    app = FastAPI(
        title="stemd",
        version=__version__,
        description="Stem separation: the seed's /predict, a jobs API, health and metrics.",
        # Swagger's page loads its scripts from a CDN: an offline NAS would show a
        # blank page. /openapi.json is the description.
        docs_url=None,
        redoc_url=None,
    )
    app.state.stemd = ctx
    app.add_exception_handler(LedgerUnavailable, ledger_unavailable)
    app.add_exception_handler(StarletteHTTPException, method_not_allowed)
    app.include_router(api_router)
    predict_routes = {"/predict", os.environ.get(PREDICT_ROUTE_ENV) or "/predict"}
    for route in sorted(predict_routes):
        app.include_router(predict_router(route))
    app.include_router(ops.router)
    for route in sorted({"/health", os.environ.get(HEALTH_ROUTE_ENV) or "/health"}):
        app.add_api_route(
            route,
            ops.health,
            methods=["GET"],
            tags=["operations"],
            summary='The seed\'s health check: {"status": "healthy"}',
            responses=ops.UNHEALTHY,
        )
    app.add_api_route(
        "/", page, methods=["GET"], include_in_schema=False, response_class=HTMLResponse
    )
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    describe_guard(app)
    return Guard(app, ctx)


async def ledger_unavailable(_request: Request, exc: Exception) -> JSONResponse:
    """The shared ledger's database is down: come back later (nothing was done)."""
    return JSONResponse(
        {"detail": f"{exc}; nothing was done, try again shortly"},
        status_code=503,
        headers={"Retry-After": "10"},
    )


async def page() -> HTMLResponse:  # a small file: read on the loop, no pool thread needed
    return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))


class Guard:
    """ASGI middleware: the Host and, for changes, the Origin a browser sends
    (http.origins: DNS rebinding and cross-site requests), the token on every route
    but /ping, and a count of every answer by route template and status code. Plain
    ASGI, not a Starlette BaseHTTPMiddleware, so streamed answers (events, zips) pass
    through as they are."""

    def __init__(self, app: FastAPI, ctx: Context) -> None:
        self.app = app
        self.ctx = ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            headers = Headers(scope=scope)
            refusal_status, why = 400, host_refusal(headers, self.ctx.allowed_hosts)
            if why is None:
                refusal_status, why = (
                    403,
                    origin_refusal(scope["method"], headers),
                )
            if why is not None:
                await JSONResponse({"detail": why}, status_code=refusal_status)(
                    scope, receive, send_counted
                )
                return
            header = headers.get("authorization")
            if scope["path"] not in OPEN_PATHS and not authorized(self.ctx.token, header):
                refusal = JSONResponse(
                    {
                        "detail": "a token is needed: Authorization: Bearer TOKEN, or HTTP Basic "
                        "with the token as password (curl -u :TOKEN)"
                    },
                    status_code=401,
                    headers={"WWW-Authenticate": 'Basic realm="stemd", charset="UTF-8"'},
                )
                await refusal(scope, receive, send_counted)
                return
            await self.app(scope, receive, send_counted)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or (
                "/static" if scope["path"].startswith("/static/") else "unmatched"
            )
            self.ctx.metrics.requests.labels(template, str(status)).inc()
