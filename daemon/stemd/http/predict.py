"""The seed's endpoint: `POST /predict`, base64 audio in, base64 stems out.

Clients written for the REST service stemd grew from post
`{"instances": [{"b64": "<base64 audio file>"}], "parameters": {...}}` and get
back `{"drums": "<base64 mp3>", ...}` for one instance, or
`{"predictions": [one such object per instance]}` for several (the convention of
the prediction containers whose `$AIP_PREDICT_ROUTE` the seed honoured). The
files go through the same pipeline as uploads and inbox files: spooled,
deduplicated, one model queue, published under `uploads/`. The answer is made
from the published stems, transcoded when the outbox holds another format: a
track is never separated twice for its answer.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, BinaryIO

import anyio
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from stemd.audio import answer_format, probe, transcode
from stemd.choices import ChoiceError, Choices, choices_from_json
from stemd.http.answers import PendingProblem, Problem, errors
from stemd.http.context import Context, client_gone, context, unavailable
from stemd.http.spool import Spooled
from stemd.jobview import API
from stemd.ledger import Fault, JobRecord, JobState
from stemd.manifest import open_stem, read_manifest

Ctx = Annotated[Context, Depends(context)]
FORMATS = ("mp3", "wav", "flac")
DEFAULT_FORMAT = "mp3"  # what the seed answered, at 320 kbps: its web client plays data:audio/mp3
WAIT_POLL_S = 0.25
ANSWER_BLOCK = 3 * 256 * 1024  # a multiple of 3: base64 blocks join without padding
MP3_BYTES_PER_S = 320_000 // 8

PREDICT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["instances"],
                    "properties": {
                        "instances": {
                            "type": "array",
                            "minItems": 1,
                            "items": {
                                "type": "object",
                                "required": ["b64"],
                                "properties": {"b64": {"type": "string", "format": "byte"}},
                            },
                        },
                        "parameters": {
                            "type": "object",
                            "properties": {
                                "format": {"type": "string", "enum": list(FORMATS)},
                                "stems": {"type": "array", "items": {"type": "string"}},
                                "two_stems": {"type": "string"},
                                "mp3_bitrate": {"type": "integer"},
                                "sample_format": {"enum": ["s16", "s24", "f32"]},
                                "sample_rate": {"type": ["integer", "string"]},
                                "tags": {"enum": ["copy", "none"]},
                                "callback_url": {
                                    "type": "string",
                                    "description": "POSTed each instance's job, signed, "
                                    "when it ends",
                                },
                            },
                            "additionalProperties": False,
                        },
                    },
                },
                "example": {"instances": [{"b64": "<base64 of an audio file>"}]},
            }
        },
    }
}


def predict_router(route: str) -> APIRouter:
    """The endpoint at `route` (/predict, and $AIP_PREDICT_ROUTE when set)."""
    router = APIRouter(tags=["seed-compatible"])
    router.add_api_route(
        route,
        predict,
        methods=["POST"],
        summary="Separate base64 files; answer base64 stems (the seed's shape)",
        openapi_extra=PREDICT_BODY,
        responses={
            200: {"description": "stem name -> base64 file; several: {predictions: [...]}"},
            **errors(
                400,
                422,
                503,
                e400="Not JSON, not the shape, invalid base64, or parameters stemd cannot "
                "render (naming the key)",
                e422="Not audio stemd can take, with the reason: refused on "
                "arrival, or found corrupt, too long or silent of audio while decoding; or "
                "a parameters.callback_url stemd will not call",
            ),
            413: {
                "description": "Over http.max_predict_body or http.max_upload, or an "
                "answer over http.max_predict_answer (then the jobs and their zips)",
                "model": PendingProblem,
            },
            500: {
                "description": "stemd failed to separate a good file (its job says why)",
                "model": Problem,
            },
            504: {
                "description": "Not done within http.predict_timeout: poll the job ids",
                "model": PendingProblem,
            },
        },
    )
    return router


async def predict(request: Request, ctx: Ctx) -> StreamingResponse:
    await run_in_threadpool(ctx.check_queue)
    instances, fmt, choices, callback = parse_body(
        await read_body(request, ctx.config.http.max_predict_body)
    )
    try:
        ctx.intake.check_choices(choices)
    except ChoiceError as err:
        raise HTTPException(400, f"parameters.{err}") from None
    callback = await ctx.check_callback(callback, "parameters.callback_url")
    limit = ctx.config.max_upload
    for index, data in enumerate(instances):
        if len(data) > limit:
            raise HTTPException(
                413, f"instances[{index}]: {len(data)} bytes is over http.max_upload ({limit})"
            )
    # Every instance spooled and checked before any is taken: a request refused
    # for one bad file leaves no job behind for the others.
    spooled: list[Spooled] = []
    try:
        for index, data in enumerate(instances):
            spooled.append(await run_in_threadpool(ctx.spool.from_bytes, data, _name(data)))
            try:
                spooled[-1] = await ctx.check(spooled[-1])
            except HTTPException as err:
                raise HTTPException(err.status_code, f"instances[{index}]: {err.detail}") from None
    except BaseException:
        for upload in spooled:
            upload.discard()
        raise
    jobs: list[tuple[int, str | None]] = []  # (input id, a copy's folder if served at once)
    for upload in spooled:
        # each instance's job calls back
        _job, record = await ctx.take(upload, choices, callback)
        jobs.append((record.id, record.output_dir))
    del instances  # the request's copies of the files: the spool has them now
    done = await wait_for(ctx, [input_id for input_id, _ in jobs])
    finished = [
        (job, await run_in_threadpool(stems_of, ctx, job, folder))
        for job, (_input, folder) in zip(done, jobs, strict=True)
    ]
    size = 0
    for _job, files in finished:
        size += await run_in_threadpool(answer_size, ctx, files, fmt)
    cap = ctx.config.http.max_predict_answer
    if size > cap:
        ids = [job.id for job, _files in finished]
        raise HTTPException(
            413,
            {
                "error": f"the answer would hold about {size / 2**20:.0f} MiB of base64, over "
                f"http.max_predict_answer ({cap / 2**20:.0f} MiB): the stems are ready in "
                "the jobs API (each stem, or all as a zip), or ask for mp3",
                "jobs": ids,
                "stems": [f"{API}/jobs/{job_id}/stems.zip" for job_id in ids],
            },
        )
    scratch = Path(tempfile.mkdtemp(prefix="answer-", dir=ctx.spool.root))
    answers: list[list[tuple[str, BinaryIO]]] = []
    try:
        async with ctx.answer_slots():  # at most http.predict_answers made at once
            for index, (job, files) in enumerate(finished):
                opened = await run_in_threadpool(
                    answer_files, ctx, job.id, files, fmt, scratch / str(index)
                )
                answers.append(opened)
    except BaseException:
        release(answers, scratch)
        raise
    # streamed: each stem read and base64-encoded a block at a time, never whole
    return AnswerResponse(json_answer(answers), answers, scratch)


class AnswerResponse(StreamingResponse):
    """The streamed answer; its files are closed and its scratch folder removed when
    it ends, however: sent, or the client gone before or while it is sent (the
    generator may then never run, and a generator that never ran has no finally)."""

    def __init__(
        self, body: Iterator[bytes], answers: list[list[tuple[str, BinaryIO]]], scratch: Path
    ) -> None:
        super().__init__(body, media_type="application/json")
        self.answers, self.scratch = answers, scratch

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await run_in_threadpool(release, self.answers, self.scratch)


def release(answers: list[list[tuple[str, BinaryIO]]], scratch: Path) -> None:
    for stems in answers:
        for _stem, handle in stems:
            handle.close()
    shutil.rmtree(scratch, ignore_errors=True)


def stems_of(ctx: Context, job: JobRecord, own_folder: str | None) -> dict[str, Path]:
    """The done job's stems: the input's own folder's, else the job's (a copy's
    original); 500 when neither is in the outbox."""
    files = ctx.stem_files(job, own_folder) or ctx.stem_files(job)
    if not files:
        raise HTTPException(
            500, f"job {job.id} is done but its stems are not in the outbox ({job.output_dir!r})"
        )
    return files


def answer_size(ctx: Context, files: dict[str, Path], fmt: str) -> int:
    """About how many bytes of base64 these stems take in `fmt`, known before any is
    read: their files' sizes when they are sent as they are, else 16-bit PCM (wav,
    and flac at most) or 320 kbps (mp3) for the duration the manifest records."""
    if as_is(ctx, fmt):
        raw = sum(path.stat().st_size for path in files.values())
    else:
        first = next(iter(files.values()))
        manifest = read_manifest(first.parent) or {}
        seconds = float(manifest.get("duration_seconds") or 0.0)
        if seconds <= 0:  # a manifest without it (edited, or foreign): ask the file
            seconds = probe(first).duration or 0.0
        rate = int(manifest.get("samplerate") or 44100)
        per_second = MP3_BYTES_PER_S if fmt == "mp3" else rate * 2 * 2  # stereo, s16
        raw = int(seconds * per_second) * len(files)
    return raw * 4 // 3


def as_is(ctx: Context, fmt: str) -> bool:
    """The outbox's files are sent as they are: the format asked for (mp3 at 320 kbps)."""
    output = ctx.config.output
    return output.format == fmt and (fmt != "mp3" or output.mp3_bitrate == 320)


async def read_body(request: Request, cap: int) -> bytes:
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > cap:
        raise HTTPException(413, f"{length} bytes is over http.max_predict_body ({cap} bytes)")
    parts: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > cap:
                raise HTTPException(413, f"the body is over http.max_predict_body ({cap} bytes)")
            parts.append(chunk)
    except ClientDisconnect:
        raise client_gone(f"{request.url.path} request", size) from None
    return b"".join(parts)


def parse_body(body: bytes) -> tuple[list[bytes], str, Choices, str | None]:
    """The instances' files, the answer's format, the jobs' choices and the
    callback URL (unchecked), or a 400 naming what is wrong."""
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise HTTPException(400, f"the body is not JSON: {err}") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("instances"), list):
        raise HTTPException(400, 'expected {"instances": [{"b64": "<base64 audio>"}, ...]}')
    instances = payload["instances"]
    if not instances:
        raise HTTPException(400, "instances is empty: send at least one file")
    files: list[bytes] = []
    for index, instance in enumerate(instances):
        b64 = instance.get("b64") if isinstance(instance, dict) else None
        if not isinstance(b64, str):
            raise HTTPException(400, f'instances[{index}]: expected {{"b64": "<base64 audio>"}}')
        try:
            files.append(base64.b64decode(b64, validate=True))
        except (binascii.Error, ValueError) as err:
            raise HTTPException(400, f"instances[{index}].b64 is not valid base64: {err}") from None
    parameters = payload.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise HTTPException(400, 'parameters must be an object, e.g. {"format": "wav"}')
    fmt = parameters.get("format", DEFAULT_FORMAT)
    if fmt not in FORMATS:
        raise HTTPException(400, f"parameters.format {fmt!r}: use one of {list(FORMATS)}")
    callback = parameters.get("callback_url")
    if callback is not None and not isinstance(callback, str):
        raise HTTPException(422, "parameters.callback_url must be a string: an http(s) URL")
    # `format` is the answer's (the seed's meaning); the other per-job keys choose
    # how the job's stems are rendered (stemd.choices)
    rest = {k: v for k, v in parameters.items() if k not in ("format", "callback_url")}
    try:
        choices = choices_from_json(rest)
    except ChoiceError as err:
        raise HTTPException(400, f"parameters.{err}") from None
    return files, str(fmt), choices, callback


def _name(data: bytes) -> str:
    """Uploads without a name are published as `uploads/predict-<hash>`."""
    return f"predict-{hashlib.sha256(data).hexdigest()[:12]}"


async def wait_for(ctx: Context, input_ids: list[int]) -> list[JobRecord]:
    """Until the job of every input is done (failed: 422 when the file was at
    fault, else 500, with its reason), without holding the server: past
    http.predict_timeout, 504 with the ids to poll. Each poll asks for the
    input's job anew: new output settings can merge a queued job into the one
    the same content has under them."""
    deadline = time.monotonic() + ctx.config.http.predict_timeout
    while True:
        # the ledger off the event loop: a database that hangs holds this request,
        # never the server (every other request, /ping, the page)
        jobs = await run_in_threadpool(lambda: [ctx.job_of_input(i) for i in input_ids])
        job_ids = [job.id for job in jobs]
        failed = [job for job in jobs if job.state is JobState.FAILED]
        if failed:
            job = failed[0]
            # the file's own fault (corrupt, too long, not audio once decoded) is the
            # request's: 422 as for a file refused on arrival; 500 stays for stemd's
            status = 422 if job.fault is Fault.INPUT else 500
            raise HTTPException(
                status,
                f"separating {job.source} failed: {job.error}; see {API}/jobs/{job.id}",
            )
        if all(job.state is JobState.DONE for job in jobs):
            return jobs
        if ctx.daemon.stopping:
            raise unavailable(f"stemd is stopping; the job(s) {job_ids} stay queued: poll them")
        if time.monotonic() >= deadline:
            raise HTTPException(
                504,
                {
                    "error": f"not done within http.predict_timeout "
                    f"({ctx.config.http.predict_timeout:g}s); the jobs continue",
                    "jobs": job_ids,
                    "poll": [f"{API}/jobs/{job_id}" for job_id in job_ids],
                },
            )
        await asyncio.sleep(WAIT_POLL_S)


def answer_files(
    ctx: Context, job_id: int, files: dict[str, Path], fmt: str, scratch: Path
) -> list[tuple[str, BinaryIO]]:
    """(stem name, its file open for reading) in `fmt`: the published file itself
    when the outbox holds that format (mp3: at 320 kbps), else a transcode into
    `scratch`. Every file is open before the answer starts: it cannot fail half sent."""
    unchanged = as_is(ctx, fmt)
    scratch.mkdir(exist_ok=True)  # one per instance: two of the same job do not collide
    opened: list[tuple[str, BinaryIO]] = []
    try:
        for stem, path in files.items():
            stem_file = os.fdopen(open_stem(path, ctx.config.outbox), "rb")  # never a link
            if unchanged:
                opened.append((stem, stem_file))
                continue
            with stem_file:
                # ffmpeg opens by name: it reads a copy made from the checked file
                source = scratch / f"job{job_id}-source-{stem}{path.suffix}"
                with open(source, "wb") as copy:
                    shutil.copyfileobj(stem_file, copy, 1 << 20)
            target = scratch / f"job{job_id}-{stem}.{fmt}"
            transcode(source, target, answer_format(fmt))
            source.unlink()
            opened.append((stem, open(target, "rb")))  # noqa: SIM115 - json_answer closes it
    except BaseException:
        for _stem, handle in opened:
            handle.close()
        raise
    return opened


def json_answer(answers: list[list[tuple[str, BinaryIO]]]) -> Iterator[bytes]:
    """The seed's JSON, `{"stem": "<base64>", ...}` for one instance or
    `{"predictions": [...]}` for several, made as it is sent: a block of each file
    (a multiple of 3 bytes, so the base64 pieces join) at a time. AnswerResponse
    closes the files."""
    several = len(answers) > 1
    if several:
        yield b'{"predictions": ['
    for index, stems in enumerate(answers):
        yield b", {" if index else b"{"
        for position, (stem, handle) in enumerate(stems):
            yield (", " if position else "").encode() + json.dumps(stem).encode() + b': "'
            while block := handle.read(ANSWER_BLOCK):
                yield base64.b64encode(block)
            yield b'"'
        yield b"}"
    if several:
        yield b"]}"
