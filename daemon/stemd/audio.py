"""Decode any input to the model's rate and channels; encode stems.

The only module that touches codecs. Decoding follows demucs' own loader (sphn
first, then ffmpeg) so stems match `python -m demucs.separate`. Encoding reuses
demucs' encoders (wav, mp3 in-process; flac through ffmpeg, as demucs does).

Every ffmpeg/ffprobe child runs through `_run`: no stdin (`-nostdin`), a
file-only protocol whitelist, paths passed as `file:PATH` so a name can never
be read as an option or a URL, a wall-clock limit here and a CPU-time limit in
ffmpeg itself (`-timelimit`, so even an orphan ends), its own session (a Ctrl-C
at the terminal is stemd's to handle, not ffmpeg's), killed when the job is
cancelled, and killed by `kill_children` when stemd shuts down.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sphn
import torch
from demucs.audio import _pcm_bytes, convert_audio, convert_audio_channels, prevent_clip, save_audio

from stemd.errors import InputError, JobCancelled, StemdError

FFMPEG_TIMEOUT_S = 900.0
PROBE_TIMEOUT_S = 60.0
CANCEL_POLL_S = 0.2  # how soon a cancelled job's ffmpeg is killed
REAP_TIMEOUT_S = 5.0  # how long shutdown waits for killed children to be gone

CancelCheck = Callable[[], bool]

_children: set[subprocess.Popen[bytes]] = set()
_children_lock = threading.Lock()


def kill_children(reap_timeout: float = REAP_TIMEOUT_S) -> int:
    """Kill every ffmpeg/ffprobe still running (at shutdown) and reap it, so none
    is left behind as a zombie or still holding its files. Returns how many."""
    with _children_lock:
        running = [child for child in _children if child.poll() is None]
    for child in running:
        child.kill()
    deadline = time.monotonic() + reap_timeout
    for child in running:
        # SIGKILL cannot be ignored: the wait ends as soon as the kernel has torn
        # the child down (a process stuck in uninterruptible I/O, e.g. on a hung
        # NFS share, may take longer: then it is left for init to reap).
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(max(0.0, deadline - time.monotonic()))
    return len(running)


@dataclass(frozen=True)
class Probe:
    duration: float | None  # seconds; None if the container does not say
    channels: int
    samplerate: int
    codec: str = ""

    @property
    def exact_duration(self) -> bool:
        """The header states the length exactly (FLAC's sample count, WAV's data
        size), so less audio than that means the file was cut short. mp3 and
        friends only estimate it."""
        return self.codec in ("flac", "alac") or self.codec.startswith("pcm_")


@dataclass(frozen=True)
class StemFormat:
    format: str  # wav | flac | mp3
    sample_format: str  # s16 | s24 | f32
    mp3_bitrate: int
    clip: str  # rescale | clamp | none


def _ffmpeg_input(path: Path) -> str:
    # "file:" makes ffmpeg take the rest literally: no protocol, no option parsing.
    return "file:" + os.path.abspath(path)


def _run(
    command: list[str],
    timeout: float,
    cancelled: CancelCheck | None = None,
    stdin_data: bytes | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run a child to completion, killing it on time-out (TimeoutExpired) or
    when `cancelled` turns true (JobCancelled).

    With `stdin_data` the child's stdout is discarded (encoders write files):
    a thread feeds stdin, because `communicate` cannot resume sending input
    after a time-out (it only registers stdin when given input again, which it
    then refuses).
    """
    if cancelled is not None and cancelled():
        raise JobCancelled(f"{command[0]} not started: the job was cancelled")
    errors = tempfile.TemporaryFile() if stdin_data is not None else None  # noqa: SIM115
    try:
        child = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL if stdin_data is None else subprocess.PIPE,
            stdout=subprocess.PIPE if stdin_data is None else subprocess.DEVNULL,
            stderr=subprocess.PIPE if errors is None else errors,
            start_new_session=True,
        )
    except FileNotFoundError:
        if errors is not None:
            errors.close()
        raise StemdError(
            f"{command[0]} is not installed; install ffmpeg (e.g. apt-get install ffmpeg)"
        ) from None
    with _children_lock:
        _children.add(child)
    deadline = time.monotonic() + timeout
    feeder = None
    if stdin_data is not None:
        feeder = threading.Thread(target=_feed, args=(child, stdin_data), daemon=True)
        feeder.start()
    out, err = b"", b""
    try:
        while True:
            try:
                if errors is None:
                    out, err = child.communicate(timeout=CANCEL_POLL_S)
                else:
                    child.wait(CANCEL_POLL_S)
                break
            except subprocess.TimeoutExpired:
                if cancelled is not None and cancelled():
                    raise JobCancelled(f"{command[0]} killed: the job was cancelled") from None
                if time.monotonic() > deadline:
                    raise subprocess.TimeoutExpired(command, timeout) from None
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if feeder is not None:
            feeder.join()  # ends once the child is gone: its writes fail
        with _children_lock:
            _children.discard(child)
        if errors is not None:
            errors.seek(0)
            err = errors.read()
            errors.close()
    return subprocess.CompletedProcess(command, child.returncode, out, err)


def _feed(child: subprocess.Popen[bytes], data: bytes) -> None:
    assert child.stdin is not None
    try:
        child.stdin.write(data)
        child.stdin.close()
    except (BrokenPipeError, OSError, ValueError):
        pass  # the child exited or was killed: its exit status tells


def _run_on_input(
    command: list[str],
    timeout: float,
    path: Path,
    failure: str,
    cancelled: CancelCheck | None = None,
) -> bytes:
    """Run ffmpeg/ffprobe on an input; a failure or time-out is the input's fault."""
    try:
        result = _run(command, timeout, cancelled)
    except subprocess.TimeoutExpired:
        raise InputError(path, f"{command[0]} took over {timeout:.0f}s on it") from None
    if result.returncode != 0:
        raise InputError(path, f"{failure} ({_last_line(result.stderr, path)})")
    return result.stdout


def _last_line(data: bytes, path: Path) -> str:
    """ffmpeg's last error line, without the `file:PATH: ` prefix it repeats."""
    lines = [line for line in data.decode(errors="replace").splitlines() if line.strip()]
    line = lines[-1].strip() if lines else "no message"
    return line.replace(_ffmpeg_input(path) + ": ", "")


STREAMED_SIZE = b"\xff\xff\xff\xff"  # a WAV written to a pipe: the length is unknown


def _container_codec(path: Path) -> str | None:
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
    """The header as sphn (symphonia) reads it, in-process; None if it cannot."""
    try:
        codec = _container_codec(path)
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
    """Duration, channels and rate of the first audio stream.

    sphn reads the header in-process (microseconds); what it cannot read goes to
    ffprobe, a subprocess that costs tens of milliseconds per file.
    """
    return _probe_sphn(path) or _probe_ffprobe(path)


def _probe_ffprobe(path: Path) -> Probe:
    command = [
        "ffprobe",  # has no -nostdin; _run gives it /dev/null as stdin
        "-v",
        "error",
        "-protocol_whitelist",
        "file",
        "-select_streams",
        "a:0",
        "-show_entries",
        "stream=codec_name,channels,sample_rate,duration:format=duration",
        "-of",
        "json",
        _ffmpeg_input(path),
    ]
    output = _run_on_input(command, PROBE_TIMEOUT_S, path, "not a readable audio file")
    info = json.loads(output or b"{}")
    streams = info.get("streams") or []
    if not streams:
        raise InputError(path, "no audio stream in this file")
    stream = streams[0]
    duration_text = stream.get("duration") or info.get("format", {}).get("duration")
    try:
        duration = float(duration_text) if duration_text not in (None, "N/A") else None
    except ValueError:
        duration = None
    return Probe(
        duration=duration,
        channels=int(stream.get("channels") or 0),
        samplerate=int(stream.get("sample_rate") or 0),
        codec=str(stream.get("codec_name") or ""),
    )


def _decode_ffmpeg(
    path: Path,
    samplerate: int,
    channels: int,
    source_channels: int,
    cancelled: CancelCheck | None = None,
) -> torch.Tensor:
    command = [
        "ffmpeg",
        "-nostdin",
        "-timelimit",  # CPU seconds: ends ffmpeg even if stemd is gone
        str(int(FFMPEG_TIMEOUT_S)),
        "-hide_banner",
        "-loglevel",
        "error",
        "-protocol_whitelist",
        "file,pipe",
        "-i",
        _ffmpeg_input(path),
        "-map",
        "0:a:0",
        "-threads",
        "1",
        "-f",
        "f32le",
        "-ar",
        str(samplerate),
        "pipe:1",
    ]
    output = _run_on_input(command, FFMPEG_TIMEOUT_S, path, "ffmpeg cannot decode it", cancelled)
    data = np.frombuffer(output, dtype=np.float32).copy()
    wav = torch.from_numpy(data).view(-1, source_channels).t()
    converted: torch.Tensor = convert_audio_channels(wav, channels)  # type: ignore[no-untyped-call]
    return converted


def decode(
    path: Path,
    samplerate: int,
    channels: int,
    info: Probe | None = None,
    cancelled: CancelCheck | None = None,
) -> torch.Tensor:
    """The file as a float32 [channels, samples] tensor at `samplerate`.

    sphn first (what demucs does), then ffmpeg for what sphn cannot read. Pass
    the `probe` result when the caller already has it: the ffmpeg path needs it.
    `cancelled` is asked while ffmpeg runs; when true, ffmpeg is killed.
    """
    errors: list[str] = []
    wav: torch.Tensor | None = None
    try:
        data, rate = sphn.read(str(path))
    except Exception as err:
        errors.append(f"sphn: {err}")
    else:
        if data.size:
            wav = convert_audio(torch.from_numpy(data), int(rate), samplerate, channels)
    if wav is None:
        info = info or probe(path)
        if info.channels < 1:
            raise InputError(path, "the audio stream has no channels")
        try:
            wav = _decode_ffmpeg(path, samplerate, channels, info.channels, cancelled)
        except InputError as err:
            errors.append(f"ffmpeg: {err.reason}")
            raise InputError(path, "cannot decode audio: " + "; ".join(errors)) from None
    if wav.shape[-1] == 0:
        raise InputError(path, "the file holds no audio samples")
    if not torch.isfinite(wav).all():
        raise InputError(path, "the decoded audio holds NaN or infinite samples")
    return wav.contiguous()


def stems_to_write(
    stems: dict[str, torch.Tensor], two_stems: str | None
) -> dict[str, torch.Tensor]:
    """All stems, or STEM and no_STEM (the sum of the others), as the demucs CLI does."""
    if two_stems is None:
        return stems
    rest = torch.zeros_like(stems[two_stems])
    for name, wav in stems.items():
        if name != two_stems:
            rest += wav
    return {two_stems: stems[two_stems], f"no_{two_stems}": rest}


def encode(
    wav: torch.Tensor,
    path: Path,
    samplerate: int,
    fmt: StemFormat,
    cancelled: CancelCheck | None = None,
) -> None:
    """Write one stem with demucs' encoders: wav and mp3 in-process, flac through
    ffmpeg (as demucs does, but under `_run`'s rules)."""
    bits = 24 if fmt.sample_format == "s24" else 16
    if fmt.format == "flac":
        clipped: torch.Tensor = prevent_clip(wav.cpu(), mode=fmt.clip)  # type: ignore[no-untyped-call]
        _encode_flac(clipped, path, samplerate, bits, cancelled)
        return
    try:
        save_audio(
            wav.cpu(),
            str(path),
            samplerate=samplerate,
            bitrate=fmt.mp3_bitrate,
            clip=fmt.clip,  # type: ignore[arg-type]
            bits_per_sample=bits,  # type: ignore[arg-type]
            as_float=fmt.sample_format == "f32",
        )
    except RuntimeError as err:
        raise StemdError(f"{path}: cannot encode the stem: {err}") from None


def _encode_flac(
    wav: torch.Tensor, path: Path, samplerate: int, bits: int, cancelled: CancelCheck | None
) -> None:
    """demucs.audio.encode_ffmpeg's command, with our child-process rules."""
    command = [
        "ffmpeg",
        "-nostdin",
        "-timelimit",
        str(int(FFMPEG_TIMEOUT_S)),
        "-y",
        "-loglevel",
        "error",
        "-protocol_whitelist",
        "file,pipe",
        "-f",
        "s16le" if bits == 16 else "s32le",
        "-ar",
        str(samplerate),
        "-ac",
        str(wav.shape[0]),
        "-i",
        "pipe:0",
        _ffmpeg_input(path),  # file:PATH works for outputs too
    ]
    try:
        result = _run(command, FFMPEG_TIMEOUT_S, cancelled, stdin_data=_pcm_bytes(wav, bits))
    except subprocess.TimeoutExpired:
        raise StemdError(f"{path}: ffmpeg took over {FFMPEG_TIMEOUT_S:.0f}s to encode") from None
    if result.returncode != 0:
        raise StemdError(f"{path}: cannot encode the stem: {_last_line(result.stderr, path)}")
