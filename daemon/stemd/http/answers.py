"""Every answer the API gives besides success, as `/openapi.json` describes it.

A route names the errors it raises itself (`errors(404, 409, ...)`, each with
FastAPI's `{"detail": ...}` body); `describe_guard` adds what `Guard` answers
before any route runs (400 for a Host it does not serve, 401 without the token,
403 for a change from another site's page) to every operation it guards; a 405
names every method its path has (`method_not_allowed`), not only those of the
route Starlette happened to try first. tests/e2e/test_openapi.py holds the
server to this description with schemathesis.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from stemd.http.auth import OPEN_PATHS
from stemd.http.origins import SAFE_METHODS


class FieldError(BaseModel):
    """One thing wrong with a request's parameters (FastAPI's validation)."""

    loc: list[str | int]
    msg: str
    type: str


class Pending(BaseModel):
    """/predict's answer when its jobs are there but the stems are not sent: poll
    or download them instead."""

    error: str
    jobs: list[int]
    stems: list[str] | None = Field(None, description="each job's zip (413)")
    poll: list[str] | None = Field(None, description="each job's URL (504)")


class Problem(BaseModel):
    """FastAPI's error body: what is wrong, and what to do."""

    detail: str


class Invalid(BaseModel):
    """A request refused as it stands: stemd's reason, or FastAPI's list of the
    parameters that do not fit."""

    detail: str | list[FieldError]


class PendingProblem(BaseModel):
    detail: str | Pending


RETRY_AFTER = {
    "Retry-After": {
        "description": "seconds to wait before asking again",
        "schema": {"type": "string"},
    }
}

# what each error means when the route says no more
DESCRIPTIONS = {
    400: "A request stemd cannot read (the reason in detail)",
    404: "No such job, or nothing of it to serve (the reason in detail)",
    409: "The job is not in a state that allows this (its state in detail)",
    413: "Over the size limit named in detail",
    422: "Not a request stemd can take: the reason, or the parameters that do not fit",
    503: "stemd is stopping, its ledger is out of reach, or the queue is full; "
    "nothing was done (see Retry-After)",
    504: "Not done in time; the work goes on (detail says where to poll)",
}
BODIES: dict[int, type[BaseModel]] = {422: Invalid}


def errors(*codes: int, **described: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these error codes, each with its body; a route's own
    wording as `e404="..."` replaces the general one."""
    answers: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        answer: dict[str, Any] = {
            "description": described.get(f"e{code}", DESCRIPTIONS[code]),
            "model": BODIES.get(code, Problem),
        }
        if code == 503:
            answer["headers"] = RETRY_AFTER
        answers[code] = answer
    return answers


# -- what Guard answers before any route --------------------------------------

GUARD_ANSWERS: dict[str, dict[str, Any]] = {
    "400": {"description": "The Host is not one stemd serves (http.allowed_hosts)"},
    "401": {
        "description": "No token, or the wrong one: Authorization: Bearer TOKEN, or "
        "HTTP Basic with the token as password",
        "headers": {
            "WWW-Authenticate": {"description": "Basic realm", "schema": {"type": "string"}}
        },
    },
    "403": {"description": "A change sent from the page of another site (its Origin)"},
}


def describe_guard(app: FastAPI) -> None:
    """Make `app.openapi()` list Guard's refusals on every operation they can
    answer: 400 everywhere, 401 but on the open paths, 403 on changes."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        problem = {"$ref": "#/components/schemas/Problem"}
        for path, operations in schema.get("paths", {}).items():
            for method, operation in operations.items():
                responses = operation.setdefault("responses", {})
                codes = ["400"]
                if path not in OPEN_PATHS:
                    codes.append("401")
                if method.upper() not in SAFE_METHODS:
                    codes.append("403")
                for code in codes:
                    answer = responses.setdefault(code, dict(GUARD_ANSWERS[code]))
                    answer.setdefault("content", {"application/json": {"schema": problem}})
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        schemas.setdefault("Problem", Problem.model_json_schema())
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


# -- 405 ---------------------------------------------------------------------


async def method_not_allowed(request: Request, exc: Exception) -> Response:
    """Starlette's 405 lists the methods of the one route it tried; a path served
    by several routes (GET and POST /api/v1/jobs) has all of theirs: those the
    description gives its path, with those of the route tried (a path left out of
    the description, like the page's)."""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code != 405:
        return await http_exception_handler(request, exc)
    tried = (exc.headers or {}).get("Allow", "")
    methods = {method.strip() for method in tried.split(",") if method.strip()}
    for template, operations in request.app.openapi().get("paths", {}).items():
        if _template(template).fullmatch(request.url.path):
            methods |= {method.upper() for method in operations}
    allow = ", ".join(sorted(methods))
    return JSONResponse(
        {"detail": f"{request.method} is not allowed here; use {allow}"},
        status_code=405,
        headers={"Allow": allow},
    )


def _template(path: str) -> re.Pattern[str]:
    """An OpenAPI path (`/api/v1/jobs/{job_id}`) as a pattern: a parameter is one
    path segment."""
    parts = re.split(r"(\{[^}/]+\})", path)
    return re.compile(
        "".join("[^/]+" if part.startswith("{") else re.escape(part) for part in parts)
    )
