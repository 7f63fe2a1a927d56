"""Demucs models that the tests can watch and steer from outside the daemon.

They are real Demucs architectures, saved into a local model repo and loaded by
demucs' own code in the daemon (which needs the tests folder on PYTHONPATH to
unpickle them). Environment variables name the files that steer them:

- $STEMD_TEST_RECORD: every forward pass over audio appends one JSON line
  (`t`, `pid`, `seconds`: how much audio the chunk held) before it runs. The
  count of these lines is the evidence that a separation happened, whatever
  stemd logs about it. Tests that count separations use tracks shorter than one
  chunk and shifts 1: one line is then one separation.
- $STEMD_TEST_GATE, a folder: while it has no `open` file in it, a pass over
  audio marks `entered` and waits (bounded) for `open` to appear. With
  $STEMD_TEST_GATE_AFTER=N the first N passes over audio in a process go
  through, so a separation can be held after it has begun.
- $STEMD_TEST_FAIL, a file: while it exists, a pass over audio raises
  RuntimeError (as a driver error or a bad weight file would).

Silence passes untouched and unrecorded: it is the daemon's warm-up, not a track.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from demucs.demucs import Demucs
from demucs.hdemucs import HDemucs
from demucs.htdemucs import HTDemucs

if TYPE_CHECKING:  # the daemon imports this module to unpickle the model: keep it light
    from support.daemon import Daemon

RECORD_ENV = "STEMD_TEST_RECORD"
GATE_ENV = "STEMD_TEST_GATE"
GATE_AFTER_ENV = "STEMD_TEST_GATE_AFTER"
FAIL_ENV = "STEMD_TEST_FAIL"
MAX_HANG_S = 600.0
TESTS_DIR = Path(__file__).resolve().parents[1]  # on the daemon's PYTHONPATH

_passes = 0  # passes over audio in this process, for $STEMD_TEST_GATE_AFTER


def _before_pass(mix: torch.Tensor, samplerate: int) -> None:
    global _passes
    if not bool(mix.any()):
        return
    record = os.environ.get(RECORD_ENV)
    if record:
        for chunk in mix:
            # zeros are padding: the track's normalised audio is never exactly 0
            seconds = int(chunk.abs().sum(0).count_nonzero()) / samplerate
            line = json.dumps({"t": time.time(), "pid": os.getpid(), "seconds": seconds})
            with open(record, "a", encoding="utf-8") as out:
                out.write(line + "\n")
    fail = os.environ.get(FAIL_ENV)
    if fail and Path(fail).exists():
        raise RuntimeError("the test model fails on request")
    _passes += 1
    gate = os.environ.get(GATE_ENV)
    if gate and _passes > int(os.environ.get(GATE_AFTER_ENV, "0")):
        folder = Path(gate)
        deadline = time.monotonic() + MAX_HANG_S
        while not (folder / "open").exists() and time.monotonic() < deadline:
            (folder / "entered").touch()
            time.sleep(0.05)  # simulating a hung GPU call: nothing to wait on


class InstrumentedHTDemucs(HTDemucs):
    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        _before_pass(mix, self.samplerate)
        out: torch.Tensor = super().forward(mix)
        return out


class InstrumentedHDemucs(HDemucs):
    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        _before_pass(mix, self.samplerate)
        out: torch.Tensor = super().forward(mix)
        return out


class InstrumentedDemucs(Demucs):
    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        _before_pass(mix, self.samplerate)
        out: torch.Tensor = super().forward(mix)
        return out


class PassthroughDemucs(Demucs):
    """A Demucs whose forward pass is almost free: each stem is the chunk itself,
    scaled by 1/4. For tests of what surrounds the model (memory on hours of
    audio: decoding, work files, the streamed sums, encoding), where a real
    network's arithmetic would only add minutes. Loaded by demucs' own code."""

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        _before_pass(mix, self.samplerate)
        stems = mix[:, None].expand(-1, len(self.sources), -1, -1)
        return stems / len(self.sources)


# Model names in the repo that build_instrumented_repo makes.
GATED = "gated"  # tiny HTDemucs (4 s chunks): long tracks take many passes
# demucs_unittest's architecture with 5 s chunks, not its 40: one pass a track
# (the tests' tracks are at most 4 s, 4.5 with the shift), an eighth of the cost
RECORDER = "recorder"
FEATHER = "feather"  # the featherweight Demucs of the load tests
PASSTHROUGH = "passthrough"  # stems that cost nothing (10 s chunks): hours of audio


def build_instrumented_repo(repo: Path) -> Path:
    """A local model repo with the instrumented models; returns it."""
    from support.models import FEATHER_DEMUCS, SOURCES, TINY_HTDEMUCS, save_model

    torch.manual_seed(0)
    save_model(InstrumentedHTDemucs(sources=SOURCES, **TINY_HTDEMUCS), repo, "9a8b7c6d")
    save_model(InstrumentedHDemucs(sources=SOURCES, channels=4, segment=5), repo, "5e1f2a3b")
    save_model(InstrumentedDemucs(sources=SOURCES, **FEATHER_DEMUCS), repo, "fea7f1e5")
    passthrough = {**FEATHER_DEMUCS, "segment": 10}
    save_model(PassthroughDemucs(sources=SOURCES, **passthrough), repo, "9a55c0de")
    models = ((GATED, "9a8b7c6d"), (RECORDER, "5e1f2a3b"), (FEATHER, "fea7f1e5"))
    for name, signature in (*models, (PASSTHROUGH, "9a55c0de")):
        (repo / f"{name}.yaml").write_text(f"models: ['{signature}']\n")
    return repo


class Record:
    """The record file of one test's daemons, read back."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def passes(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        lines = self.path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def count(self, seconds: float | None = None, tolerance: float = 0.06) -> int:
        """Passes over audio; with `seconds`, only those over a track that long."""
        return sum(
            1
            for item in self.passes()
            if seconds is None or abs(item["seconds"] - seconds) <= tolerance
        )


def record_in(root: Path) -> Record:
    return Record(root / "separations.jsonl")


def model_env(root: Path, gate: bool = False) -> tuple[dict[str, str], Record]:
    """The environment that makes a daemon's instrumented model record into
    `root/separations.jsonl` (and, with `gate`, wait at `root/gate`)."""
    record = record_in(root)
    env = {RECORD_ENV: str(record.path), "PYTHONPATH": str(TESTS_DIR)}
    if gate:
        (root / "gate").mkdir(exist_ok=True)
        env[GATE_ENV] = str(root / "gate")
    return env, record


def instrumented_model(repo: Path, name: str = RECORDER) -> dict[str, str]:
    """The config's model section for one of the instrumented models."""
    return {"name": name, "repo": str(repo), "device": "cpu"}


def gated_daemon(
    root: Path, env: dict[str, str] | None = None, **service: str
) -> tuple[Daemon, Path, Path]:
    """A daemon (not started) whose model blocks while `root/gate/open` is missing.

    Returns (Daemon, config file, gate folder); `service` adds service.* keys. The
    model records every pass into `root/separations.jsonl` (see `Record`).
    """
    from support.daemon import Daemon, service_config

    repo = build_instrumented_repo(root / "models")
    model_vars, _record = model_env(root, gate=True)
    config = service_config(
        root,
        model=instrumented_model(repo, GATED),
        service={"shutdown_grace": "60s", **service},
    )
    return Daemon(config, root, env={**model_vars, **(env or {})}), config, root / "gate"
