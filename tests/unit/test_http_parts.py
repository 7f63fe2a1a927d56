"""The HTTP server's parts that need no server: names, tokens, the spool, zips."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from stemd.errors import ConfigError
from stemd.http.api import zip_stream
from stemd.http.auth import authorized, new_token_file, read_token
from stemd.http.spool import Spool, TooLarge, UploadRejected, safe_upload_name


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("song.mp3", "song.mp3"),
        ("../../etc/passwd", "passwd"),
        ("C:\\music\\track.flac", "track.flac"),
        ("..", "upload"),
        ("a/..", "upload"),
        ("", "upload"),
        (None, "upload"),
        ("nul\0in.wav", "nul_in.wav"),
        (".hidden.wav", "_hidden.wav"),
        ("tab\there.wav", "tab_here.wav"),
    ],
)
def test_client_names_become_one_safe_component(given: str | None, stored: str) -> None:
    assert safe_upload_name(given) == stored


def test_a_long_name_is_cut_to_255_bytes_keeping_its_extension() -> None:
    name = safe_upload_name("é" * 200 + ".flac")
    assert len(name.encode()) <= 255 and name.endswith(".flac")
    assert safe_upload_name("x" * 300 + ".wav") == "x" * 251 + ".wav"


def test_tokens_as_bearer_or_basic_password(tmp_path: Path) -> None:
    path = tmp_path / "token"
    token = new_token_file(path)
    assert read_token(path) == token
    assert authorized(None, None)  # no token configured: open
    assert not authorized(token, None)
    assert authorized(token, f"Bearer {token}")
    assert not authorized(token, f"Bearer {token}x")
    basic = base64.b64encode(f"anyone:{token}".encode()).decode()
    assert authorized(token, f"Basic {basic}")
    assert not authorized(token, "Basic !!!")
    assert not authorized(token, f"Token {token}")


def test_a_missing_or_short_token_file_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"http.token_file: .* `stemd token new"):
        read_token(tmp_path / "nowhere")
    (tmp_path / "short").write_text("abc\n")
    with pytest.raises(ConfigError, match="at least 16"):
        read_token(tmp_path / "short")


async def _chunks(data: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def _multipart(fields: list[tuple[str, str | None, bytes]], boundary: str = "XyZ") -> bytes:
    body = b""
    for name, filename, content in fields:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        body += content + b"\r\n"
    return body + f"--{boundary}--\r\n".encode()


def test_multipart_spools_the_file_field_and_hashes_it(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    audio = bytes(range(256)) * 40
    body = _multipart([("note", None, b"hello"), ("file", "../x/song.wav", audio)])
    spooled = asyncio.run(
        spool.from_multipart(_chunks(body), "multipart/form-data; boundary=XyZ", 1 << 20)
    )
    assert spooled.name == "song.wav" and spooled.relative == "uploads/song.wav"
    assert spooled.path.read_bytes() == audio
    assert spooled.sha256 == hashlib.sha256(audio).hexdigest()
    assert spooled.path.parent == tmp_path / "uploads"
    assert spooled.fields == {"note": "hello"}


def test_the_text_fields_beside_the_file_are_kept_before_or_after_it(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    url = "http://127.0.0.1:9000/done?token=abc"
    body = _multipart(
        [("a", None, b"1"), ("file", "s.wav", b"RIFF" * 50), ("callback_url", None, url.encode())]
    )
    spooled = asyncio.run(
        spool.from_multipart(_chunks(body, 7), "multipart/form-data; boundary=XyZ", 1 << 20)
    )
    assert spooled.fields == {"a": "1", "callback_url": url}
    assert spooled.path.read_bytes() == b"RIFF" * 50
    huge = _multipart([("callback_url", None, b"x" * 9000), ("file", "s.wav", b"RIFF")])
    with pytest.raises(UploadRejected, match="form field 'callback_url' is over 8192 bytes"):
        asyncio.run(spool.from_multipart(_chunks(huge), "multipart/form-data; boundary=XyZ", 4000))
    twice = _multipart(
        [("format", None, b"mp3"), ("format", None, b"flac"), ("file", "s.wav", b"")]
    )
    with pytest.raises(UploadRejected, match="format: sent twice"):
        asyncio.run(spool.from_multipart(_chunks(twice), "multipart/form-data; boundary=XyZ", 4000))
    many = _multipart([(f"f{i}", None, b"1") for i in range(40)] + [("file", "s.wav", b"RIFF")])
    with pytest.raises(UploadRejected, match="more than 32 form fields"):
        asyncio.run(spool.from_multipart(_chunks(many), "multipart/form-data; boundary=XyZ", 4000))
    assert [p.name for p in (tmp_path / "uploads").iterdir()] == [spooled.path.name]


def test_refused_bodies_leave_no_part_file(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    big = _multipart([("file", "big.wav", b"\0" * 5000)])
    with pytest.raises(TooLarge):
        asyncio.run(spool.from_multipart(_chunks(big), "multipart/form-data; boundary=XyZ", 4000))
    with pytest.raises(TooLarge):
        asyncio.run(spool.from_stream(_chunks(b"\0" * 5000), "big.wav", 4000))
    no_file = _multipart([("other", "x.wav", b"abc")])
    with pytest.raises(UploadRejected, match="no form field named 'file'"):
        asyncio.run(
            spool.from_multipart(_chunks(no_file), "multipart/form-data; boundary=XyZ", 4000)
        )

    # a part whose headers are not headers (schemathesis found it answered 500): 400
    garbled = b"--XyZ\r\nFalse--XyZ--\r\n"
    with pytest.raises(UploadRejected, match="malformed") as refused:
        asyncio.run(
            spool.from_multipart(_chunks(garbled), "multipart/form-data; boundary=XyZ", 4000)
        )
    assert refused.value.status == 400

    async def hangs_up() -> AsyncIterator[bytes]:
        yield b"RIFF"
        raise ConnectionResetError("the client went away")

    with pytest.raises(ConnectionResetError):
        asyncio.run(spool.from_stream(hangs_up(), "gone.wav", 4000))
    assert list((tmp_path / "uploads").iterdir()) == []


def test_tidy_keeps_only_the_uploads_a_job_may_read(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    part = spool.new_part()
    part.write_bytes(b"half")
    kept = spool.from_bytes(b"whole", "kept.wav")
    dismissed = spool.from_bytes(b"old", "old.wav")
    (spool.root / "answer-x").mkdir()
    assert spool.tidy({kept.path}) == 3
    assert not part.exists() and not dismissed.path.exists()
    assert [p.name for p in spool.root.iterdir()] == [kept.path.name]


def test_the_zip_stream_is_a_valid_stored_zip(tmp_path: Path) -> None:
    files = {}
    for name, size in (("drums.wav", 3_000_000), ("bass.wav", 10)):
        files[name] = tmp_path / name
        files[name].write_bytes(bytes(range(256)) * (size // 256) + b"end")
    chunks = list(zip_stream(files, tmp_path, block=1 << 16))
    assert len(chunks) > 10  # sent as it is made, not at the end
    with zipfile.ZipFile(io.BytesIO(b"".join(chunks))) as archive:
        assert archive.namelist() == ["drums.wav", "bass.wav"]
        for name, path in files.items():
            assert archive.read(name) == path.read_bytes()
            assert archive.getinfo(name).compress_type == zipfile.ZIP_STORED


def test_the_zip_stream_reads_no_file_outside_the_outbox(tmp_path: Path) -> None:
    outbox, outside = tmp_path / "outbox", tmp_path / "secret.wav"
    outbox.mkdir()
    outside.write_bytes(b"secret")
    (outbox / "vocals.wav").symlink_to(outside)
    with pytest.raises(OSError):
        list(zip_stream({"vocals.wav": outbox / "vocals.wav"}, outbox))
