"""Test audio made with the real ffmpeg, and helpers to read stems back."""

from __future__ import annotations

import json
import subprocess
import wave
from pathlib import Path

import numpy as np
import sphn


def make_tone(
    path: Path,
    seconds: float = 3.0,
    rate: int = 44100,
    channels: int = 2,
    codec_args: tuple[str, ...] = (),
    frequency: int = 440,
) -> Path:
    """A tone plus a little noise (so separation has something to chew on)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = (
        f"sine=frequency={frequency}:sample_rate={rate}:duration={seconds}[a];"
        f"anoisesrc=color=pink:amplitude=0.05:sample_rate={rate}:duration={seconds}:seed=7[b];"
        "[a][b]amix=inputs=2:normalize=0"
    )
    if channels > 2:  # the same signal in every channel (an upmix would leave FL/FR silent)
        graph += ",pan=" + f"{channels}c|" + "|".join(f"c{i}=c0" for i in range(channels))
    subprocess.run(
        [
            "ffmpeg",
            "-nostdin",
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            graph,
            "-ac",
            str(channels),
            *codec_args,
            str(path),
        ],
        check=True,
        timeout=60,
    )
    return path


def probe(path: Path) -> dict[str, str]:
    """ffprobe's view of the first audio stream plus the container duration."""
    out = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-select_streams",
            "a:0",
            "-show_entries",
            "stream=codec_name,sample_rate,channels,sample_fmt,bits_per_raw_sample,"
            "bits_per_sample:format=duration",
            "-of",
            "json",
            str(path),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    ).stdout
    data = json.loads(out)
    stream = dict(data["streams"][0])
    stream["duration"] = data["format"]["duration"]
    return {k: str(v) for k, v in stream.items()}


def read_audio(path: Path) -> tuple[np.ndarray, int]:
    """[channels, samples] float32 and the sample rate, decoded by sphn."""
    data, rate = sphn.read(str(path))
    return np.asarray(data, dtype=np.float32), int(rate)


def make_mix(path: Path, seconds: float = 3.0, codec_args: tuple[str, ...] = ()) -> Path:
    """A short real mix, as the seed's sample request held: a bass line, a lead,
    a kick on the beat and hiss, at 44.1 kHz stereo (mp3 when `path` says so)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = (
        f"sine=frequency=55:sample_rate=44100:duration={seconds}[bass];"
        f"sine=frequency=660:sample_rate=44100:duration={seconds},volume=0.3[lead];"
        "aevalsrc='0.8*sin(2*PI*60*t)*exp(-20*mod(t,0.5))':s=44100:d="
        f"{seconds}[kick];"
        f"anoisesrc=color=pink:amplitude=0.03:sample_rate=44100:duration={seconds}:seed=3[hiss];"
        "[bass][lead][kick][hiss]amix=inputs=4:normalize=0,volume=0.5"
    )
    subprocess.run(
        [
            *("ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", graph, "-ac", "2"),
            *codec_args,
            str(path),
        ],
        check=True,
        timeout=60,
    )
    return path


def make_tracks(folder: Path, count: int = 1000, seed: int = 1) -> list[str]:
    """`count` distinct 0.1 s stereo WAVs (random content: no two alike)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    names = []
    for i in range(count):
        name = f"track{i:04d}.wav"
        with wave.open(str(folder / name), "wb") as out:
            out.setnchannels(2)
            out.setsampwidth(2)
            out.setframerate(44100)
            out.writeframes((rng.standard_normal((4410, 2)) * 3000).astype("<i2").tobytes())
        names.append(name)
    return names
