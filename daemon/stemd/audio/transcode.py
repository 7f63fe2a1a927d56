"""One finished stem file into another format, for answers that ask for one
(the seed's /predict answers mp3 at 320 kbps whatever the outbox holds)."""

from __future__ import annotations

from pathlib import Path

from stemd.audio.decoding import decode
from stemd.audio.encoding import StemFormat, encode
from stemd.audio.probe import probe

MP3_320 = StemFormat(format="mp3", sample_format="s16", mp3_bitrate=320, clip="none")


def answer_format(name: str) -> StemFormat:
    """wav, flac or mp3 as an answer carries it: 16-bit, mp3 at 320 kbps, samples
    as they are (the stem was clipped once, when it was written)."""
    return StemFormat(format=name, sample_format="s16", mp3_bitrate=320, clip="none")


def transcode(source: Path, target: Path, fmt: StemFormat) -> None:
    """Decode `source` whole (a stem: one track's length, in memory once) and write
    it to `target` in `fmt`, at the source's own rate and channels."""
    info = probe(source)
    wav = decode(source, info.samplerate, info.channels, info)
    encode(wav, target, info.samplerate, fmt)
