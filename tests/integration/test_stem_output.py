"""The stems people keep: at their project's rate, tagged like their source,
only the ones they asked for. Each case renders a real file through the real
engine (demucs_unittest), resampler, encoders and tag writers, and reads the
result back with ffprobe and with mutagen."""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mutagen
import pytest

from stemd.config import Config
from stemd.manifest import read_manifest
from stemd.outbox import Outbox
from stemd.profile import profile_key, profile_params
from stemd.separation.engine import Engine
from stemd.separation.workfiles import WorkArea
from stemd.track import RenderRequest, render_track
from support.audio import make_tone, probe
from support.daemon import stemd, write_config

SOURCE_TAGS = {
    "title": "Song",
    "artist": "Artist",
    "album": "Album",
    "album_artist": "Band",
    "track": "3/12",
    "disc": "1/2",
    "date": "2019",
    "genre": "House",
}


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    yield Engine(Config.model_validate({"model": {"name": "demucs_unittest"}}).model, "cpu")


def render(root: Path, engine: Engine, source: Path, **output: Any) -> tuple[Path, dict[str, Any]]:
    """The sealed folder of `source`'s stems under `output` settings, and its manifest."""
    config = Config.model_validate(
        {
            "inbox": str(root / "in"),
            "outbox": str(root / "out"),
            "state_dir": str(root / "state"),
            "model": {"name": "demucs_unittest"},
            "output": output,
        }
    )
    params = profile_params(config, engine.info)
    request = RenderRequest(source, source.name, "0" * 64, profile_key(params), params, "job1")
    config.outbox.mkdir(parents=True, exist_ok=True)  # the daemon makes it at start
    outbox = Outbox(config.outbox, config.output)
    rendered = render_track(engine, outbox, config, request, WorkArea(config.state_dir))
    manifest = read_manifest(rendered.temp)
    assert manifest is not None
    return rendered.temp, manifest


def test_stems_come_back_at_the_sources_rate_or_a_fixed_one_for_as_long(
    tmp_path: Path, engine: Engine
) -> None:
    for rate, codec in ((48000, ()), (96000, ("-c:a", "flac"))):
        ext = "flac" if codec else "wav"
        source = make_tone(tmp_path / f"at{rate}.{ext}", 2.5, rate=rate, codec_args=codec)
        folder, manifest = render(
            tmp_path / f"r{rate}", engine, source, sample_rate="source", format=ext
        )
        assert manifest["samplerate"] == rate and manifest["model_samplerate"] == 44100
        for stem in manifest["stems"].values():
            info = probe(folder / stem)
            assert info["sample_rate"] == str(rate) and info["channels"] == "2", stem
            assert abs(float(info["duration"]) - 2.5) < 0.01, (stem, info["duration"])
    low = make_tone(tmp_path / "low.wav", 2.0, rate=22050)
    folder, manifest = render(tmp_path / "fixed", engine, low, sample_rate=48000)
    info = probe(folder / manifest["stems"]["vocals"])
    assert (info["sample_rate"], manifest["samplerate"]) == ("48000", 48000)
    assert abs(float(info["duration"]) - 2.0) < 0.01
    # mp3 cannot be 96 kHz: the nearest rate it can be
    high = tmp_path / "at96000.flac"
    folder, manifest = render(tmp_path / "mp3", engine, high, sample_rate="source", format="mp3")
    assert probe(folder / manifest["stems"]["drums"])["sample_rate"] == "48000"


def tagged_source(folder: Path, ext: str) -> Path:
    """A 1 s source with every tag the issue lists and a front cover, as ffmpeg
    writes them into mp3 (ID3), FLAC (Vorbis comments, picture) and m4a (iTunes)."""
    folder.mkdir(parents=True, exist_ok=True)
    tone = make_tone(folder / "tone.wav", 1.0)
    cover = folder / "cover.png"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "color=c=red:s=32x32",
         "-frames:v", "1", str(cover)],
        check=True,
        timeout=60,
    )  # fmt: skip
    metadata = [
        arg for key, value in SOURCE_TAGS.items() for arg in ("-metadata", f"{key}={value}")
    ]
    audio = {"mp3": ["-c:a", "libmp3lame"], "flac": ["-c:a", "flac"], "m4a": ["-c:a", "aac"]}[ext]
    source = folder / f"song.{ext}"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-i", str(tone), "-i", str(cover), "-map", "0", "-map",
         "1", *audio, "-c:v", "png", "-disposition:v", "attached_pic", *metadata, str(source)],
        check=True,
        timeout=60,
    )  # fmt: skip
    return source


def ffprobe_tags(path: Path) -> tuple[dict[str, str], list[str]]:
    """The container's tags (keys lower-cased) and the kinds of its streams."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format_tags:stream=codec_type,codec_name",
         "-of", "json", str(path)],
        check=True,
        capture_output=True,
        timeout=60,
    ).stdout  # fmt: skip
    data = json.loads(out)
    tags = {k.lower(): v for k, v in (data["format"].get("tags") or {}).items()}
    return tags, [f"{s['codec_type']}:{s['codec_name']}" for s in data["streams"]]


def mutagen_view(path: Path) -> dict[str, Any]:
    """The tags as mutagen reads them, in one vocabulary across formats."""
    found: Any = mutagen.File(path)
    tags = found.tags
    if hasattr(tags, "getall"):  # ID3: mp3, and the id3 chunk of a WAV

        def text(frame: str) -> str | None:
            return str(tags[frame].text[0]) if frame in tags else None

        stem = tags.getall("TXXX:STEM")
        return {
            "title": text("TIT2"), "artist": text("TPE1"), "album": text("TALB"),
            "album_artist": text("TPE2"), "track": text("TRCK"), "disc": text("TPOS"),
            "date": text("TDRC"), "genre": text("TCON"),
            "stem": str(stem[0].text[0]) if stem else None,
            "cover": bool(tags.getall("APIC")) and tags.getall("APIC")[0].data[:4] == b"\x89PNG",
        }  # fmt: skip
    vorbis = {key.lower(): values[0] for key, values in tags.as_dict().items()}
    return {
        "title": vorbis.get("title"), "artist": vorbis.get("artist"),
        "album": vorbis.get("album"), "album_artist": vorbis.get("albumartist"),
        "track": f"{vorbis.get('tracknumber')}/{vorbis.get('tracktotal')}",
        "disc": f"{vorbis.get('discnumber')}/{vorbis.get('disctotal')}",
        "date": vorbis.get("date"), "genre": vorbis.get("genre"), "stem": vorbis.get("stem"),
        "cover": bool(found.pictures) and found.pictures[0].data[:4] == b"\x89PNG",
    }  # fmt: skip


@pytest.mark.parametrize("source_ext", ["mp3", "flac", "m4a"])
def test_every_stem_carries_the_sources_tags_and_cover_with_its_stem_marked(
    tmp_path: Path, engine: Engine, source_ext: str
) -> None:
    source = tagged_source(tmp_path / "src", source_ext)
    for fmt in ("wav", "flac", "mp3"):
        folder, manifest = render(
            tmp_path / fmt, engine, source, format=fmt, stems=["vocals", "drums"]
        )
        assert manifest["tags"] == "copied"
        for stem, name in manifest["stems"].items():
            path = folder / name
            expected = {**SOURCE_TAGS, "title": f"Song ({stem})", "stem": stem, "cover": True}
            assert mutagen_view(path) == expected, (fmt, stem)
            tags, streams = ffprobe_tags(path)
            # ffprobe prefers a WAV's RIFF INFO list to its ID3 chunk (and
            # discards the ID3 text then): INFO has no album artist, disc or stem
            shown = ["title", "artist", "album", "date", "genre", "track"]
            if fmt != "wav":
                shown += ["album_artist", "disc", "stem"]
            got = {key: tags.get(key) for key in shown}
            if fmt == "flac":  # Vorbis comments keep the totals apart
                got["track"] = f"{tags.get('track')}/{tags.get('tracktotal')}"
                got["disc"] = f"{tags.get('disc')}/{tags.get('disctotal')}"
            assert got == {key: expected[key] for key in shown}, (fmt, stem, tags)
            assert any(s.startswith("video:") for s in streams), (fmt, stem, streams)  # cover


def test_a_source_without_tags_gives_untagged_stems_and_broken_tags_only_warn(
    tmp_path: Path, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    plain = make_tone(tmp_path / "plain.flac", 1.0, codec_args=("-c:a", "flac"))
    folder, manifest = render(tmp_path / "plain", engine, plain, format="flac")
    assert manifest["tags"] == "none"
    written = mutagen.File(folder / manifest["stems"]["vocals"]).tags
    assert set(written.keys()) <= {"encoder"}  # ffmpeg's own comment, nothing more
    # an mp3 whose ID3 header says version 2.9: ffmpeg skips the tag and
    # decodes the audio; mutagen refuses to read it
    good = tagged_source(tmp_path / "src", "mp3").read_bytes()
    broken = tmp_path / "broken.mp3"
    broken.write_bytes(good[:3] + b"\x09\x00\x00" + good[6:])
    with caplog.at_level(logging.WARNING, logger="stemd"):
        folder, manifest = render(tmp_path / "broken", engine, broken, format="wav")
    assert set(manifest["stems"]) == {"drums", "bass", "other", "vocals"}
    assert float(probe(folder / manifest["stems"]["vocals"])["duration"]) > 0.9
    assert any("broken.mp3: its tags cannot be read" in r.getMessage() for r in caplog.records), [
        r.getMessage() for r in caplog.records
    ]


def test_only_the_stems_asked_for_are_written(tmp_path: Path, engine: Engine) -> None:
    source = make_tone(tmp_path / "song.wav", 1.0)
    folder, manifest = render(tmp_path / "one", engine, source, stems=["vocals"])
    assert set(manifest["stems"]) == {"vocals"}
    assert sorted(p.name for p in folder.iterdir()) == ["peaks.json", "stemd.json", "vocals.wav"]
    assert manifest["parameters"]["stems"] == ["vocals"]


def test_changing_the_stems_separates_again_rather_than_reusing(
    tmp_path: Path, model_repo: tuple[Path, dict[str, str]]
) -> None:
    repo, names = model_repo  # fixed weights: the same settings give the same profile
    song = make_tone(tmp_path / "song.wav", 1.0)
    command = ("separate", "--repo", str(repo), "--model", names["hdemucs"])
    runs = []
    for i, stems in enumerate((["vocals"], ["vocals", "drums"], ["vocals"])):
        config = write_config(
            tmp_path / f"c{i}.yaml", {"outbox": "out", "output": {"stems": stems}}
        )
        result = stemd("-c", str(config), *command, str(song), cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        runs.append(result.stdout)
    model_dir = tmp_path / "out" / names["hdemucs"]
    assert runs[0] == f"{song}: stems in {model_dir / 'song'}\n"
    assert runs[1] == f"{song}: stems in {model_dir / 'song (2)'}\n"  # separated again
    assert runs[2] == f"{song}: reused the stems already in {model_dir / 'song'}\n"
    assert sorted(p.name for p in (model_dir / "song (2)").iterdir()) == [
        "drums.wav",
        "peaks.json",
        "stemd.json",
        "vocals.wav",
    ]


def test_check_refuses_two_stems_with_stems_naming_both_keys(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "c.yaml", {"output": {"two_stems": "vocals", "stems": ["vocals"]}}
    )
    result = stemd("-c", str(config), "check", cwd=tmp_path)
    assert result.returncode != 0
    line = next(line for line in result.stderr.splitlines() if "output.stems" in line)
    assert "output.two_stems" in line and "c.yaml" in line


def test_separate_takes_the_stems_rate_and_tags_as_flags(tmp_path: Path) -> None:
    source = tagged_source(tmp_path / "src", "flac")
    flags = ("--stems", "vocals,drums", "--sample-rate", "22050", "--tags", "none")
    result = stemd(
        "separate", "--model", "demucs_unittest", *flags, "-o", "out", str(source), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "out" / "demucs_unittest" / "song"
    assert sorted(p.name for p in folder.iterdir()) == [
        "drums.wav",
        "peaks.json",
        "stemd.json",
        "vocals.wav",
    ]
    assert probe(folder / "vocals.wav")["sample_rate"] == "22050"
    assert mutagen.File(folder / "vocals.wav").tags is None
    refused = stemd(
        "separate", "--model", "demucs_unittest", "--stems", "piano", str(source), cwd=tmp_path
    )
    assert refused.returncode != 0
    assert "--stems: 'piano': not among the stems of demucs_unittest" in refused.stderr
