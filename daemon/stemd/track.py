"""One track's way from input file to a sealed temp folder in the outbox.

    decode_track     input -> the job's work area: mix.f32 (+ its statistics)
    separate_track   mix.f32 -> model, window by window -> stem-NAME.f32 files
    write_stems      stem files -> encoders, block by block -> sealed temp folder

Nothing here holds a whole track in memory: the work files (stemd.separation.workfiles)
carry it between the steps. The worker runs the steps on its threads (decode
ahead, separate, finish behind); `stemd separate` runs them one after another
(`render_track`). The caller owns the job's work folder and removes it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from stemd import __version__
from stemd.audio import (
    PEAKS,
    Decoded,
    Peaks,
    Probe,
    StemFormat,
    StemReader,
    Tags,
    decode_to,
    decoder_errors,
    encode_stem,
    probe,
    read_tags,
    stem_rate,
    write_peaks,
    write_tags,
)
from stemd.choices import shown_choices
from stemd.config import Config
from stemd.errors import InputError
from stemd.manifest import new_manifest
from stemd.outbox import (
    Outbox,
    TrackNames,
    stem_filename,
    stems_size_estimate,
    track_folder,
)
from stemd.separation.engine import CancelCheck, Engine, ModelInfo, ProgressHook
from stemd.separation.workfiles import JobWork, MixStats, MixWriter, RawAudio, SumOfStems, WorkArea

log = logging.getLogger("stemd")

# Decoders may drop a frame at the end; more missing than this is a cut file.
TRUNCATION_SLACK_S = 0.1
# A file whose decoder reports errors is corrupt when it decodes to less than
# this share of what it should hold (and more than CORRUPT_SLACK_S less); above
# it, a few bad frames are a warning and the track is separated.
CORRUPT_SHARE = 0.9
CORRUPT_SLACK_S = 1.0


@dataclass(frozen=True)
class RenderRequest:
    path: Path
    relative: str  # inbox-relative name: decides the track folder and file names
    sha256: str
    profile: str
    params: dict[str, Any]
    label: str  # names the temp folder


@dataclass(frozen=True)
class Rendered:
    temp: Path  # the sealed work folder inside the outbox
    folder: PurePosixPath  # the track folder the layout names for it


@dataclass(frozen=True)
class Timing:
    """How long one track's separation took, as its manifest records it."""

    separated: float  # seconds from the start of decoding to the end of separation
    model: float  # of which the model's forward passes took this many


@dataclass(frozen=True)
class Loaded:
    """An input decoded into its job's work area, checked."""

    work: JobWork
    frames: int  # at the model's rate
    stats: MixStats
    duration: float  # seconds
    decoded: Decoded
    source_rate: int  # the input's own sample rate (output.sample_rate: source)
    tags: Tags  # the input's tags and cover, written on the stems when output.tags: copy


def stem_names(info: ModelInfo, config: Config) -> list[str]:
    """The stems written: the model's, those of output.stems, or STEM and
    no_STEM (output.two_stems)."""
    output = config.output
    if output.two_stems is not None:
        return [output.two_stems, f"no_{output.two_stems}"]
    if output.stems is not None:
        return [name for name in info.sources if name in output.stems]
    return list(info.sources)


def check_input(path: Path, config: Config) -> Probe:
    """What the file says about itself, if it is audio stemd will take: an
    InputError with the reason if not (inbox files and uploads alike)."""
    probe_info = probe(path)
    if probe_info.channels < 1:
        raise InputError(path, "the audio stream has no channels")
    max_duration = config.watch.max_duration
    if probe_info.duration is not None and probe_info.duration > max_duration:
        raise InputError(
            path,
            f"{probe_info.duration:.0f}s of audio is over watch.max_duration ({max_duration:g}s)",
        )
    return probe_info


def decode_track(
    info: ModelInfo,
    config: Config,
    path: Path,
    work: JobWork,
    cancelled: CancelCheck | None = None,
) -> Loaded:
    """Probe and decode into `work`; raises InputError for input that cannot be
    used, WorkAreaFull when the work files would not fit."""
    probe_info = check_input(path, config)
    max_duration = config.watch.max_duration
    files = 1 + len(info.sources)  # the mix and every stem the model makes
    if probe_info.duration is not None:
        frames = int(probe_info.duration * info.samplerate)
        work.check_space(frames, info.audio_channels, files)
    writer = MixWriter(work.mix_path, info.audio_channels)
    try:
        decoded = decode_to(
            path, info.samplerate, info.audio_channels, writer, probe_info, cancelled
        )
    finally:
        writer.close()
    frames = decoded.frames
    duration = frames / info.samplerate
    if duration > max_duration:
        raise InputError(path, f"{duration:.0f}s is over watch.max_duration")
    if decoded.decoder == "sphn" and not probe_info.codec.startswith("pcm_"):
        # sphn conceals bad frames without a word: ask ffmpeg what it finds
        decoded.errors = decoder_errors(path, cancelled)
    announced = probe_info.duration
    check_integrity(path, duration, probe_info, decoded.errors)
    if probe_info.exact_duration and announced and duration < announced - TRUNCATION_SLACK_S:
        raise InputError(
            path,
            f"truncated: it holds {duration:.1f}s of the {announced:.1f}s its header "
            "announces (an interrupted copy?); copy it again",
        )
    work.check_space(frames, info.audio_channels, files - 1)  # the stems, beside the mix
    # read whatever output.tags says: another job may render this separation with them
    tags = read_tags(path)
    return Loaded(
        work, frames, writer.stats.result(), duration, decoded, probe_info.samplerate, tags
    )


def check_integrity(path: Path, duration: float, info: Probe, errors: list[str]) -> None:
    """InputError for a file whose decoder reported errors and that decodes to
    well short of what it should hold; a warning for a few bad frames."""
    if not errors:
        return
    announced = info.duration
    claim = "its header announces" if info.exact_duration else "its size and bitrate imply"
    if (
        announced
        and duration < announced * CORRUPT_SHARE
        and announced - duration > CORRUPT_SLACK_S
    ):
        raise InputError(
            path,
            f"corrupt: it decodes to {duration:.2f}s of the {announced:.1f}s {claim}, with "
            f"{len(errors)} decoder error(s) (first: {errors[0]}); replace the file",
        )
    log.warning(
        "%s: %d decoder error(s) (first: %s); separated anyway (%.1fs decoded of %s)",
        path,
        len(errors),
        errors[0],
        duration,
        f"{announced:.1f}s" if announced else "an unknown length",
    )


def check_room(info: ModelInfo, outbox: Outbox, config: Config, loaded: Loaded, what: str) -> None:
    """OutboxFull unless the stems fit. Asked before the separation, not after
    it: a full share should not cost a separation that has nowhere to go."""
    output = config.output
    outbox.check_space(
        stems_size_estimate(
            output,
            loaded.duration,
            stem_rate(output.sample_rate, info.samplerate, loaded.source_rate, output.format),
            info.audio_channels,
            len(stem_names(info, config)),
        ),
        what,
    )


class StemFiles:
    """A track's stems in work files, every one the model makes, written region
    by region as the model finishes them, then read back block by block by the
    encoders: every job of the same content and separation is rendered from them
    (`readers`), whichever stems and format it asks for."""

    def __init__(self, work: JobWork, info: ModelInfo) -> None:
        self.sources = info.sources
        self.files = {
            name: RawAudio(work.stem_path(name), info.audio_channels) for name in info.sources
        }

    def write(self, _start: int, region: torch.Tensor) -> None:
        """[sources, channels, n], following the region before."""
        for name, wav in zip(self.sources, region, strict=True):
            self.files[name].append(wav.numpy())

    def readers(self, names: list[str]) -> dict[str, StemReader]:
        """The stems `names` (stem_names) as the encoder reads them: the model's,
        and `no_STEM`, the sum of the others (demucs' two_stems)."""
        readers: dict[str, StemReader] = {}
        for name in names:
            if name in self.files:
                readers[name] = self.files[name]
            else:
                kept = name.removeprefix("no_")
                readers[name] = SumOfStems(
                    [raw for source, raw in self.files.items() if source != kept]
                )
        return readers

    def close(self) -> None:
        for raw in self.files.values():
            raw.close()


def separate_track(
    engine: Engine,
    loaded: Loaded,
    progress: ProgressHook | None = None,
    cancelled: CancelCheck | None = None,
) -> StemFiles:
    """The model over the mix's work file, into stem work files (open for the
    encoders; close them when done)."""
    stems = StemFiles(loaded.work, engine.info)
    try:
        with RawAudio(loaded.work.mix_path, engine.info.audio_channels, create=False) as mix:
            engine.separate_stream(mix, loaded.stats, stems.write, progress, cancelled)
    except BaseException:
        stems.close()
        raise
    return stems


def write_stems(
    info: ModelInfo,
    outbox: Outbox,
    config: Config,
    request: RenderRequest,
    stems: StemFiles,
    loaded: Loaded,
    timing: Timing,
    progress: ProgressHook | None = None,
    cancelled: CancelCheck | None = None,
) -> Rendered:
    """Encode the stem work files into a sealed temp folder in the outbox, at
    the rate output.sample_rate asks for, with the source's tags."""
    duration, source_rate = loaded.duration, loaded.source_rate
    output = config.output
    tags = loaded.tags if output.tags == "copy" else Tags()
    fmt = StemFormat(output.format, output.sample_format, output.mp3_bitrate, output.clip)
    names = TrackNames.for_input(info.folder, request.relative, request.sha256)
    folder = track_folder(output.layout, names)
    rate = stem_rate(output.sample_rate, info.samplerate, source_rate, fmt.format)
    temp = outbox.new_temp(request.label)
    try:
        files: dict[str, str] = {}
        peaks: dict[str, Peaks] = {}
        for stem, raw in stems.readers(stem_names(info, config)).items():
            filename = stem_filename(output.layout, names, stem, fmt.format)
            peaks[stem] = encode_stem(
                raw, temp / filename, info.samplerate, fmt, cancelled, out_rate=rate
            )
            write_tags(temp / filename, fmt.format, tags, stem)
            files[stem] = filename
            if progress is not None:
                progress(1.0)  # a stem encoded: still alive (long tracks encode for minutes)
        write_peaks(temp / PEAKS, rate, peaks)  # published with the stems, in one rename
        outbox.seal(
            temp,
            new_manifest(
                source=request.relative,
                sha256=request.sha256,
                profile=request.profile,
                model=info.name,
                parameters=request.params,
                output=shown_choices(output),  # the per-job keys it was rendered with
                stems=files,
                peaks=PEAKS,
                samplerate=rate,
                model_samplerate=info.samplerate,
                tags="copied" if not tags.empty else "none",
                duration_seconds=round(duration, 3),
                separation_seconds=round(timing.separated, 3),
                model_seconds=round(timing.model, 3),
                device=info.device,
                stemd_version=__version__,
                duplicate_of=None,
            ),
        )
    except BaseException:
        outbox.discard(temp)
        raise
    return Rendered(temp, folder)


def stems_folder(info: ModelInfo, config: Config, relative: str, sha256: str) -> PurePosixPath:
    """The outbox folder a track's stems go to (before conflicts are resolved)."""
    return track_folder(config.output.layout, TrackNames.for_input(info.folder, relative, sha256))


def render_track(
    engine: Engine,
    outbox: Outbox,
    config: Config,
    request: RenderRequest,
    work_area: WorkArea,
    progress: ProgressHook | None = None,
    cancelled: CancelCheck | None = None,
) -> Rendered:
    """Decode, separate and encode one track into a sealed temp folder in the
    outbox, through a work folder of its own that is gone afterwards.

    The caller publishes it to `folder` (or discards it). Raises InputError for
    input that cannot be used, JobCancelled when `cancelled` turns true.
    """
    started, model_before = time.monotonic(), engine.model_seconds
    work = work_area.job(request.label)
    try:
        loaded = decode_track(engine.info, config, request.path, work, cancelled)
        check_room(engine.info, outbox, config, loaded, request.relative)
        stems = separate_track(engine, loaded, progress, cancelled)
        try:
            timing = Timing(time.monotonic() - started, engine.model_seconds - model_before)
            return write_stems(
                engine.info,
                outbox,
                config,
                request,
                stems,
                loaded,
                timing,
                progress,
                cancelled,
            )
        finally:
            stems.close()
    finally:
        work.remove()
