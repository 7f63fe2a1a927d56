"""The Demucs model: loaded once, then used for every separation.

This is the only module that imports torch model code. Separation computes what
`python -m demucs.separate` computes (demucs.api.Separator.separate_tensor): the
mix is normalised by the mean and std of its mono reference, run through
`demucs.apply.apply_model`'s arithmetic with the same shifts/overlap/segment
(batched and streamed: stemd.separation.batching, stemd.separation.streaming), and scaled back. A
track is read from its work file a window at a time and its stems leave in
regions, so memory does not grow with its length.

On CUDA: inputs go through pinned host memory with non-blocking copies, cuDNN
picks its fastest kernels (`cudnn.benchmark`), outputs come straight back to the
host, and an out-of-memory error halves the batch (down to 1) and then moves the
model to the CPU, with a warning each time.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import huggingface_hub.constants
import torch
from demucs.apply import BagOfModels
from demucs.htdemucs import HTDemucs
from demucs.pretrained import get_model

from stemd.config import ModelConfig
from stemd.errors import ConfigError, ConfigIssue, JobCancelled, ModelError
from stemd.separation.backends import (
    MemberForward,
    Preparer,
    StepHook,
    common_precision,
    members,
    resolve_precision,
)
from stemd.separation.batching import model_valid_length, segment_length
from stemd.separation.cpu import ThreadPlan, plan_threads
from stemd.separation.exports import ExportStore
from stemd.separation.modelcache import cached_files, check_reachable, model_caches
from stemd.separation.modelnames import BUILT_IN, HUB_PREFIX
from stemd.separation.streaming import (
    MixSource,
    NormalisedSource,
    RawFrames,
    RegionSink,
    TensorSource,
    separate_streamed,
)
from stemd.separation.workfiles import MixStats

log = logging.getLogger("stemd")

ProgressHook = Callable[[float], None]
CancelCheck = Callable[[], bool]

# batch_size: auto. On CPU one chunk per pass: on this project's 2-core CI machine a
# full-size HTDemucs took 4.6 s for one chunk alone and 7.9 s per chunk in a batch
# of 2 (the convolutions already use every core). On CUDA: as many as fit in
# AUTO_MEMORY_SHARE of the free memory, by a measured batch of 1, at most
# AUTO_MAX_BATCH.
AUTO_MAX_BATCH = 16
AUTO_MEMORY_SHARE = 0.6
# stems leave a streamed separation in regions of at least this much audio: few
# enough writes, and a window of output a few chunks long
SINK_REGION_SECONDS = 10.0
# exported networks, below state_dir (stemd.separation.exports)
EXPORTS = "exports"


def worker_devices(config: ModelConfig) -> list[str]:
    """One device name per worker: model.device expanded (all = every CUDA
    device, else the CPU), each taken model.workers times. Unknown or missing
    devices are refused when a worker's engine resolves its own."""
    names: list[str] = []
    for name in config.devices:
        if name == "all":
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            names.extend([f"cuda:{i}" for i in range(count)] or ["cpu"])
        else:
            names.append(name)
    return [name for name in names for _ in range(config.workers)]


def worker_precision(config: ModelConfig) -> str:
    """model.precision as every worker runs it (one for all: see common_precision)."""
    resolved = {
        name: resolve_precision(config.precision, resolve_device(name))
        for name in set(worker_devices(config))
    }
    return common_precision(resolved)


def cpu_threads(config: ModelConfig) -> ThreadPlan:
    """The one place a forward pass's CPU threads are set, for every runtime:
    model.threads, else the physical cores shared among the workers on the CPU
    (stemd.separation.cpu.plan_threads). Applied to torch here (its intra-op pool
    is the process's; each worker thread runs its own team of that size); OpenVINO
    is compiled with the same number. Idempotent: every engine computes the same."""
    devices = worker_devices(config)
    on_cpu = sum(1 for name in devices if resolve_device(name).type == "cpu")
    plan = plan_threads(on_cpu, config.threads)
    torch.set_num_threads(plan.intra_op)
    with contextlib.suppress(RuntimeError):  # settable only before torch's first parallel work
        torch.set_num_interop_threads(plan.inter_op)
    return plan


def in_container() -> bool:
    """Whether stemd runs in a container (its image says so; docker and podman
    leave a mark too): what to say when a GPU is not visible differs."""
    return bool(os.environ.get("STEMD_CONTAINER")) or any(
        Path(mark).exists() for mark in ("/.dockerenv", "/run/.containerenv")
    )


def no_gpu_reason() -> str:
    """Why torch sees no GPU, in the terms of where stemd runs."""
    if torch.version.cuda is None:
        return (
            f"this torch ({torch.__version__}) is a CPU build; install the CUDA build of "
            "torch (or, in a container, the image built with TORCH=cuda)"
        )
    if in_container():
        return (
            "no GPU is visible in this container: it was started without one (docker: "
            "--gpus all, or the compose file's NVIDIA device reservation; podman: "
            "--device nvidia.com/gpu=all), or the host lacks the NVIDIA container toolkit"
        )
    return "no GPU is visible: check the NVIDIA driver (`nvidia-smi`)"


def cpu_fallback_note(requested: str) -> tuple[int, str] | None:
    """(log level, words) when model.device: auto runs on the CPU: a warning when
    this torch was built for CUDA and sees no GPU (a GPU image or install whose GPU
    is not visible), a note when it is a CPU build: never a silent fallback."""
    if requested != "auto" or torch.cuda.is_available():
        return None
    level = logging.INFO if torch.version.cuda is None else logging.WARNING
    return level, f"model.device auto: {no_gpu_reason()}; separating on the CPU"


def resolve_device(requested: str) -> torch.device:
    """auto = the first CUDA device when there is one, else the CPU."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelError(
                f"model.device is {requested} but no CUDA device is usable here: "
                f"{no_gpu_reason()}. Or set model.device: auto or cpu."
            )
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise ModelError(
                f"model.device is {requested} but only {torch.cuda.device_count()} CUDA "
                "device(s) exist; use cuda:0 ... or auto."
            )
    return device


def model_folder_name(name: str) -> str:
    """The `{model}` placeholder, as the demucs CLI names its output folder."""
    return name.replace("hf://", "").replace("/", "_")


def missing_weights_help(name: str, repo: Path | None) -> str:
    hf_home, torch_home = model_caches()
    where = f"the model repo {repo}" if repo else f"the model cache ({hf_home}, {torch_home})"
    return (
        f"cannot load model {name!r} from {where}. stemd needs the weights on disk when "
        "this machine cannot download them. Either: (1) on a connected machine run "
        f"`stemd models fetch {name}` with the same model.cache, then copy that folder to "
        "this machine's model.cache; or (2) put the model's .th files and its .yaml bag "
        "file in a folder and set model.repo to it; or (3) let this machine reach "
        "huggingface.co once."
    )


_SEEDED_LOAD = threading.Lock()


def load_model(name: str, repo: Path | None, fetching: bool = False) -> Any:
    """demucs' own get_model, with its failures turned into a ModelError.

    A name from the hub is looked up in the caches first, and the hub asked once
    whether it can be reached: weights on disk load without it (no requests),
    and missing ones fail at once with one message instead of the hub's retries.
    """
    if repo is not None and not repo.is_dir():
        raise ModelError(f"model.repo {repo} is not a folder; create it or fix the path")
    check_reachable(name, repo, fetching)
    try:
        # A model built rather than read (demucs_unittest: random weights) is built
        # from one seed, so every worker, host and restart loads the same weights:
        # the weights are part of the output profile jobs are keyed and claimed by.
        # Weights read from a file overwrite what the seed drew.
        # (one load at a time: the seed is the process's one random generator, and
        # workers applying a reload load at once)
        with _SEEDED_LOAD, torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = get_model(name=name, repo=repo)
    except SystemExit as exc:  # demucs calls sys.exit through `fatal` on some failures
        raise ModelError(f"{missing_weights_help(name, repo)} (demucs exited: {exc})") from None
    except Exception as exc:
        raise ModelError(f"{missing_weights_help(name, repo)} Cause: {exc}") from None
    if model is None:
        raise ModelError(missing_weights_help(name, repo))
    return model


def stems_issue(
    sources: tuple[str, ...], model: str, stems: tuple[str, ...], source: str, key: str
) -> ConfigIssue | None:
    """The stems named under `key` that `model` does not give, if any."""
    unknown = [stem for stem in stems if stem not in sources]
    if not unknown:
        return None
    return ConfigIssue(
        source,
        key,
        f"{', '.join(map(repr, unknown))}: not among the stems of {model}; "
        f"use some of {', '.join(sources)}",
    )


def check_segment(model: Any, config: ModelConfig) -> None:
    """ConfigError when model.segment is longer than the model was trained for."""
    segment = config.segment
    if segment is None:
        return
    limit = float("inf")
    if isinstance(model, HTDemucs):
        limit = float(model.segment)
    elif isinstance(model, BagOfModels):
        limit = model.max_allowed_segment
    if segment > limit:
        raise ConfigError.single(
            "model",
            "model.segment",
            f"{segment}s is longer than {config.name} was trained for; at most {limit:g}s",
        )


def model_sources(config: ModelConfig) -> tuple[str, ...] | None:
    """The stems model.name gives, read by loading it from disk (the repo, the
    caches, or the built-in) on the CPU and letting it go, with model.segment checked
    against it; None for a hub model not downloaded yet. No request is made: the
    cache is read offline (`stemd check` asks this; a one-shot command)."""
    name, repo = config.name, config.repo
    if repo is None and name != BUILT_IN:
        if cached_files(name.removeprefix(HUB_PREFIX)) is None:
            return None
        huggingface_hub.constants.HF_HUB_OFFLINE = True  # the cache as it is: no request
    model = load_model(name, repo)
    check_segment(model, config)
    return tuple(model.sources)


def weights_fingerprint(model: torch.nn.Module) -> str:
    """A short hash of every parameter and buffer: the weights' identity."""
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    if isinstance(model, BagOfModels):
        digest.update(repr(model.weights).encode())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class ModelInfo:
    name: str
    folder: str  # the {model} placeholder
    samplerate: int
    audio_channels: int
    sources: tuple[str, ...]
    weights: str  # fingerprint
    device: str
    models_in_bag: int
    backend: str = "torch"  # what runs the forward pass: torch, openvino, openvino+torch
    precision: str = "fp32"  # as it runs (model.precision auto resolved)


class Engine:
    """One preloaded model on one device."""

    def __init__(
        self,
        config: ModelConfig,
        device: str | None = None,
        exports: Path | None = None,
        on_step: StepHook | None = None,
        beat: Callable[[], None] | None = None,
    ) -> None:
        """`device`: this engine's own (a worker's, from worker_devices);
        None takes model.device's first. `exports`: where exported networks are
        kept (state_dir/exports); None runs every model in torch. `on_step` hears
        of each long step of preparing them (an export); `beat` is called through
        them (a worker's heartbeat: they may take minutes)."""
        self.config = config
        requested = device or config.devices[0]
        self.device = resolve_device(requested)
        self.precision = worker_precision(config)
        fallback = cpu_fallback_note(requested)
        if fallback is not None:
            log.log(fallback[0], "%s", fallback[1])
        started = time.monotonic()
        model = load_model(config.name, config.repo)
        model.eval()
        try:
            model.to(self.device)
        except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
            raise ModelError(f"cannot move model {config.name!r} to {self.device}: {exc}") from None
        self.model = model
        # seconds spent in forward passes since the model was loaded, the warm-up
        # included: a caller takes the difference around a separation
        self.model_seconds = 0.0
        self._batch_size: int | None = None
        self._check_segment()
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # chunks have one shape: worth tuning
            tf32 = config.precision == "tf32"
            torch.backends.cuda.matmul.allow_tf32 = tf32
            torch.backends.cudnn.allow_tf32 = tf32
        self._forwards: dict[int, MemberForward] = {}
        weights = weights_fingerprint(model)  # hashes every weight: once per load
        backend = self._prepare_backend(exports, on_step, beat, weights)
        self.info = ModelInfo(
            name=config.name,
            folder=model_folder_name(config.name),
            samplerate=int(model.samplerate),
            audio_channels=int(model.audio_channels),
            sources=tuple(model.sources),
            weights=weights,
            device=str(self.device),
            models_in_bag=len(members(model)),
            backend=backend,
            precision=self.precision,
        )
        log.info(
            "model %s loaded on %s (%s, %s) in %.1fs (%d Hz, %d channels, stems: %s)",
            config.name,
            self.device,
            backend,
            self.precision,
            time.monotonic() - started,
            self.info.samplerate,
            self.info.audio_channels,
            ", ".join(self.info.sources),
        )

    def _prepare_backend(
        self,
        exports: Path | None,
        on_step: StepHook | None,
        beat: Callable[[], None] | None,
        weights: str,
    ) -> str:
        """model.backend on this engine's device: which models another runtime
        runs (stemd.separation.backends); returns what runs them."""
        requested = self.config.backend
        if self.device.type != "cpu":
            if requested == "openvino":
                log.warning(
                    "model.backend openvino runs on the CPU only; torch runs on %s", self.device
                )
            return "torch"
        threads = cpu_threads(self.config)
        if requested == "torch":
            return "torch"
        if exports is None:  # a one-shot command keeps no state to keep an export in
            return "torch"
        preparer = Preparer(
            requested,
            self.precision,
            threads,
            self.batch_size(),
            ExportStore(exports),
            # a single model's export key is its fingerprint, hashed already
            lambda member: weights if member is self.model else weights_fingerprint(member),
            on_step,
            beat,
        )
        prepared = preparer.prepare(self.model, self.config.name)
        self._forwards = prepared.forwards
        return prepared.backend

    def check_stem(self, stem: str | None, source: str, key: str) -> None:
        """Raise ConfigError unless `stem` (output.two_stems) is one of the model's."""
        if stem is not None:
            self.check_stems((stem,), source, key)

    def check_stems(self, stems: tuple[str, ...] | None, source: str, key: str) -> None:
        """Raise ConfigError unless every stem named (output.stems) is the model's."""
        issue = stems_issue(self.info.sources, self.config.name, stems or (), source, key)
        if issue is not None:
            raise ConfigError([issue])

    def _check_segment(self) -> None:
        check_segment(self.model, self.config)

    def _first_model(self) -> Any:
        """The model itself, or the first of a bag."""
        return members(self.model)[0]

    @contextlib.contextmanager
    def _precision(self) -> Iterator[None]:
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        if dtype is None:
            yield
            return
        with torch.autocast(device_type=self.device.type, dtype=dtype):
            yield

    # -- batches and devices ------------------------------------------------------

    def batch_size(self) -> int:
        """model.batch_size, with auto resolved on first use (see AUTO_MAX_BATCH)."""
        if self._batch_size is None:
            setting = self.config.batch_size
            if setting != "auto":
                self._batch_size = int(setting)
            elif self.device.type != "cuda":
                self._batch_size = 1
            else:
                self._batch_size = self._measure_cuda_batch()
                log.info("model.batch_size auto: %d on %s", self._batch_size, self.device)
        return self._batch_size

    def _measure_cuda_batch(self) -> int:
        """Run one chunk and see what it costs; fill a share of what is free."""
        length = segment_length(self._first_model(), self.config.segment)
        probe = torch.zeros(1, self.info.audio_channels, length)
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        before = torch.cuda.memory_allocated(self.device)
        self._run_on_device(self._first_model(), probe)
        per_chunk = max(1, torch.cuda.max_memory_allocated(self.device) - before)
        free, _total = torch.cuda.mem_get_info(self.device)
        return max(1, min(AUTO_MAX_BATCH, int(free * AUTO_MEMORY_SHARE / per_chunk)))

    def _run_on_device(self, model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        else:
            batch = batch.to(self.device)
        started = time.perf_counter()
        runtime = self._forwards.get(id(model))
        try:
            if runtime is not None:  # another runtime, at its own precision
                with torch.no_grad():
                    out: torch.Tensor = runtime(batch)
            else:
                with torch.no_grad(), self._precision():
                    out = model(batch)
            # the copy to the host also waits for an asynchronous GPU to finish
            return out.float().to("cpu")  # the track's buffers stay on the host
        finally:
            self.model_seconds += time.perf_counter() - started

    def _forward(self, model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
        """One forward pass. Out of (GPU) memory: halve the batch, down to 1 chunk;
        a single chunk that does not fit on CUDA moves the model to the CPU."""
        try:
            return self._run_on_device(model, batch)
        except torch.cuda.OutOfMemoryError:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            if len(batch) == 1 and self.device.type != "cuda":
                raise
        if len(batch) > 1:
            half = (len(batch) + 1) // 2
            if half < self.batch_size():
                log.warning(
                    "out of memory with %d chunks per pass on %s; using %d from now on",
                    len(batch),
                    self.device,
                    half,
                )
                self._batch_size = half
            return torch.cat([self._forward(model, part) for part in torch.split(batch, half)])
        log.warning(
            "out of GPU memory with a single chunk on %s: moving the model to the CPU "
            "(slower; restart stemd to try the GPU again)",
            self.device,
        )
        self.device = torch.device("cpu")
        self.model.to(self.device)  # `model` is it, or one of its bag
        self.info = replace(self.info, device="cpu")
        return self._run_on_device(model, batch)

    def warm_up(self, stop: CancelCheck | None = None) -> float:
        """One forward pass of silence through each model, at the size real chunks
        have; the seconds it took.

        A model's first pass costs far more than later ones (on CPU: oneDNN builds
        its kernels and the allocator grows; on CUDA: cuDNN benchmarks its kernels,
        and auto batch_size is measured). A preloaded model takes that cost when it
        is loaded, not in the first track's separation.
        """
        started = time.monotonic()
        batch = self.batch_size()
        models = members(self.model)
        for model in models:
            if stop is not None and stop():
                break
            length = segment_length(model, self.config.segment)
            valid = model_valid_length(model, length, self.config.segment)
            self._forward(model, torch.zeros(batch, self.info.audio_channels, valid))
        return time.monotonic() - started

    def separate(
        self,
        wav: torch.Tensor,
        progress: ProgressHook | None = None,
        cancelled: CancelCheck | None = None,
    ) -> dict[str, torch.Tensor]:
        """Separate a [channels, samples] mix held in memory into {stem: [C, T]}
        (short audio: tests, `separate_stream` for tracks)."""
        ref = wav.mean(0)
        mean = ref.mean()
        std = ref.std() + 1e-8
        regions: list[torch.Tensor] = []
        self._separate(
            TensorSource((wav.cpu() - mean) / std),
            lambda _start, region: regions.append(region.mul_(std).add_(mean)),
            progress,
            cancelled,
        )
        out = torch.cat(regions, -1)
        return dict(zip(self.info.sources, out, strict=True))

    def separate_stream(
        self,
        mix: RawFrames,
        stats: MixStats,
        sink: RegionSink,
        progress: ProgressHook | None = None,
        cancelled: CancelCheck | None = None,
    ) -> None:
        """Separate a mix read from `mix` (its frames at the model's rate and
        channels) into `sink`, which gets [sources, channels, n] regions in
        order. `stats` are the mix's normalisation statistics."""
        source = NormalisedSource(mix, stats)

        def scaled_back(start: int, region: torch.Tensor) -> None:
            sink(start, source.denormalise(region))

        self._separate(source, scaled_back, progress, cancelled, SINK_REGION_SECONDS)

    def _separate(
        self,
        source: MixSource,
        sink: RegionSink,
        progress: ProgressHook | None,
        cancelled: CancelCheck | None,
        region_seconds: float = 0.0,
    ) -> None:
        """`progress` gets the fraction done after each forward pass; `cancelled`
        is asked before each one and, when true, stops with JobCancelled."""

        def forward(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
            if cancelled is not None and cancelled():
                raise JobCancelled("cancelled at a chunk boundary")
            return self._forward(model, batch)

        def on_batch(done: int, total: int) -> None:
            if progress is not None:
                progress(done / total)

        separate_streamed(
            self.model,
            source,
            sink,
            forward,
            self.batch_size(),
            shifts=self.config.shifts,
            overlap=self.config.overlap,
            segment=self.config.segment,
            on_batch=on_batch,
            min_region=int(region_seconds * self.info.samplerate),
        )
