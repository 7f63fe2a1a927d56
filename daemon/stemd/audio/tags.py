"""The source's tags and cover art, read once and written on every stem.

Read from whatever the source carries (ID3 in mp3, WAV and AIFF; Vorbis comments
and pictures in FLAC, Ogg and Opus; iTunes atoms in m4a), kept as plain fields,
and written in each stem's own way: ID3 on mp3, Vorbis comments and a picture
block on FLAC, and on WAV both a RIFF INFO list and an ID3 chunk, since players
differ in which they read. The title is marked by stem (`Song (vocals)`) and the
stem has a tag of its own (ID3 TXXX:STEM, Vorbis STEM). A file without tags
gives stems without them; tags that cannot be read are a warning, never a reason
not to separate.
"""

from __future__ import annotations

import base64
import logging
import struct
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import mutagen
from mutagen.flac import FLAC, Picture
from mutagen.id3 import APIC, ID3, TALB, TCON, TDRC, TIT2, TPE1, TPE2, TPOS, TRCK, TXXX
from mutagen.mp4 import MP4, MP4Cover
from mutagen.wave import WAVE

log = logging.getLogger("stemd")

COVER_MAX = 16 * 1024**2  # a larger embedded picture is left behind (with a warning)
FRONT_COVER = 3  # the picture type of ID3 APIC and FLAC blocks
STEM_TAG = "STEM"


@dataclass(frozen=True)
class Tags:
    title: str | None = None
    artist: str | None = None
    album: str | None = None
    album_artist: str | None = None
    track: str | None = None  # "3" or "3/12"
    disc: str | None = None
    date: str | None = None
    genre: str | None = None
    cover: bytes | None = None
    cover_mime: str = "image/jpeg"

    @property
    def empty(self) -> bool:
        return not any(
            (
                self.title,
                self.artist,
                self.album,
                self.album_artist,
                self.track,
                self.disc,
                self.date,
                self.genre,
                self.cover,
            )
        )

    def for_stem(self, stem: str) -> Tags:
        return replace(self, title=f"{self.title} ({stem})") if self.title else self


def _first(values: Any) -> str | None:
    """The first non-empty text of a tag's values (a list, a frame, a string)."""
    if values is None:
        return None
    if hasattr(values, "text"):
        values = values.text
    if isinstance(values, str | int):
        values = [values]
    for value in values:
        text = str(value).strip()
        if text:
            return text
    return None


def _number(pair: Any) -> str | None:
    """An MP4 (number, total) pair as "3/12" (or "3")."""
    if not pair:
        return None
    number, total = [*pair[0], 0, 0][:2]
    if not number:
        return None
    return f"{number}/{total}" if total else str(number)


def _mime_of(data: bytes) -> str:
    return "image/png" if data.startswith(b"\x89PNG") else "image/jpeg"


def _front_cover(pictures: list[Any]) -> tuple[bytes | None, str]:
    """The front cover of ID3 APIC frames or FLAC picture blocks (else the
    first picture), and its MIME type."""
    if not pictures:
        return None, "image/jpeg"
    front = [p for p in pictures if p.type == FRONT_COVER] or pictures
    return front[0].data, front[0].mime or _mime_of(front[0].data)


# where each text field lives, by format (track and disc as "3/12" or "3")
ID3_FRAMES: dict[str, type[Any]] = {
    "title": TIT2,
    "artist": TPE1,
    "album": TALB,
    "album_artist": TPE2,
    "track": TRCK,
    "disc": TPOS,
    "date": TDRC,
    "genre": TCON,
}
VORBIS_NAMES = {  # track and disc are NUMBER and TOTAL pairs there
    "title": "TITLE",
    "artist": "ARTIST",
    "album": "ALBUM",
    "album_artist": "ALBUMARTIST",
    "date": "DATE",
    "genre": "GENRE",
}
MP4_ATOMS = {  # track and disc are (number, total) pairs there
    "title": "\xa9nam",
    "artist": "\xa9ART",
    "album": "\xa9alb",
    "album_artist": "aART",
    "date": "\xa9day",
    "genre": "\xa9gen",
}


def _tags(text: dict[str, str | None], cover: tuple[bytes | None, str]) -> Tags:
    return Tags(
        title=text.get("title"),
        artist=text.get("artist"),
        album=text.get("album"),
        album_artist=text.get("album_artist"),
        track=text.get("track"),
        disc=text.get("disc"),
        date=text.get("date"),
        genre=text.get("genre"),
        cover=cover[0],
        cover_mime=cover[1],
    )


def _from_id3(id3: Any) -> Tags:
    text = {field: _first(id3.get(frame.__name__)) for field, frame in ID3_FRAMES.items()}
    return _tags(text, _front_cover(id3.getall("APIC")))


def _vorbis_number(comments: Any, number: str, total: str) -> str | None:
    value = _first(comments.get(number))
    count = _first(comments.get(total))
    if value and count and "/" not in value:
        return f"{value}/{count}"
    return value


def _from_vorbis(comments: Any, pictures: list[Any]) -> Tags:
    if not pictures:  # Ogg keeps its pictures inside the comments, base64
        for encoded in comments.get("metadata_block_picture") or []:
            try:
                pictures.append(Picture(base64.b64decode(encoded)))
            except (ValueError, mutagen.MutagenError):
                continue
    text = {field: _first(comments.get(name.lower())) for field, name in VORBIS_NAMES.items()}
    text["album_artist"] = text["album_artist"] or _first(comments.get("album artist"))
    text["track"] = _vorbis_number(comments, "tracknumber", "tracktotal")
    text["disc"] = _vorbis_number(comments, "discnumber", "disctotal")
    return _tags(text, _front_cover(pictures))


def _from_mp4(tags: Any) -> Tags:
    text = {field: _first(tags.get(atom)) for field, atom in MP4_ATOMS.items()}
    text["track"] = _number(tags.get("trkn"))
    text["disc"] = _number(tags.get("disk"))
    cover: tuple[bytes | None, str] = (None, "image/jpeg")
    covers = tags.get("covr") or []
    if covers:
        png = covers[0].imageformat == MP4Cover.FORMAT_PNG
        cover = (bytes(covers[0]), "image/png" if png else "image/jpeg")
    return _tags(text, cover)


def read_tags(path: Path) -> Tags:
    """The source's tags; empty Tags when it has none. Unreadable tags are
    logged as a warning (the file is still separated)."""
    try:
        found = mutagen.File(path)
        if found is None or found.tags is None:
            tags = Tags()
        elif isinstance(found, MP4):
            tags = _from_mp4(found.tags)
        elif isinstance(found.tags, ID3):
            tags = _from_id3(found.tags)
        elif hasattr(found.tags, "get") and hasattr(found.tags, "keys"):
            pictures = list(getattr(found, "pictures", []) or [])
            tags = _from_vorbis(found.tags, pictures)
        else:
            tags = Tags()
    except Exception as err:  # mutagen raises many kinds for damaged tags
        log.warning("%s: its tags cannot be read (%s); the stems get none", path, err)
        return Tags()
    if tags.cover is not None and len(tags.cover) > COVER_MAX:
        log.warning(
            "%s: its cover art is %d MiB, over %d MiB; the stems get the other tags",
            path,
            len(tags.cover) // 1024**2,
            COVER_MAX // 1024**2,
        )
        tags = replace(tags, cover=None)
    return tags


# -- writing ------------------------------------------------------------------


def _id3_frames(tags: Tags, stem: str) -> ID3:
    id3 = ID3()
    for field, frame in ID3_FRAMES.items():
        value = getattr(tags, field)
        if value:
            id3.add(frame(encoding=3, text=[value]))
    id3.add(TXXX(encoding=3, desc=STEM_TAG, text=[stem]))
    if tags.cover:
        id3.add(
            APIC(encoding=3, mime=tags.cover_mime, type=FRONT_COVER, desc="Cover", data=tags.cover)
        )
    return id3


def _vorbis_fields(tags: Tags, stem: str) -> dict[str, str]:
    fields = {name: getattr(tags, field) for field, name in VORBIS_NAMES.items()}
    fields[STEM_TAG] = stem
    for name, value in (("TRACK", tags.track), ("DISC", tags.disc)):
        if value:
            number, _, total = value.partition("/")
            fields[f"{name}NUMBER"] = number
            if total:
                fields[f"{name}TOTAL"] = total
    return {key: value for key, value in fields.items() if value}


# RIFF INFO ids, as ffmpeg and most players map them
_INFO_IDS = (
    (b"INAM", "title"),
    (b"IART", "artist"),
    (b"IPRD", "album"),
    (b"ITRK", "track"),
    (b"ICRD", "date"),
    (b"IGNR", "genre"),
)


def _append_info_list(path: Path, tags: Tags) -> None:
    """A LIST/INFO chunk at the end of the WAV, and the RIFF size updated."""
    body = b"INFO"
    for chunk_id, field in _INFO_IDS:
        value = getattr(tags, field)
        if not value:
            continue
        text = value.encode("utf-8") + b"\0"
        body += chunk_id + struct.pack("<I", len(text)) + text + (b"\0" if len(text) % 2 else b"")
    if body == b"INFO":
        return
    with open(path, "r+b") as wav:
        wav.seek(0, 2)
        if wav.tell() % 2:  # chunks start on even offsets
            wav.write(b"\0")
        wav.write(b"LIST" + struct.pack("<I", len(body)) + body)
        riff_size = wav.tell() - 8
        wav.seek(4)
        wav.write(struct.pack("<I", riff_size))


def write_tags(path: Path, fmt: str, tags: Tags, stem: str) -> None:
    """The tags on one stem file (wav, flac or mp3); nothing for empty tags.
    Failing is a warning: the stem stays, untagged."""
    if tags.empty:
        return
    marked = tags.for_stem(stem)
    try:
        if fmt == "mp3":
            _id3_frames(marked, stem).save(path, v2_version=3)
        elif fmt == "flac":
            flac = FLAC(path)
            if flac.tags is None:
                flac.add_tags()
            for key, value in _vorbis_fields(marked, stem).items():
                flac[key] = value
            if marked.cover:
                picture = Picture()
                picture.type, picture.mime, picture.desc = FRONT_COVER, marked.cover_mime, "Cover"
                picture.data = marked.cover
                flac.add_picture(picture)
            flac.save()
        elif fmt == "wav":
            wave = WAVE(path)
            wave.add_tags()
            assert wave.tags is not None
            for frame in _id3_frames(marked, stem).values():
                wave.tags.add(frame)
            wave.save(v2_version=3)
            _append_info_list(path, marked)
    except (mutagen.MutagenError, OSError, ValueError) as err:
        log.warning("%s: cannot write the source's tags (%s); the stem has none", path, err)
