"""Which runtime runs each model's forward pass: model.backend, and auto's measurement.

torch runs every model on every device. On the CPU an HTDemucs (each one of a
bag) can instead have its network run by OpenVINO (stemd.separation.openvino_net),
the host side staying in torch (stemd.separation.cutgraph). Whatever is asked for,
a network runs in OpenVINO only after it has passed the parity check on this
machine: one chunk of noise through both, the stems within PARITY_MAX_DIFF of
torch's and at least PARITY_SI_SDR_DB above the difference (bf16: BF16_SI_SDR_DB,
as bf16 differs from fp32 by itself). An export that fails or does not match
leaves that model on torch, with one warning that says why.

auto: on the first start with a model, threads and precision, one pass of each
runtime warms it up and TIMED_PASSES passes of each (taken in turn) are timed; the
faster keeps the model, and the choice and its times are kept beside the export
(AUTO_RECORD), so later starts read them instead of measuring again.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from demucs.apply import BagOfModels

from stemd.separation.batching import segment_length
from stemd.separation.cpu import ThreadPlan, native_bf16
from stemd.separation.cutgraph import CutForward, Network, why_not_cut
from stemd.separation.exports import Export, ExportKey, ExportStore

log = logging.getLogger("stemd")

PARITY_MAX_DIFF = 5e-4
PARITY_SI_SDR_DB = 60.0
BF16_SI_SDR_DB = 30.0
TIMED_PASSES = 3
AUTO_RECORD = "auto-{threads}t-{precision}.json"
PARITY_SEED = 1234

# one member model's forward pass: a batch of chunks in, [batch, sources, C, T] out
MemberForward = Callable[[torch.Tensor], torch.Tensor]
# told of each step of a long preparation (an export takes minutes for a bag)
StepHook = Callable[[str], None]


def resolve_precision(requested: str, device: torch.device) -> str:
    """model.precision as it runs on `device`: auto and bf16 become bf16 on a CPU
    only where it computes bf16 itself (elsewhere bf16 is emulated, dozens of times
    slower), fp32 otherwise; tf32 and fp16 are a GPU's (fp32 on a CPU); auto is fp32
    on a GPU."""
    if device.type != "cpu":
        return "fp32" if requested == "auto" else requested
    if requested in ("auto", "bf16"):
        if native_bf16():
            return "bf16"
        if requested == "bf16":
            log.warning(
                "model.precision bf16: this CPU has no native bf16 (AVX-512 BF16 or AMX), "
                "where it is emulated and far slower; separating in fp32"
            )
        return "fp32"
    if requested == "fp16":
        log.warning("model.precision fp16 is for GPUs (a CPU emulates it); fp32 on the CPU")
    return "fp32"


def common_precision(resolved: dict[str, str]) -> str:
    """One precision for every worker of a daemon, from what each device would run
    ({device: precision}): they share one queue of jobs keyed by it, so workers at
    different precisions would never take each other's jobs. Where the devices
    disagree, fp32 for all, with a warning."""
    values = set(resolved.values())
    if len(values) <= 1:
        return values.pop() if values else "fp32"
    log.warning(
        "model.precision resolves differently on %s; every worker runs fp32, so all of "
        "them take the same jobs",
        ", ".join(f"{device} ({value})" for device, value in sorted(resolved.items())),
    )
    return "fp32"


def si_sdr_db(reference: torch.Tensor, estimate: torch.Tensor) -> float:
    """Scale-invariant SDR of `estimate` against `reference`, in dB, over all of it."""
    ref = reference.double().flatten()
    est = estimate.double().flatten()
    target = (est @ ref) / max(float(ref @ ref), 1e-30) * ref
    noise = est - target
    return float(10 * torch.log10((target @ target) / max(float(noise @ noise), 1e-30)))


@dataclass
class Parity:
    max_diff: float
    si_sdr_db: float

    def passes(self, precision: str) -> bool:
        if precision == "bf16":
            return self.si_sdr_db >= BF16_SI_SDR_DB
        return self.max_diff <= PARITY_MAX_DIFF and self.si_sdr_db >= PARITY_SI_SDR_DB

    def __str__(self) -> str:
        return f"max difference {self.max_diff:.1e}, SI-SDR {self.si_sdr_db:.1f} dB"


def parity_chunk(model: Any, batch: int) -> torch.Tensor:
    """A full-scale chunk of noise at the network's shape, the same every time."""
    generator = torch.Generator().manual_seed(PARITY_SEED)
    shape = (batch, int(model.audio_channels), segment_length(model, None))
    return (torch.randn(shape, generator=generator) * 0.3).clamp_(-1, 1)


def check_parity(model: Any, forward: MemberForward, batch: int) -> Parity:
    chunk = parity_chunk(model, batch)
    with torch.no_grad():
        expected = model(chunk)
        got = forward(chunk)
    return Parity(float((got - expected).abs().max()), si_sdr_db(expected, got))


@dataclass
class Prepared:
    """How one engine's models run: a forward per model that does not run in
    torch, what runs them all, at what precision."""

    forwards: dict[int, MemberForward] = field(default_factory=dict)  # by id(model)
    backend: str = "torch"
    precision: str = "fp32"


def members(model: Any) -> list[Any]:
    return list(model.models) if isinstance(model, BagOfModels) else [model]


class Preparer:
    """Prepares one engine's models for model.backend (see the module's words)."""

    def __init__(
        self,
        requested: str,
        precision: str,
        threads: ThreadPlan,
        batch: int,
        store: ExportStore,
        fingerprint: Callable[[Any], str],
        on_step: StepHook | None = None,
        beat: Callable[[], None] | None = None,
    ) -> None:
        """`on_step` hears of each long step in words (an export, auto's timing);
        `beat` is called between the parts of a long wait or measurement (a
        worker's heartbeat, so the watchdog does not take it for a hang)."""
        self.requested = requested
        self.precision = precision
        self.threads = threads
        self.batch = batch
        self.store = store
        self.fingerprint = fingerprint
        self.on_step = on_step or (lambda _words: None)
        self.beat = beat or (lambda: None)

    def prepare(self, model: Any, name: str) -> Prepared:
        prepared = Prepared(backend="torch", precision=self.precision)
        all_members = members(model)
        for index, member in enumerate(all_members):
            which = (
                name
                if len(all_members) == 1
                else f"{name} (model {index + 1} of {len(all_members)})"
            )
            forward = self._prepare_member(member, which)
            self.beat()
            if forward is not None:
                prepared.forwards[id(member)] = forward
        if prepared.forwards:
            prepared.backend = "openvino"
            if len(prepared.forwards) < len(all_members):
                prepared.backend = "openvino+torch"
        return prepared

    def _prepare_member(self, member: Any, which: str) -> MemberForward | None:
        reason = why_not_cut(member)
        if reason is not None:
            level = logging.WARNING if self.requested == "openvino" else logging.INFO
            log.log(level, "model.backend %s: %s runs in torch: %s", self.requested, which, reason)
            return None
        try:
            from stemd.separation import openvino_net
        except ImportError as exc:
            log.warning(
                "model.backend %s: OpenVINO cannot be imported (%s); torch runs %s",
                self.requested,
                exc,
                which,
            )
            return None
        key = ExportKey(
            runtime=openvino_net.RUNTIME,
            runtime_version=openvino_net.VERSION,
            model_class=type(member).__name__,
            weights=self.fingerprint(member),
            length=segment_length(member, None),
            batch=self.batch,
            toolchain=openvino_net.TOOLCHAIN,
        )
        try:
            # the lock covers finding, making, checking and auto's measurement: a
            # second worker waits and then reads what the first one found
            with self.store.locked(key, on_wait=self.beat):
                return self._checked(member, key, which, openvino_net)
        except PermissionError as exc:
            log.warning(
                "model.backend %s: %s stays on torch: %s: permission denied. The exports "
                "in %s belong to another user: run `stemd models export` as the daemon's "
                "user (sudo -u stemd stemd models export -c CONFIG), or give that folder "
                "to it",
                self.requested,
                which,
                exc.filename or exc,
                self.store.root,
            )
        except Exception as exc:
            log.warning(
                "model.backend %s: %s stays on torch: the OpenVINO export or its check failed: %s",
                self.requested,
                which,
                _short(exc),
            )
        return None

    def _checked(
        self, member: Any, key: ExportKey, which: str, openvino_net: Any
    ) -> MemberForward | None:
        """The member's OpenVINO forward once it matched torch here, or None."""
        expected = (openvino_net.XML, openvino_net.BIN)
        export, damaged = self.store.find(key, expected)
        fresh = export is None
        if export is not None:
            log.info(
                "%s: loaded the OpenVINO export from %s (made in %.1fs, not made again)",
                which,
                export.folder,
                export.export_seconds,
            )
        else:
            if damaged is not None:
                log.warning(
                    "%s: the OpenVINO export is unusable (%s); exporting it again", which, damaged
                )
            export = self._build(member, key, which, openvino_net)
        forward, parity = self._load(member, export, openvino_net)
        if not parity.passes(self.precision) and not fresh:
            # whole on disk but not this model's any more (made by another version
            # of something the key does not name): made again, once
            log.warning(
                "%s: the kept OpenVINO export does not match torch (%s); exporting it again",
                which,
                parity,
            )
            export = self._build(member, key, which, openvino_net)
            forward, parity = self._load(member, export, openvino_net)
        if not parity.passes(self.precision):
            log.warning(
                "model.backend %s: %s stays on torch: OpenVINO's stems differ from torch's "
                "(%s; allowed %s)",
                self.requested,
                which,
                parity,
                self._allowed(),
            )
            return None
        log.info("%s: OpenVINO matches torch (%s, %s)", which, parity, self.precision)
        if self.requested == "auto" and not self._auto_picks_openvino(
            member, forward, export, which
        ):
            return None
        return forward

    def _load(self, member: Any, export: Export, openvino_net: Any) -> tuple[MemberForward, Parity]:
        network = openvino_net.OpenVinoNetwork(
            export.path(openvino_net.XML), self.threads.intra_op, self.precision == "bf16"
        )
        forward = CutForward(member, network)
        return forward, check_parity(member, forward, self.batch)

    def _build(self, member: Any, key: ExportKey, which: str, openvino_net: Any) -> Export:
        self.on_step(f"exporting {which} for OpenVINO")
        log.info(
            "%s: exporting the network for OpenVINO into %s (once per model and "
            "setting; a full-size htdemucs took 10-20 s on two cores)",
            which,
            self.store.folder(key),
        )
        network = Network(member).eval()
        state = CutForward(member, network).host_in(parity_chunk(member, self.batch))
        export = self.store.build(
            key, lambda folder: openvino_net.export_network(network, state.x, state.xt, folder)
        )
        log.info("%s: exported in %.1fs", which, export.export_seconds)
        return export

    def _allowed(self) -> str:
        if self.precision == "bf16":
            return f"SI-SDR at least {BF16_SI_SDR_DB:g} dB in bf16"
        return f"at most {PARITY_MAX_DIFF:g} and at least {PARITY_SI_SDR_DB:g} dB"

    def _auto_picks_openvino(
        self, member: Any, forward: MemberForward, export: Export, which: str
    ) -> bool:
        record_name = AUTO_RECORD.format(threads=self.threads.intra_op, precision=self.precision)
        record = _valid_record(self.store.recall(export, record_name))
        where = f"kept in {export.folder / record_name}"
        if record is None:
            self.on_step(f"timing torch and OpenVINO on {which}")
            record = self._measure(member, forward)
            how = "measured now"
            try:
                self.store.remember(export, record_name, record)
            except OSError as exc:
                where = (
                    f"not kept: {exc.strerror or exc} ({export.folder}); measured again next start"
                )
        else:
            how = f"as measured on {record.get('measured', 'an earlier start')}"
        chosen = str(record["chosen"])
        seconds = record["seconds"]
        log.info(
            "model.backend auto: %s for %s, %s: OpenVINO %.2fs a pass, torch %.2fs "
            "(median of %d, %d thread(s), %s; %s)",
            "OpenVINO" if chosen == "openvino" else "torch",
            which,
            how,
            seconds["openvino"],
            seconds["torch"],
            TIMED_PASSES,
            self.threads.intra_op,
            self.precision,
            where,
        )
        return chosen == "openvino"

    def _measure(self, member: Any, forward: MemberForward) -> dict[str, Any]:
        chunk = parity_chunk(member, self.batch)

        def torch_pass() -> None:
            with torch.no_grad(), _autocast(self.precision):
                member(chunk)

        def openvino_pass() -> None:
            with torch.no_grad():
                forward(chunk)

        runs: dict[str, Callable[[], None]] = {"torch": torch_pass, "openvino": openvino_pass}
        times: dict[str, list[float]] = {name: [] for name in runs}
        for run in runs.values():
            run()  # the first pass builds kernels: not timed
            self.beat()
        for _ in range(TIMED_PASSES):
            for name, run in runs.items():
                started = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - started)
                self.beat()
        medians = {name: statistics.median(values) for name, values in times.items()}
        return {
            "chosen": min(medians, key=lambda name: medians[name]),
            "seconds": {name: round(value, 4) for name, value in medians.items()},
            "passes": {name: [round(t, 4) for t in values] for name, values in times.items()},
            "measured": time.strftime("%Y-%m-%d %H:%M"),
        }


def _valid_record(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """auto's record as it was written, or None (absent, or edited into nonsense:
    then it is measured again)."""
    if record is None or record.get("chosen") not in ("torch", "openvino"):
        return None
    seconds = record.get("seconds")
    if not isinstance(seconds, dict):
        return None
    if not all(isinstance(seconds.get(name), (int, float)) for name in ("torch", "openvino")):
        return None
    return record


def _autocast(precision: str) -> Any:
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def _short(exc: BaseException) -> str:
    words = str(exc).strip().splitlines()
    return words[0][:300] if words else type(exc).__name__
