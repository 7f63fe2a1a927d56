"""`make gpu-check`: stemd's GPU paths on a real CUDA device, as one table.

    python tests/gpu/gpu_check.py [--out DIR] [--rehearse-on-cpu]

Runs on a bare CUDA machine within minutes: random-weight models built here
(no weights to download), WAV in and out (no ffmpeg), stemd importable without
systemd-python. Each check is one row:

  parity      streamed separation on CUDA (fp32, TF32 off) against the same code
              on the CPU, for HTDemucs and a bag of two models
  speed       stemd's batched, streamed separation against demucs' apply_model
              on the same GPU and model (a full-size random htdemucs, a 60 s track)
  oom         a real memory cap (torch.cuda.set_per_process_memory_fraction):
              the batch is halved until it fits, then, when one chunk does not
              fit, the model moves to the CPU and the separation still ends
  precision   bf16 and fp16 against fp32 (max error, signal-to-error ratio)
  daemon      `stemd run` with model.device cuda: a dropped WAV is published,
              and its manifest names the device

Without CUDA it prints one line and exits 0. --rehearse-on-cpu runs every check
on the CPU with small sizes, to try the script itself where there is no GPU
(the oom check then uses the test model that raises CUDA's error).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
# support.models from tests/, stemd from daemon/: the GPU machine has no install
IMPORT_PATHS = [str(HERE.parents[1]), str(HERE.parents[2] / "daemon")]
sys.path[:0] = IMPORT_PATHS

import numpy as np  # noqa: E402
import torch  # noqa: E402

Row = dict[str, Any]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("gpu-results"))
    parser.add_argument("--rehearse-on-cpu", action="store_true")
    args = parser.parse_args()
    rehearsal = args.rehearse_on_cpu
    if not rehearsal and not torch.cuda.is_available():
        print(
            f"gpu-check: skipped: no CUDA device here (torch {torch.__version__}, "
            f"CUDA build: {torch.version.cuda or 'none'})"
        )
        return 0
    device = "cpu" if rehearsal else "cuda"
    started = time.monotonic()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="stemd-gpu-") as scratch:
        work = Path(scratch)
        repo = build_models(work / "models", full_size=not rehearsal)
        checks: list[tuple[str, Callable[[], list[Row]]]] = [
            ("parity", lambda: parity(repo, device, seconds=8.0 if rehearsal else 20.0)),
            (
                "speed",
                lambda: speed(
                    repo, device, seconds=8.0 if rehearsal else 60.0, rehearsal=rehearsal
                ),
            ),
            ("oom", lambda: out_of_memory(repo, device, rehearsal)),
            (
                "precision",
                lambda: precision(
                    repo, device, seconds=8.0 if rehearsal else 30.0, rehearsal=rehearsal
                ),
            ),
            ("daemon", lambda: daemon_end_to_end(work, repo, device)),
        ]
        for name, check in checks:
            began = time.monotonic()
            try:
                found = check()
            except Exception as err:  # one broken check must not hide the others
                found = [{"check": name, "what": "crashed", "result": repr(err), "ok": False}]
            for row in found:
                row.setdefault("seconds", round(time.monotonic() - began, 1))
            rows.extend(found)
            print(f"gpu-check: {name} done in {time.monotonic() - began:.1f}s", flush=True)
    report = {
        "device": torch.cuda.get_device_name(0) if not rehearsal else "cpu (rehearsal)",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "seconds": round(time.monotonic() - started, 1),
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu-check.json").write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    return 0 if all(row["ok"] for row in rows) else 1


# -- models and audio -----------------------------------------------------------


def build_models(repo: Path, full_size: bool) -> Path:
    """tiny_ht, tiny_bag (support.models), and `big`: the released htdemucs
    architecture with random weights (tiny_ht again when rehearsing)."""
    from demucs.htdemucs import HTDemucs

    from support.models import SOURCES, build_repo, save_model

    build_repo(repo)
    if full_size:
        from fractions import Fraction

        torch.manual_seed(1)
        big = HTDemucs(
            sources=SOURCES,
            channels=48,
            dconv_mode=3,
            bottom_channels=512,
            segment=Fraction(39, 5),
        )
        save_model(big, repo, "b16b16b1")
        (repo / "big.yaml").write_text("models: ['b16b16b1']\n")
    else:
        shutil.copyfile(repo / "tiny_ht.yaml", repo / "big.yaml")
    return repo


def track(seconds: float, seed: int = 0) -> torch.Tensor:
    """A mix with structure (tones and noise), [2, samples] at 44.1 kHz."""
    generator = torch.Generator().manual_seed(seed)
    t = torch.arange(int(44100 * seconds)) / 44100
    tones = 0.3 * torch.sin(2 * math.pi * 220 * t) + 0.2 * torch.sin(2 * math.pi * 1330 * t)
    noise = 0.05 * torch.randn(2, t.shape[0], generator=generator)
    return (tones + noise).float()


def engine(repo: Path, name: str, device: str, **settings: Any) -> Any:
    from stemd.config import ModelConfig
    from stemd.separation.engine import Engine

    return Engine(ModelConfig(name=name, repo=repo, device=device, **settings))


def stacked(stems: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.stack(list(stems.values()))


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# -- the checks -------------------------------------------------------------------


def parity(repo: Path, device: str, seconds: float) -> list[Row]:
    rows = []
    mix = track(seconds)
    for name in ("tiny_ht", "tiny_bag"):
        # shifts 0: random shift offsets would differ between the two runs
        cpu = stacked(engine(repo, name, "cpu", batch_size=1, shifts=0).separate(mix))
        gpu = stacked(engine(repo, name, device, precision="fp32", shifts=0).separate(mix))
        error = float((gpu - cpu).abs().max())
        rows.append(
            {
                "check": "parity",
                "what": f"{name}: {device} fp32 (TF32 off) vs cpu, {seconds:g} s, max abs diff",
                "result": f"{error:.2e}",
                "ok": error <= 1e-4,
            }
        )
    return rows


def speed(repo: Path, device: str, seconds: float, rehearsal: bool) -> list[Row]:
    """Each side once to warm up (first passes at a shape cost more), then each
    twice in turn; the faster of each counts."""
    from demucs.apply import apply_model

    mix = track(seconds, seed=2)
    ours = engine(repo, "big", device)
    model = ours.model
    ref = mix.mean(0)
    normalised = ((mix - ref.mean()) / (ref.std() + 1e-8))[None]

    def stemd_run() -> float:
        synchronize(device)
        began = time.perf_counter()
        ours.separate(mix)
        synchronize(device)
        return time.perf_counter() - began

    def demucs_run() -> float:
        synchronize(device)
        began = time.perf_counter()
        with torch.no_grad():
            apply_model(model, normalised, shifts=1, split=True, overlap=0.25, device=device)
        synchronize(device)
        return time.perf_counter() - began

    stemd_run(), demucs_run()  # warm-up
    stemd_s = min(stemd_run(), stemd_run())
    demucs_s = min(demucs_run(), demucs_run())
    return [
        {
            "check": "speed",
            "what": f"big htdemucs, {seconds:g} s track: stemd (batch {ours.batch_size()}) / "
            "apply_model, seconds (faster of 2, after a warm-up)",
            "result": f"{stemd_s:.2f} / {demucs_s:.2f} (ratio {demucs_s / stemd_s:.2f})",
            # on a GPU batching must pay; on the CPU rehearsal it is only timed
            "ok": rehearsal or stemd_s <= demucs_s,
        }
    ]


class Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def out_of_memory(repo: Path, device: str, rehearsal: bool) -> list[Row]:
    """A real cap on a GPU: the batch halves, then a single chunk that does not
    fit sends the model to the CPU; the separation ends either way."""
    if rehearsal:
        return oom_rehearsal(repo)
    mix = track(30.0, seed=3)
    warnings = Warnings()
    logging.getLogger("stemd").addHandler(warnings)
    rows = []
    try:
        torch.cuda.empty_cache()
        big = engine(repo, "big", device, batch_size=16)
        big.warm_up()  # measured at batch 16 before any cap
        model_bytes = torch.cuda.memory_allocated()
        total = torch.cuda.get_device_properties(0).total_memory
        # room for the model and about four chunks' activations
        per_chunk = max(1, (torch.cuda.max_memory_allocated() - model_bytes) // 16)
        torch.cuda.set_per_process_memory_fraction(min(1.0, (model_bytes + 4 * per_chunk) / total))
        torch.cuda.empty_cache()
        stems = big.separate(mix)
        halved = [m for m in warnings.messages if "out of memory with" in m]
        rows.append(
            {
                "check": "oom",
                "what": "cap at the model + ~4 chunks, batch 16: halved to",
                "result": f"batch {big.batch_size()} ({len(halved)} halvings); stems "
                f"{tuple(stacked(stems).shape)}",
                "ok": bool(halved)
                and big.batch_size() < 16
                and stacked(stems).shape[-1] == mix.shape[-1],
            }
        )
        torch.cuda.set_per_process_memory_fraction(min(1.0, (model_bytes + per_chunk // 4) / total))
        torch.cuda.empty_cache()
        stems = big.separate(mix)
        moved = any("moving the model to the CPU" in m for m in warnings.messages)
        rows.append(
            {
                "check": "oom",
                "what": "cap below one chunk: the model moves to the CPU",
                "result": f"device now {big.info.device}; stems {tuple(stacked(stems).shape)}",
                "ok": moved and big.info.device == "cpu",
            }
        )
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        logging.getLogger("stemd").removeHandler(warnings)
    return rows


def oom_rehearsal(repo: Path) -> list[Row]:
    """On the CPU, the test model that raises CUDA's out-of-memory error over a
    cap exercises the same halving code."""
    from support.models import build_capped_repo

    capped = repo / "capped"
    name = build_capped_repo(capped)
    os.environ["STEMD_TEST_MEMORY_CAP"] = "2"
    warnings = Warnings()
    logging.getLogger("stemd").addHandler(warnings)
    try:
        capped_engine = engine(capped, name, "cpu", batch_size=8)
        stems = capped_engine.separate(track(20.0))
    finally:
        logging.getLogger("stemd").removeHandler(warnings)
        del os.environ["STEMD_TEST_MEMORY_CAP"]
    return [
        {
            "check": "oom",
            "what": "rehearsal: a model capped at 2 chunks, batch 8: halved to",
            "result": f"batch {capped_engine.batch_size()}",
            "ok": capped_engine.batch_size() <= 2 and stacked(stems).shape[-1] == 20 * 44100,
        }
    ]


def precision(repo: Path, device: str, seconds: float, rehearsal: bool) -> list[Row]:
    mix = track(seconds, seed=4)
    reference = stacked(engine(repo, "big", device, precision="fp32", shifts=0).separate(mix))
    rows = []
    for kind in ("bf16",) if rehearsal else ("bf16", "fp16"):  # CPU autocast: bf16 only
        got = stacked(engine(repo, "big", device, precision=kind, shifts=0).separate(mix))
        error = (got - reference).abs()
        snr = 10 * math.log10(float((reference**2).mean()) / max(1e-30, float((error**2).mean())))
        rows.append(
            {
                "check": "precision",
                "what": f"{kind} vs fp32, {seconds:g} s: max abs error, signal to error",
                "result": f"{float(error.max()):.2e}, {snr:.1f} dB",
                "ok": snr >= 20.0,
            }
        )
    return rows


def write_wav(path: Path, audio: torch.Tensor) -> None:
    pcm = (audio.clamp(-1, 1) * 32767).short().t().contiguous().numpy()
    with wave.open(str(path), "wb") as out:
        out.setnchannels(audio.shape[0])
        out.setsampwidth(2)
        out.setframerate(44100)
        out.writeframes(pcm.tobytes())


def daemon_end_to_end(work: Path, repo: Path, device: str) -> list[Row]:
    import yaml

    root = work / "daemon"
    (root / "inbox").mkdir(parents=True)
    config = {
        "inbox": "inbox",
        "outbox": "outbox",
        "state_dir": "state",
        "watch": {"settle": "0.5s"},
        "model": {"name": "tiny_ht", "repo": str(repo), "device": device},
        "output": {"format": "wav"},
        "logging": {"target": "stderr"},
        "http": {"listen": None},
    }
    (root / "stemd.yaml").write_text(yaml.safe_dump(config))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([*IMPORT_PATHS, os.environ.get("PYTHONPATH", "")]),
    }
    log = open(root / "stemd.log", "wb")  # noqa: SIM115 (closed below)
    process = subprocess.Popen(
        [sys.executable, "-m", "stemd", "-c", "stemd.yaml", "run"],
        cwd=root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    manifest_path = root / "outbox" / "tiny_ht" / "song" / "stemd.json"
    try:
        deadline = time.monotonic() + 120
        while "stemd ready" not in (root / "stemd.log").read_text(errors="replace"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("stemd did not get ready:\n" + (root / "stemd.log").read_text())
            time.sleep(0.2)  # polling a log file: no event to wait on
        staged = root / "song.wav"
        write_wav(staged, track(10.0, seed=5))
        os.replace(staged, root / "inbox" / "song.wav")
        while not manifest_path.is_file():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("no stems:\n" + (root / "stemd.log").read_text())
            time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        log.close()
    manifest = json.loads(manifest_path.read_text())
    with wave.open(str(manifest_path.parent / manifest["stems"]["vocals"]), "rb") as stem:
        frames = stem.getnframes()
    return [
        {
            "check": "daemon",
            "what": f"stemd run, model.device {device}: 10 s WAV published",
            "result": f"manifest device {manifest['device']}, vocals {frames / 44100:.2f} s, "
            f"exit {process.returncode}",
            "ok": manifest["device"].startswith(device)
            and abs(frames - 441000) < 10
            and process.returncode == 0,
        }
    ]


def table(report: dict[str, Any]) -> str:
    lines = [
        f"{report['device']}, torch {report['torch']}, CUDA {report['cuda']}, "
        f"{report['seconds']:.0f} s in all",
        "",
        "| check | what | result | ok |",
        "| --- | --- | --- | --- |",
    ]
    for row in report["rows"]:
        lines.append(
            f"| {row['check']} | {row['what']} | {row['result']} | {'yes' if row['ok'] else 'NO'} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
