"""What an input says about itself: duration, channels, rate, codec.

sphn (symphonia) reads the header in-process, in microseconds; what it cannot
read goes to ffprobe, a subprocess that costs tens of milliseconds per file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import sphn

from stemd.audio.children import PROBE_TIMEOUT_S, ffmpeg_input, run_on_input
from stemd.errors import InputError

STREAMED_SIZE = b"\xff\xff\xff\xff"  # a WAV written to a pipe: the length is unknown


# a codec (ffprobe's codec_name) -> the extension files of it usually have
CODEC_EXTENSIONS = {
    "mp3": "mp3",
    "mp2": "mp2",
    "flac": "flac",
    "aac": "m4a",
    "alac": "m4a",
    "vorbis": "ogg",
    "opus": "opus",
    "wmav1": "wma",
    "wmav2": "wma",
    "ac3": "ac3",
    "eac3": "eac3",
}


@dataclass(frozen=True)
class Probe:
    duration: float | None  # seconds; None if the container does not say
    channels: int
    samplerate: int
    codec: str = ""
    bit_rate: int | None = None  # bits per second, as the container or stream states it

    @property
    def extension(self) -> str:
        """The file extension its audio usually comes under (`mp3`, `flac`, `m4a`),
        for a file that came without a name; `audio` for a codec not listed."""
        if self.codec.startswith("pcm_"):
            return "aiff" if self.codec.endswith("be") else "wav"
        return CODEC_EXTENSIONS.get(self.codec, "audio")

    @property
    def exact_duration(self) -> bool:
        """The header states the length exactly (FLAC's sample count, WAV's data
        size), so less audio than that means the file was cut short. mp3 and
        friends only estimate it."""
        return self.codec in ("flac", "alac") or self.codec.startswith("pcm_")


def container_codec(path: Path) -> str | None:
    """The codec family when the header states the exact length (flac, pcm_wav),
    "" when it only estimates it, None for a WAV written to a pipe, whose header
    claims the largest size it can (hours of audio)."""
    with open(path, "rb") as handle:
        head = handle.read(12)
    if head.startswith(b"fLaC"):
        return "flac"
    if head[:4] in (b"RIFF", b"RF64") and head[8:12] == b"WAVE":
        return None if head[4:8] == STREAMED_SIZE else "pcm_wav"
    return ""


def _probe_sphn(path: Path) -> Probe | None:
    """The header as sphn reads it, in-process; None if it cannot."""
    try:
        codec = container_codec(path)
        if codec is None:
            return None
        reader = sphn.FileReader(str(path))
        info = Probe(
            duration=float(reader.duration_sec),
            channels=int(reader.channels),
            samplerate=int(reader.sample_rate),
            codec=codec,
        )
    except Exception:  # sphn raises plain exceptions for anything it cannot read
        return None
    return info if info.channels > 0 and info.samplerate > 0 else None


def probe(path: Path) -> Probe:
    """Duration, channels and rate of the first audio stream."""
    return _probe_sphn(path) or probe_ffprobe(path)


def probe_ffprobe(path: Path) -> Probe:
    command = [
        "ffprobe",  # has no -nostdin; the child's stdin is /dev/null
        "-v",
        "error",
        "-protocol_whitelist",
        "file",
        "-select_streams",
        "a:0",
        "-show_entries",
        "stream=codec_name,channels,sample_rate,duration,bit_rate:format=duration,bit_rate",
        "-of",
        "json",
        ffmpeg_input(path),
    ]
    output = run_on_input(command, PROBE_TIMEOUT_S, path, "not a readable audio file").stdout
    info = json.loads(output or b"{}")
    streams = info.get("streams") or []
    if not streams:
        raise InputError(path, "no audio stream in this file")
    stream = streams[0]
    container = info.get("format", {})
    return Probe(
        duration=_number(stream.get("duration") or container.get("duration")),
        channels=int(stream.get("channels") or 0),
        samplerate=int(stream.get("sample_rate") or 0),
        codec=str(stream.get("codec_name") or ""),
        bit_rate=_int(stream.get("bit_rate") or container.get("bit_rate")),
    )


def _number(text: object) -> float | None:
    try:
        return float(text) if text not in (None, "N/A") else None  # type: ignore[arg-type]
    except ValueError:
        return None


def _int(text: object) -> int | None:
    value = _number(text)
    return int(value) if value else None
