"""Decoding and encoding in blocks give what demucs gives on the whole track.

The blocks are made small here (a couple of seconds) so that a short file
crosses many block boundaries; the arithmetic is the same at any size.
"""

from __future__ import annotations

from pathlib import Path

import julius
import numpy as np
import pytest
import sphn
import torch
from demucs.audio import convert_audio, save_audio

import stemd.audio.decoding as decoding
import stemd.audio.encoding as encoding
from stemd.audio import StemFormat, decode, encode
from stemd.audio.decoding import BlockResampler
from support.audio import make_tone, read_audio


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decoding, "BLOCK_SECONDS", 1.7)
    monkeypatch.setattr(encoding, "BLOCK_FRAMES", 30011)  # a prime: blocks never align


@pytest.mark.parametrize(
    ("name", "rate", "channels"),
    [
        ("a.wav", 44100, 2),
        ("a.flac", 44100, 2),
        ("a.mp3", 44100, 2),  # each block starts at a seek: the pre-roll rebuilds lame's state
        ("a.ogg", 44100, 2),
        ("b.flac", 48000, 2),  # resampled block by block
        ("c.mp3", 22050, 1),  # upsampled, and mono copied to both channels
        ("d.wav", 96000, 2),
    ],
)
def test_block_decoding_equals_demucs_whole_file_decoding(
    tmp_path: Path, name: str, rate: int, channels: int
) -> None:
    path = make_tone(tmp_path / name, 7.3, rate=rate, channels=channels)
    data, source_rate = sphn.read(str(path))  # what demucs' loader does
    expected = convert_audio(torch.from_numpy(data), int(source_rate), 44100, 2)
    got = decode(path, 44100, 2)
    assert got.shape == expected.shape
    assert float((got - expected).abs().max()) <= 1e-6


@pytest.mark.parametrize(
    ("old", "new"), [(48000, 44100), (22050, 44100), (96000, 44100), (8000, 44100)]
)
def test_the_block_resampler_equals_resample_frac(old: int, new: int) -> None:
    signal = torch.randn(2, 3 * old + 77, generator=torch.Generator().manual_seed(old)) * 0.3
    expected = julius.resample_frac(signal, old, new)
    resampler = BlockResampler(old, new)
    sizes = [1, 5, old // 3, 1000, old, 3, 12345]
    parts, position, i = [], 0, 0
    while position < signal.shape[-1]:
        size = sizes[i % len(sizes)]
        parts.append(resampler.push(signal[:, position : position + size]))
        position, i = position + size, i + 1
    parts.append(resampler.finish())
    got = torch.cat(parts, -1)
    assert got.shape == expected.shape
    assert float((got - expected).abs().max()) <= 1e-6


def stem(seconds: float = 3.1, loud: float = 1.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    return torch.randn(2, int(44100 * seconds), generator=generator) * 0.3 * loud


@pytest.mark.parametrize(
    ("fmt", "sample_format"),
    [("wav", "s16"), ("wav", "s24"), ("wav", "f32"), ("mp3", "s16")],
)
@pytest.mark.parametrize("clip", ["rescale", "clamp", "none"])
def test_block_encoding_writes_the_bytes_demucs_writes(
    tmp_path: Path, fmt: str, sample_format: str, clip: str
) -> None:
    wav = stem(loud=4.0)  # loud enough for every clip rule to act
    ours, theirs = tmp_path / f"ours.{fmt}", tmp_path / f"theirs.{fmt}"
    encode(wav, ours, 44100, StemFormat(fmt, sample_format, 192, clip))
    save_audio(
        wav.clone(),
        str(theirs),
        samplerate=44100,
        bitrate=192,
        clip=clip,  # type: ignore[arg-type]
        bits_per_sample=24 if sample_format == "s24" else 16,
        as_float=sample_format == "f32",
    )
    assert ours.read_bytes() == theirs.read_bytes()


@pytest.mark.parametrize("sample_format", ["s16", "s24"])
def test_block_encoded_flac_holds_the_samples_demucs_writes(
    tmp_path: Path, sample_format: str
) -> None:
    wav = stem(loud=4.0)
    ours, theirs = tmp_path / "ours.flac", tmp_path / "theirs.flac"
    encode(wav, ours, 44100, StemFormat("flac", sample_format, 320, "rescale"))
    bits = 24 if sample_format == "s24" else 16
    save_audio(wav.clone(), str(theirs), samplerate=44100, bits_per_sample=bits)  # type: ignore[arg-type]
    ours_samples, rate = read_audio(ours)
    theirs_samples, _rate = read_audio(theirs)
    assert rate == 44100 and ours_samples.shape == theirs_samples.shape
    assert np.array_equal(ours_samples, theirs_samples)


def test_a_stem_read_in_blocks_from_a_file_is_encoded_whole(tmp_path: Path) -> None:
    from stemd.audio import encode_stem
    from stemd.separation.workfiles import RawAudio

    wav = stem(seconds=5.0)
    with RawAudio(tmp_path / "stem.f32", 2) as raw:
        for start in range(0, wav.shape[-1], 44100):
            raw.append(wav[:, start : start + 44100].numpy())
        assert raw.frames == wav.shape[-1]
        assert raw.peak == float(wav.abs().max())
        encode_stem(raw, tmp_path / "ours.wav", 44100, StemFormat("wav", "f32", 320, "rescale"))
    theirs = tmp_path / "theirs.wav"
    save_audio(wav.clone(), str(theirs), samplerate=44100, as_float=True)
    assert (tmp_path / "ours.wav").read_bytes() == theirs.read_bytes()
