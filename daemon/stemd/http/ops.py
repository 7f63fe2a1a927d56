"""Operations: /ping for health checks, the seed's /health, /metrics."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from stemd.http.answers import errors
from stemd.http.context import Context, context

Ctx = Annotated[Context, Depends(context)]

router = APIRouter(tags=["operations"])


class Unhealthy(BaseModel):
    status: str
    problems: list[str]


UNHEALTHY: dict[int | str, dict[str, Any]] = {
    503: {
        "description": "What is wrong: a worker or the main loop stopped moving",
        "model": Unhealthy,
    }
}


def health_answer(ctx: Context, healthy: str) -> JSONResponse:
    """`{"status": healthy}`, or 503 with what is wrong: the watchdog's rule."""
    problems = ctx.daemon.health()
    if problems:
        return JSONResponse({"status": "unhealthy", "problems": problems}, status_code=503)
    return JSONResponse({"status": healthy})


@router.get(
    "/ping",
    summary="200 while the main loop and worker are healthy, else 503 (open)",
    responses=UNHEALTHY,
)
async def ping(ctx: Ctx) -> JSONResponse:
    # on the event loop: health() reads flags and clocks, never the ledger, so /ping
    # answers even while every pool thread waits for a database that hangs
    return health_answer(ctx, "ok")


def health(ctx: Ctx) -> JSONResponse:
    """The seed's health check (at /health, and $AIP_HEALTH_ROUTE when set)."""
    return health_answer(ctx, "healthy")


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses=errors(503, e503="The ledger is out of reach (see Retry-After)"),
)
def metrics(ctx: Ctx) -> Response:
    return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)
