"""The jobs API under /api/v1: upload, look, listen, download, retry."""

from __future__ import annotations

import asyncio
import io
import json
import os
import time
import zipfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from stemd import __version__
from stemd.http.answers import errors
from stemd.http.context import Context, answered_at_once, client_gone, context
from stemd.http.events import CLOSED
from stemd.http.spool import Spooled, UploadRejected
from stemd.jobview import API
from stemd.ledger import JobRecord, JobState
from stemd.logs import retried_by_hand
from stemd.manifest import manifest_peaks, open_stem
from stemd.report import status_report

Ctx = Annotated[Context, Depends(context)]
# the ledger's ids are 64-bit: a larger number is refused (422), not a 500 from SQLite
JobId = Annotated[int, PathParam(ge=1, le=2**63 - 1, description="the job's id")]

MULTIPART_SLACK = 1 << 20  # a form's boundaries and headers around the file
DRAIN_MAX = 16 << 20  # read past this much of a refused body so the client hears why
PROGRESS_INTERVAL_S = 0.5
KEEPALIVE_S = 15.0
MEDIA_TYPES = {".wav": "audio/wav", ".flac": "audio/flac", ".mp3": "audio/mpeg"}

router = APIRouter(prefix=API, tags=["jobs"])

UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The audio file: a multipart form field `file`, or the raw bytes "
        "with `?filename=`.",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "callback_url": {
                            "type": "string",
                            "description": "POSTed the job's JSON, signed, when it ends",
                        },
                    },
                    "required": ["file"],
                }
            },
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


async def receive_upload(request: Request, ctx: Context, filename: str | None) -> Spooled:
    """The request's file spooled to disk, or the HTTP error that says why not."""
    limit = ctx.config.max_upload
    content_type = request.headers.get("content-type", "")
    multipart = content_type.lower().startswith("multipart/form-data")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit + (MULTIPART_SLACK if multipart else 0):
        raise HTTPException(413, f"{length} bytes is over http.max_upload ({limit} bytes)")
    try:
        if multipart:
            return await ctx.spool.from_multipart(request.stream(), content_type, limit)
        return await ctx.spool.from_stream(request.stream(), filename, limit)
    except UploadRejected as err:
        await _drain(request)
        raise HTTPException(err.status, err.message) from None
    except ClientDisconnect:
        name = (
            f"upload {filename!r}"
            if filename
            else "an upload (multipart)"
            if multipart
            else "an upload"
        )
        raise client_gone(name) from None


async def _drain(request: Request) -> None:
    """Read (and drop) a little more of a refused body: a client still sending
    hears the answer instead of a reset connection. Bounded."""
    read = 0
    try:
        async for chunk in request.stream():
            read += len(chunk)
            if read > DRAIN_MAX:
                break
    except Exception:  # the stream is already consumed or gone: nothing to drain
        return


@router.post(
    "/jobs",
    status_code=202,
    openapi_extra=UPLOAD_BODY,
    summary="Upload a file to separate",
    responses={
        200: {"description": "The content was known: the job as it stands (done or failed)"},
        202: {"description": "Queued"},
        **errors(
            400,
            413,
            422,
            503,
            e400="A multipart body without its boundary",
            e413="Over http.max_upload",
            e422="Not audio stemd can take, a choice it cannot render (naming the key), "
            "or a callback_url stemd will not call, with the reason",
            e503="The queue is past http.max_queue, or stemd is stopping (see Retry-After)",
        ),
    },
)
async def create_job(
    request: Request,
    ctx: Ctx,
    filename: Annotated[str | None, Query(max_length=4096)] = None,
    callback_url: Annotated[
        str | None,
        Query(
            max_length=2048,
            description="POSTed the job's JSON, signed, when it ends (also a form field "
            "beside `file`); http(s), never a link-local or metadata address",
        ),
    ] = None,
) -> JSONResponse:
    keys = [key for key, _value in request.query_params.multi_items()]
    twice = sorted({key for key in keys if keys.count(key) > 1})
    if twice:  # which one would count? say so instead of choosing
        raise HTTPException(422, f"{twice[0]}: sent twice in the query; send each once")
    queried = {
        key: value
        for key, value in request.query_params.items()
        if key not in ("filename", "callback_url")
    }
    ctx.choices(queried)  # refused before the body is read
    await run_in_threadpool(ctx.check_queue)  # the ledger, off the event loop
    try:  # refused before the body is read, when the query has it
        checked = await ctx.check_callback(callback_url)
    except HTTPException:
        await _drain(request)
        raise
    spooled = await receive_upload(request, ctx, filename)
    try:
        fields = {key: value for key, value in spooled.fields.items() if key != "callback_url"}
        both = sorted(set(queried) & set(fields))
        if both:
            raise HTTPException(
                422, f"{both[0]}: sent as a form field and in the query; send it once"
            )
        choices = ctx.choices({**queried, **fields})
    except BaseException:
        spooled.discard()
        raise
    checked = await _form_callback(ctx, spooled, checked)
    spooled = await ctx.check(spooled)
    job, record = await ctx.take(spooled, choices, checked)
    known = answered_at_once(record) or job.state in (JobState.DONE, JobState.FAILED)
    body = await run_in_threadpool(ctx.job_json, job)
    body["upload"] = {"name": spooled.name, "bytes": spooled.size, "state": record.state.value}
    return JSONResponse(body, status_code=200 if known else 202, headers={"Location": body["url"]})


async def _form_callback(ctx: Context, spooled: Spooled, from_query: str | None) -> str | None:
    """The form's `callback_url` field, checked (the spool file goes with a refusal)."""
    field = spooled.fields.get("callback_url")
    if field is None:
        return from_query
    try:
        if from_query is not None:
            raise HTTPException(
                422, "callback_url is both in the query and in the form: give it once"
            )
        return await ctx.check_callback(field)
    except HTTPException:
        spooled.discard()
        raise


@router.get("/jobs", summary="Jobs, newest first", responses=errors(422, 503))
def list_jobs(
    ctx: Ctx,
    state: JobState | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    dismissed: Annotated[
        bool,
        Query(
            description="also the failures taken off the list, as `stemd status` leaves them out"
        ),
    ] = False,
    q: Annotated[
        str | None,
        Query(max_length=200, description="only sources whose name holds this (any case)"),
    ] = None,
    before: Annotated[
        int | None,
        Query(ge=1, le=2**63 - 1, description="only jobs older than this id: the next page"),
    ] = None,
) -> dict[str, Any]:
    # one more than asked: whether another page follows, without a second query
    jobs = ctx.ledger.recent_jobs(
        state, limit + 1, query=q or None, before=before, dismissed=dismissed
    )
    page = jobs[:limit]
    more = page[-1].id if len(jobs) > limit else None  # `before=` this for the next page
    return {"jobs": [ctx.job_json(job) for job in page], "next_before": more}


@router.get(
    "/jobs/{job_id}",
    summary="One job: state, progress, queue position, stems",
    responses=errors(404, 422, 503),
)
def get_job(job_id: JobId, ctx: Ctx) -> dict[str, Any]:
    return ctx.job_json(ctx.job(job_id))


@router.get(
    "/jobs/{job_id}/stems/{stem}",
    summary="One stem's file (Range requests work, for players)",
    response_class=FileResponse,
    responses=errors(404, 422, 503),
)
def get_stem(job_id: JobId, stem: str, ctx: Ctx) -> FileResponse:
    job = ctx.job(job_id)
    files = ctx.stem_files(job)
    if not files:
        raise HTTPException(404, f"job {job_id} has no stems ({job.state.value})")
    path = files.get(stem)
    known = ", ".join(sorted(files))
    if path is None:
        raise HTTPException(404, f"job {job_id} has no stem {stem!r}; it has {known}")
    try:
        fd = open_stem(path, ctx.config.outbox)  # never through a link swapped in since
    except OSError:
        raise HTTPException(404, f"job {job_id}: the {stem} stem is gone; it had {known}") from None
    return DescriptorFileResponse(
        fd,
        media_type=MEDIA_TYPES.get(path.suffix, "application/octet-stream"),
        filename=path.name,
        content_disposition_type="inline",
    )


@router.get(
    "/jobs/{job_id}/peaks",
    summary="The stems' waveform pictures (peaks.json: min/max in a few thousand points)",
    response_class=FileResponse,
    responses=errors(
        404, 422, 503, e404="No such job, no stems, or stems made before stemd wrote peaks"
    ),
)
def get_peaks(job_id: JobId, ctx: Ctx) -> FileResponse:
    job = ctx.job(job_id)
    if job.state is not JobState.DONE or not job.output_dir:
        raise HTTPException(404, f"job {job_id} has no stems ({job.state.value})")
    outbox = ctx.config.outbox
    # one read of the manifest on the share: manifest_peaks vets its stems too
    path = manifest_peaks(outbox / job.output_dir, outbox)
    if path is None:
        raise HTTPException(
            404, f"job {job_id}'s stems have no peaks (made before stemd wrote them)"
        )
    try:
        fd = open_stem(path, outbox)  # the share: as safely as a stem
    except OSError:
        raise HTTPException(404, f"job {job_id}: its {path.name} is gone") from None
    return DescriptorFileResponse(fd, media_type="application/json")


class DescriptorFileResponse(FileResponse):
    """A FileResponse (Range requests and all) of a file already open: it reads the
    descriptor's own file through /proc/self/fd, whatever the name points at now,
    and closes the descriptor when the response ends, however it ends."""

    def __init__(self, fd: int, **kwargs: Any) -> None:
        self.fd = fd
        super().__init__(f"/proc/self/fd/{fd}", stat_result=os.fstat(fd), **kwargs)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            os.close(self.fd)


@router.get(
    "/jobs/{job_id}/stems.zip",
    summary="Every stem in one zip, streamed",
    response_class=StreamingResponse,
    responses=errors(404, 422, 503),
)
def get_zip(job_id: JobId, ctx: Ctx) -> StreamingResponse:
    job = ctx.job(job_id)
    files = ctx.stem_files(job)
    if not files:
        raise HTTPException(404, f"job {job_id} has no stems ({job.state.value})")
    track = PurePosixPath(job.source).stem or f"job{job.id}"
    name = f"{track} - stems.zip"
    return StreamingResponse(
        zip_stream({path.name: path for path in files.values()}, ctx.config.outbox),
        media_type="application/zip",
        headers={"Content-Disposition": _attachment(name)},
    )


@router.post(
    "/jobs/{job_id}/retry",
    summary="Queue a failed job again (a dismissed one too: it counts again)",
    responses=errors(404, 409, 422, 503, e409="The job is not failed: nothing to retry"),
)
def retry_job(job_id: JobId, ctx: Ctx) -> dict[str, Any]:
    job = _act_on_failure(ctx, job_id, ctx.ledger.retry_job, "retry")
    retried_by_hand(job, "the API")
    ctx.workers.wake()
    return ctx.job_json(ctx.job(job_id))


@router.post(
    "/jobs/{job_id}/dismiss",
    summary="Take a failed job off the list (`stemd dismiss` for one job)",
    responses=errors(404, 409, 422, 503, e409="The job is not failed: nothing to dismiss"),
)
def dismiss_job(job_id: JobId, ctx: Ctx) -> dict[str, Any]:
    _act_on_failure(ctx, job_id, ctx.ledger.dismiss_job, "dismiss")
    return ctx.job_json(ctx.job(job_id))


def _act_on_failure(ctx: Context, job_id: int, act: Callable[[int], bool], verb: str) -> JobRecord:
    """`act` (the ledger's retry or dismiss) on a failed job; 404 for no such
    job, 409 when it is not failed. Returns the job as it was."""
    job = ctx.job(job_id)
    if not act(job.id):
        raise HTTPException(
            409, f"job {job_id} is {job.state.value}, not failed: nothing to {verb}"
        )
    return job


@router.get("/status", summary="What `stemd status --json` prints", responses=errors(503))
def get_status(ctx: Ctx) -> dict[str, Any]:
    return status_report(ctx.ledger)


@router.get("/info", summary="Model, device, outbox space, workers", responses=errors(503))
def get_info(ctx: Ctx) -> dict[str, Any]:
    workers = ctx.workers
    info = workers.model_info
    return {
        "version": __version__,
        "model": info.name,
        "device": info.device,
        # what runs the forward pass (torch, openvino) and at what precision
        "backend": info.backend,
        "precision": info.precision,
        "stems": list(info.sources),
        "format": ctx.config.output.format,
        "outbox": str(ctx.config.outbox),
        "outbox_free_bytes": ctx.outbox_free(),
        "uptime_s": round(time.time() - ctx.daemon.started_at, 1),
        "workers": workers.report(),
        "ledger": ctx.ledger.backend.kind,
        "node": ctx.ledger.node,
    }


@router.get(
    "/events",
    summary="Server-sent events: progress, done, failed, ...",
    response_class=StreamingResponse,
)
async def events(ctx: Ctx) -> StreamingResponse:
    return StreamingResponse(
        event_stream(ctx),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def event_stream(ctx: Context) -> AsyncIterator[str]:
    subscription = ctx.hub.subscribe()
    last_progress: dict[str, tuple[int, float]] = {}  # worker -> (job, progress) sent
    last_sent = time.monotonic()
    try:
        yield "retry: 2000\n\n"
        while True:
            try:
                item = await asyncio.wait_for(subscription.queue.get(), PROGRESS_INTERVAL_S)
            except TimeoutError:
                item = None
            if item is CLOSED or ctx.daemon.stopping:
                return
            if subscription.overflowed:
                subscription.overflowed = False
                yield _sse("resync", {"reason": "events were dropped; fetch the jobs again"})
            if item is not None:
                yield _sse(item["event"], item)
                last_sent = time.monotonic()
            workers = ctx.daemon.workers
            for worker in workers.busy() if workers is not None else []:
                current = worker.current
                if current is None:
                    continue
                now = (current.job_id, round(current.progress, 3))
                if last_progress.get(worker.worker_name) != now:
                    last_progress[worker.worker_name] = now
                    yield _sse(
                        "progress",
                        {
                            "job": now[0],
                            "source": current.source,
                            "progress": now[1],
                            "worker": worker.worker_name,
                        },
                    )
                    last_sent = time.monotonic()
            if time.monotonic() - last_sent > KEEPALIVE_S:
                yield ": keep-alive\n\n"
                last_sent = time.monotonic()
    finally:
        ctx.hub.unsubscribe(subscription)


def _sse(name: str, data: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def _attachment(name: str) -> str:
    ascii_name = name.encode("ascii", "replace").decode().replace('"', "'")
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name)}"


class _Pipe(io.RawIOBase):
    """An unseekable sink that zipfile writes into and the response drains."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.chunks.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data = b"".join(self.chunks)
        self.chunks.clear()
        return data


def zip_stream(files: dict[str, Path], root: Path, block: int = 1 << 20) -> Iterator[bytes]:
    """A zip of `files` (name in the archive -> path), made as it is sent: stored,
    not compressed (the stems are audio), a block of memory at a time."""
    pipe = _Pipe()
    with zipfile.ZipFile(pipe, "w", compression=zipfile.ZIP_STORED) as archive:
        for arcname, path in files.items():
            with (
                os.fdopen(open_stem(path, root), "rb") as source,
                archive.open(arcname, "w", force_zip64=True) as entry,
            ):
                while data := source.read(block):
                    entry.write(data)
                    yield pipe.take()
    yield pipe.take()
