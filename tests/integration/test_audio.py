"""Decoding and encoding with the real ffmpeg, sphn and lame."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
import torch

from stemd.audio import StemFormat, decode, encode, kill_children, probe, stems_to_write
from stemd.errors import InputError, JobCancelled
from support.audio import make_tone
from support.audio import probe as ffprobe


@pytest.mark.parametrize(
    ("name", "rate", "channels", "codec"),
    [
        ("a.mp3", 44100, 2, ()),
        ("a.flac", 44100, 2, ()),
        ("a.wav", 44100, 2, ("-c:a", "pcm_s24le")),
        ("mono.wav", 48000, 1, ()),
        ("a.ogg", 44100, 2, ()),
        ("a.m4a", 44100, 2, ()),  # sphn cannot read it: the ffmpeg fallback decodes it
        ("surround.flac", 44100, 6, ()),
        ("hi.wav", 96000, 2, ("-c:a", "pcm_f32le")),
    ],
)
def test_decode_gives_the_models_rate_and_channels(
    tmp_path: Path, name: str, rate: int, channels: int, codec: tuple[str, ...]
) -> None:
    path = make_tone(tmp_path / name, 1.5, rate=rate, channels=channels, codec_args=codec)
    wav = decode(path, 44100, 2)
    assert wav.dtype == torch.float32 and wav.shape[0] == 2
    assert abs(wav.shape[1] / 44100 - 1.5) < 0.06
    assert 0.05 < float(wav.abs().max()) <= 1.5
    if channels == 1:  # mono is copied to both channels, as demucs does
        assert torch.equal(wav[0], wav[1])


def test_probe_reads_duration_channels_and_rate(tmp_path: Path) -> None:
    info = probe(make_tone(tmp_path / "x.flac", 2.0, rate=48000, channels=1))
    assert info.channels == 1 and info.samplerate == 48000
    assert info.duration is not None and abs(info.duration - 2.0) < 0.01


@pytest.mark.parametrize(
    ("name", "codec", "exact"),
    [
        ("x.flac", (), True),
        ("x.wav", (), True),
        ("x.mp3", (), False),
        ("x.m4a", ("-c:a", "aac"), False),
    ],
)
def test_probe_says_whether_the_header_states_the_exact_length(
    tmp_path: Path, name: str, codec: tuple[str, ...], exact: bool
) -> None:
    info = probe(make_tone(tmp_path / name, 2.0, codec_args=codec))
    assert info.duration is not None and abs(info.duration - 2.0) < 0.1
    assert info.exact_duration is exact and info.channels == 2


def test_a_wav_written_to_a_pipe_gets_its_real_length(tmp_path: Path) -> None:
    # ffmpeg writing to a pipe cannot seek back to fill in the sizes: the header
    # then claims 0xFFFFFFFF bytes, hours of audio, for a 2 s file.
    path = tmp_path / "piped.wav"
    with open(path, "wb") as out:
        subprocess.run(
            [
                "ffmpeg",
                "-nostdin",
                "-v",
                "error",
                "-f",
                "lavfi",
                "-i",
                "sine=d=2",
                "-ac",
                "2",
                "-f",
                "wav",
                "-",
            ],
            stdout=out,
            check=True,
            timeout=60,
        )
    assert path.read_bytes()[4:8] == b"\xff\xff\xff\xff"
    info = probe(path)
    assert info.duration is not None and abs(info.duration - 2.0) < 0.05
    # so its 2 s of decoded audio are not taken for a cut copy
    assert decode(path, 44100, 2).shape[1] / 44100 > info.duration - 0.05


def test_a_cut_wav_announces_more_than_it_holds(tmp_path: Path) -> None:
    whole = make_tone(tmp_path / "whole.wav", 4.0)
    cut = tmp_path / "cut.wav"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 4])
    info = probe(cut)
    assert info.exact_duration and info.duration is not None and abs(info.duration - 4.0) < 0.01
    assert decode(cut, 44100, 2).shape[1] / 44100 < 1.1


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("noise.mp3", b"ID3\x03\x00\x00\x00\x00\x00\x00" + os.urandom(20000)),
        ("text.mp3", b"just some lyrics\n" * 100),
        ("random.wav", os.urandom(5000)),
    ],
)
def test_undecodable_input_raises_an_input_error_naming_the_file(
    tmp_path: Path, name: str, content: bytes
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError) as caught:
        decode(path, 44100, 2)
    assert caught.value.path == str(path) and str(path) in str(caught.value)


def test_a_name_that_looks_like_an_option_is_read_as_a_file(tmp_path: Path) -> None:
    path = make_tone(tmp_path / "-i.wav", 1.0)
    assert decode(path, 44100, 2).shape[0] == 2
    assert probe(path).channels == 2


def sine(seconds: float = 1.0) -> torch.Tensor:
    t = torch.arange(int(44100 * seconds)) / 44100
    return torch.stack([torch.sin(2 * torch.pi * 440 * t), torch.cos(2 * torch.pi * 440 * t)]) * 0.5


@pytest.mark.parametrize(
    ("fmt", "sample_format", "codec", "depth"),
    [
        ("wav", "s16", "pcm_s16le", "16"),
        ("wav", "s24", "pcm_s24le", "24"),
        ("wav", "f32", "pcm_f32le", "32"),
        ("flac", "s16", "flac", "16"),
        ("flac", "s24", "flac", "24"),
        ("mp3", "s16", "mp3", None),
    ],
)
def test_encode_writes_the_configured_format(
    tmp_path: Path, fmt: str, sample_format: str, codec: str, depth: str | None
) -> None:
    path = tmp_path / f"vocals.{fmt}"
    encode(sine(), path, 44100, StemFormat(fmt, sample_format, 192, "rescale"))
    info = ffprobe(path)
    assert info["codec_name"] == codec and info["sample_rate"] == "44100"
    if depth is not None:
        assert depth in (info.get("bits_per_sample"), info.get("bits_per_raw_sample"))
    round_trip = decode(path, 44100, 2)
    assert abs(round_trip.shape[1] - 44100) < 2000  # mp3 adds encoder padding


@pytest.mark.parametrize(("clip", "peak"), [("rescale", 1 / 1.01), ("clamp", 0.99)])
def test_clip_modes_keep_loud_stems_in_range(tmp_path: Path, clip: str, peak: float) -> None:
    path = tmp_path / "loud.wav"
    encode(sine() * 4, path, 44100, StemFormat("wav", "f32", 320, clip))
    assert abs(float(decode(path, 44100, 2).abs().max()) - peak) < 1e-3


def test_two_stems_writes_the_stem_and_the_sum_of_the_rest() -> None:
    stems = {
        name: torch.full((2, 10), float(i)) for i, name in enumerate(["drums", "bass", "vocals"])
    }
    two = stems_to_write(stems, "vocals")
    assert list(two) == ["vocals", "no_vocals"]
    assert torch.equal(two["no_vocals"], torch.full((2, 10), 1.0))
    assert stems_to_write(stems, None) is stems


def test_a_child_past_its_time_limit_is_killed(tmp_path: Path) -> None:
    from stemd.audio.children import run as _run

    pid_file = tmp_path / "pid"
    started = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        _run(["sh", "-c", f"echo $$ > {pid_file}; exec sleep 30"], timeout=0.5)
    assert time.monotonic() - started < 5
    assert not Path(f"/proc/{pid_file.read_text().strip()}").exists()


def test_a_cancelled_job_starts_no_more_ffmpeg(tmp_path: Path) -> None:
    # (killing one mid-decode: tests/e2e/test_ffmpeg_children.py)
    song = make_tone(tmp_path / "x.m4a", 2.0, codec_args=("-c:a", "aac"))  # sphn cannot: ffmpeg
    with pytest.raises(JobCancelled):
        decode(song, 44100, 2, cancelled=lambda: True)
    assert kill_children() == 0  # nothing left running


def test_a_flac_stem_that_takes_ffmpeg_a_while_is_written_whole(tmp_path: Path) -> None:
    # longer than one 0.2 s poll of the child: the input must keep flowing
    path = tmp_path / "long.flac"
    noise = torch.randn(2, 44100 * 120) * 0.1
    encode(noise, path, 44100, StemFormat("flac", "s16", 320, "rescale"))
    assert decode(path, 44100, 2).shape[1] == noise.shape[1]


def test_a_file_that_is_not_audio_fails_in_words(tmp_path: Path) -> None:
    fake = tmp_path / "fake.mp3"
    fake.write_text("this is not music\n")
    with pytest.raises(InputError) as caught:
        probe(fake)
    # not ffprobe's "(Invalid argument)"
    assert str(caught.value) == (
        f"{fake}: not a readable audio file: its bytes are in no audio format ffmpeg knows"
    )
