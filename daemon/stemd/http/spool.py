"""Uploads onto local disk as they stream in: never whole in memory.

Each upload is written to `state_dir/uploads/<token>.part`, hashed on the way,
and cut off with `TooLarge` the moment it passes the limit. Whatever goes wrong
(too large, a malformed body, a client that hangs up) the part file is removed;
only a complete upload is renamed to its final spool name, which the ledger
then records as the input's path.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, BinaryIO

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool

from stemd.outbox import safe_component

if TYPE_CHECKING:  # a TypedDict the library declares for type checkers only
    from python_multipart.multipart import MultipartCallbacks

UPLOADS_DIR = "uploads"  # inside state_dir; also the outbox folder uploads publish into
PART_SUFFIX = ".part"
NAMELESS = "upload"
FIELD_MAX = 8192  # bytes of one form field beside the file (callback_url, choices)
FIELDS_MAX = 32  # form fields beside the file


class UploadRejected(Exception):
    """A request body stemd will not take; `status` is the HTTP answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class TooLarge(UploadRejected):
    def __init__(self, limit: int, what: str = "the upload") -> None:
        super().__init__(
            413, f"{what} is over the limit of {limit} bytes (http.max_upload); nothing was kept"
        )


@dataclass(frozen=True)
class Spooled:
    """A complete upload on disk: its spool path, the client's name made safe,
    its size and content hash."""

    path: Path
    name: str
    size: int
    sha256: str
    # a multipart form's other fields (name -> text), e.g. callback_url
    fields: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def relative(self) -> str:
        """Where the ledger and the outbox layout see it: `uploads/<name>`."""
        return f"{UPLOADS_DIR}/{self.name}"

    @property
    def nameless(self) -> bool:
        """The client gave no usable name (`?filename=` left out, or `..`)."""
        return self.name == NAMELESS

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)

    def named(self, extension: str) -> Spooled:
        """A nameless upload under a name of its own, `upload-<hash>.<extension>`,
        so its outbox folder and stems are told apart from other nameless ones
        and say what the file was."""
        name = f"{NAMELESS}-{self.sha256[:12]}.{extension}"
        path = self.path.with_name(self.path.name.split(".", 1)[0] + "." + extension)
        os.replace(self.path, path)
        return Spooled(path, name, self.size, self.sha256)


def safe_upload_name(client_name: str | None) -> str:
    """A client's file name as one safe component: its last path part only (no
    `/`, `\\` or `..` can lead anywhere), control characters and NUL replaced,
    at most 255 bytes (the extension kept)."""
    if not client_name:
        return NAMELESS
    last = client_name.replace("\\", "/").replace("\0", "_").rsplit("/", 1)[-1]
    if last in ("", ".", ".."):
        return NAMELESS
    stem, dot, ext = last.rpartition(".")
    if dot and stem and 0 < len(ext) <= 10 and ext.isalnum():
        room = 255 - len(ext.encode()) - 1
        head = stem.encode("utf-8", errors="surrogateescape")[:room]
        return safe_component(head.decode("utf-8", errors="ignore") + "." + ext)
    return safe_component(last)


class Spool:
    """The uploads folder under state_dir."""

    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir / UPLOADS_DIR

    def tidy(self, in_use: set[Path]) -> int:
        """At start: remove what no input needs any more. Part files a crash cut
        off, answers half made, uploads whose failure was dismissed. Returns how
        many entries went."""
        removed = 0
        if self.root.is_dir():
            for entry in self.root.iterdir():
                if entry in in_use:
                    continue
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
                removed += 1
        return removed

    def new_part(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        return self.root / f"{uuid.uuid4().hex}{PART_SUFFIX}"

    def complete(
        self,
        part: Path,
        client_name: str | None,
        size: int,
        digest: str,
        fields: dict[str, str] | None = None,
    ) -> Spooled:
        name = safe_upload_name(client_name)
        suffix = PurePosixPath(name).suffix if "." in name else ""
        final = part.with_name(part.name.removesuffix(PART_SUFFIX) + suffix)
        os.replace(part, final)
        return Spooled(final, name, size, digest, fields or {})

    async def from_stream(
        self, chunks: AsyncIterator[bytes], client_name: str | None, limit: int
    ) -> Spooled:
        """A raw request body (`POST /jobs?filename=`)."""
        part = self.new_part()
        try:
            size, digest = await _write_limited(chunks, part, limit)
            return self.complete(part, client_name, size, digest)
        except BaseException:
            part.unlink(missing_ok=True)
            raise

    async def from_multipart(
        self, chunks: AsyncIterator[bytes], content_type: str, limit: int
    ) -> Spooled:
        """The form field `file` of a multipart/form-data body, parsed as it
        arrives; other fields (up to FIELDS_MAX of FIELD_MAX bytes each) are kept
        as text in `Spooled.fields`; other files are read past."""
        _kind, options = parse_options_header(content_type)
        boundary = options.get(b"boundary")
        if not boundary:
            raise UploadRejected(400, "multipart/form-data without a boundary")
        part = self.new_part()
        try:
            with open(part, "wb") as sink:
                reader = _FileField(sink, limit)
                parser = MultipartParser(boundary, reader.callbacks())
                try:
                    async for chunk in chunks:
                        parser.write(chunk)
                        if reader.error is not None:
                            raise reader.error
                    parser.finalize()
                except MultipartParseError as err:
                    raise UploadRejected(
                        400, f"the multipart/form-data body is malformed ({err}); nothing was kept"
                    ) from None
                if reader.error is not None:
                    raise reader.error
                if not reader.found:
                    raise UploadRejected(
                        422, "no form field named 'file'; send the audio as -F file=@PATH"
                    )
                await run_in_threadpool(_sync, sink)
            return self.complete(
                part, reader.filename, reader.size, reader.hash.hexdigest(), reader.fields()
            )
        except BaseException:
            part.unlink(missing_ok=True)
            raise

    def from_bytes(self, data: bytes, client_name: str | None) -> Spooled:
        """A file the request held in memory (`/predict`'s base64)."""
        part = self.new_part()
        try:
            with open(part, "wb") as sink:
                sink.write(data)
                sink.flush()
                os.fsync(sink.fileno())
            return self.complete(part, client_name, len(data), hashlib.sha256(data).hexdigest())
        except BaseException:
            part.unlink(missing_ok=True)
            raise


async def _write_limited(chunks: AsyncIterator[bytes], part: Path, limit: int) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with open(part, "wb") as sink:
        # Writes go straight to local disk from the event loop: a 64 KiB chunk
        # takes microseconds, less than handing it to a thread would. The fsync
        # at the end waits for the disk (seconds for 2 GiB): a pool thread's.
        async for chunk in chunks:
            size += len(chunk)
            if size > limit:
                raise TooLarge(limit)
            digest.update(chunk)
            sink.write(chunk)
        await run_in_threadpool(_sync, sink)
    return size, digest.hexdigest()


def _sync(sink: BinaryIO) -> None:
    sink.flush()
    os.fsync(sink.fileno())


class _FileField:
    """MultipartParser callbacks that write the part named `file` to `sink`."""

    def __init__(self, sink: BinaryIO, limit: int) -> None:
        self.sink = sink
        self.limit = limit
        self.size = 0
        self.hash = hashlib.sha256()
        self.found = False
        self.filename: str | None = None
        self.error: UploadRejected | None = None
        self._header_name = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._in_file = False
        self._field: bytes | None = None  # the name of the text field being read
        self._texts: dict[bytes, bytearray] = {}

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value_data,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _part_begin(self) -> None:
        self._headers = {}
        self._in_file = False
        self._field = None

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header_name.strip().lower()] = self._header_value.strip()
        self._header_name = self._header_value = b""

    def _headers_finished(self) -> None:
        _disposition, options = parse_options_header(self._headers.get(b"content-disposition"))
        name = options.get(b"name")
        if name == b"file" and not self.found:
            self.found = self._in_file = True
            raw = options.get(b"filename")
            self.filename = raw.decode("utf-8", errors="replace") if raw is not None else None
        elif name and b"filename" not in options and name != b"file":
            if name in self._texts:  # which one would count? say so instead of choosing
                text = name.decode("utf-8", errors="replace")
                self.error = UploadRejected(422, f"{text}: sent twice; send each field once")
                return
            if len(self._texts) >= FIELDS_MAX:
                self.error = UploadRejected(422, f"more than {FIELDS_MAX} form fields")
                return
            self._field = name
            self._texts[name] = bytearray()

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._field is not None and self.error is None:
            text = self._texts[self._field]
            text += data[start:end]
            if len(text) > FIELD_MAX:
                name = self._field.decode("utf-8", errors="replace")
                self.error = UploadRejected(
                    422, f"form field {name!r} is over {FIELD_MAX} bytes; it is not a file"
                )
            return
        if not self._in_file or self.error is not None:
            return
        self.size += end - start
        if self.size > self.limit:
            self.error = TooLarge(self.limit)
            return
        chunk = data[start:end]
        self.hash.update(chunk)
        self.sink.write(chunk)

    def _part_end(self) -> None:
        self._in_file = False
        self._field = None

    def fields(self) -> dict[str, str]:
        """The text fields beside the file, as text (invalid UTF-8 replaced)."""
        return {
            name.decode("utf-8", errors="replace"): bytes(value).decode("utf-8", errors="replace")
            for name, value in self._texts.items()
        }
