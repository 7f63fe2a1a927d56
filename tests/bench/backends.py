"""`make bench-backends`: the forward pass's runtimes side by side, in one run.

    python tests/bench/backends.py [--rounds 3] [--quick] [--out bench-results]

On the full-size random-weight HTDemucs (tests/bench/bench.py's), on the CPU:
torch and OpenVINO (model.backend), each in fp32 and, where the CPU computes it
natively, bf16 (model.precision); then torch and OpenVINO again with the CPU
limited to AVX2, as a NAS's is. For each: load seconds, one chunk's forward pass
(median and worst of 3 after a warm-up), a whole seeded mix separated with
shifts=1, peak RSS, and its stems against torch fp32's (max difference, SI-SDR).

Every measurement runs in its own process (this script with --child): OpenVINO's
idle threads were measured to slow torch in the same process. The rounds are
interleaved (torch, openvino, torch bf16, openvino bf16, the AVX2 pair, then the
next round) and the ratios are taken within a round, as this machine's speed
drifts by 10 % and more over minutes. The export is made once, before the rounds,
into a folder every child shares. Last, the real daemon separates a 10-minute
track on OpenVINO, for its peak RSS. Prints a Markdown table; writes every raw
number to OUT/backends.json.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stemd.separation.backends import si_sdr_db
from stemd.separation.cpu import PROC_CPUINFO, cpu_flags, cpu_model, native_bf16, plan_threads

BENCH = Path(__file__).resolve().parent
TESTS = BENCH.parent
sys.path.insert(0, str(TESTS))
sys.path.insert(0, str(BENCH))

from bench import MODEL, build_model, daemon_config, daemon_peak_rss  # noqa: E402
from support.audio import make_tone  # noqa: E402

SEED = 31  # the chunk's noise, the mix, and the shift offsets: the same in every child
TIMED_PASSES = 3
CHILD_TIMEOUT_S = 1800.0  # a whole 60 s track on two cores takes a minute or two
MEMORY_LIMIT_GIB = 2.5
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
# a NAS's CPU: oneDNN (torch's convolutions, and OpenVINO's CPU plugin, a fork of
# it) and ATen's own vectorised kernels, each told to stop at AVX2
AVX2_ENV = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
# fp32 FLOPs per cycle per core with two FMA units: 2 units x 2 (multiply-add) x lanes
FLOPS_PER_CYCLE = {"avx512": 64, "avx2": 32}


@dataclass(frozen=True)
class Plan:
    rounds: int
    track_seconds: float  # the seeded mix each child separates whole
    memory_seconds: float  # the daemon's track for peak RSS


FULL = Plan(3, 60.0, 600.0)
QUICK = Plan(1, 20.0, 60.0)


@dataclass(frozen=True)
class Variant:
    name: str
    backend: str
    precision: str
    isa: str  # "avx512" (the CPU as it is) or "avx2" (capped)

    @property
    def env(self) -> dict[str, str]:
        return AVX2_ENV if self.isa == "avx2" else {}


TORCH = Variant("torch fp32", "torch", "fp32", "avx512")
CAPPED_TORCH = Variant("torch fp32, AVX2 cap", "torch", "fp32", "avx2")
CAPPED_OPENVINO = Variant("openvino fp32, AVX2 cap", "openvino", "fp32", "avx2")
VARIANTS = [
    TORCH,
    Variant("openvino fp32", "openvino", "fp32", "avx512"),
    Variant("torch bf16", "torch", "bf16", "avx512"),
    Variant("openvino bf16", "openvino", "bf16", "avx512"),
    CAPPED_TORCH,
    CAPPED_OPENVINO,
]


def baseline(variant: Variant) -> Variant:
    """What a variant's speed is compared with: torch fp32 on the same CPU
    features (the capped torch itself against the uncapped one)."""
    if variant.isa == "avx2" and variant.backend != "torch":
        return CAPPED_TORCH
    return TORCH


# -- the child: one engine, measured ------------------------------------------------


def seeded_mix(seconds: float, samplerate: int, channels: int) -> torch.Tensor:
    """A few tones over noise, the same in every child."""
    generator = torch.Generator().manual_seed(SEED)
    t = torch.arange(int(seconds * samplerate)) / samplerate
    freqs = 80 + 900 * torch.rand(channels, 4, 1, generator=generator)
    tones = torch.sin(2 * torch.pi * freqs * t).sum(1) * 0.15
    return tones + 0.05 * torch.randn(channels, t.numel(), generator=generator)


def timed(run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def flops_per_chunk(model: Any, chunk: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(chunk)
    return int(counter.get_total_flops())


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Load an engine as `spec` says and measure it; only load it when `prepare`
    (the untimed first child, which makes the export)."""
    import logging
    import random

    from stemd.config import ModelConfig
    from stemd.separation.engine import Engine

    # the engine's own account (export, parity, what runs) into the child's log
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    config = ModelConfig(
        name=MODEL,
        repo=Path(spec["repo"]),
        device="cpu",
        backend=spec["backend"],
        precision=spec["precision"],
        threads=spec["threads"],
        shifts=1,
    )
    started = time.perf_counter()
    engine = Engine(config, "cpu", exports=Path(spec["exports"]))
    result: dict[str, Any] = {
        "load_s": time.perf_counter() - started,
        "runs_in": engine.info.backend,
        "precision": engine.info.precision,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
    }
    model = engine._first_model()  # the network itself: a repo's model is a bag of one
    length = int(model.segment * model.samplerate)  # the length it was trained on
    generator = torch.Generator().manual_seed(SEED)
    chunk = torch.randn(1, engine.info.audio_channels, length, generator=generator) * 0.3
    if spec.get("count_flops"):
        result["flops_per_chunk"] = flops_per_chunk(model, chunk)
    if not spec.get("prepare"):
        engine._run_on_device(model, chunk)  # the first pass builds kernels: not timed
        passes = [timed(lambda: engine._run_on_device(model, chunk)) for _ in range(TIMED_PASSES)]
        result["chunk_s"] = passes
        wav = seeded_mix(spec["track_seconds"], engine.info.samplerate, engine.info.audio_channels)
        random.seed(SEED)  # streaming draws each shift's offset from the module's generator
        stems: dict[str, torch.Tensor] = {}
        result["track_s"] = timed(lambda: stems.update(engine.separate(wav)))
        stacked = torch.stack([stems[name] for name in engine.info.sources])
        np.save(spec["stems"], stacked.numpy())
    result["peak_rss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return result


# -- the parent ---------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    repo: Path
    exports: Path
    work: Path
    threads: int
    track_seconds: float


def run_child(setup: Setup, variant: Variant, tag: str, **extra: Any) -> dict[str, Any]:
    """One child's result; {"died": why} when it ended without one (a signal, or an
    error that it printed to its log)."""
    spec = {
        "repo": str(setup.repo),
        "exports": str(setup.exports),
        "backend": variant.backend,
        "precision": variant.precision,
        "threads": setup.threads,
        "track_seconds": setup.track_seconds,
        "stems": str(setup.work / f"stems-{tag}.npy"),
        **extra,
    }
    log = setup.work / f"child-{tag}.log"
    with open(log, "wb") as stderr:
        done = subprocess.run(
            [sys.executable, __file__, "--child", json.dumps(spec)],
            # a crash leaves its Python stack in the log: where a runtime died
            env={**os.environ, **variant.env, "PYTHONFAULTHANDLER": "1"},
            stdout=subprocess.PIPE,
            stderr=stderr,
            timeout=CHILD_TIMEOUT_S,
            check=False,
        )
    if done.returncode < 0:
        number = -done.returncode
        return {
            "died": f"died with signal {number}, {signal.Signals(number).name}",
            "where": crash_frames(log),
        }
    if done.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
        return {"died": f"exited {done.returncode}: {tail[0][:200]}"}
    result: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    result["log"] = str(log)
    return result


def crash_frames(log: Path) -> str:
    """Where a child crashed, from the stack faulthandler wrote: the innermost frame
    of the crashed thread, then stemd's own functions on the way there (what it was
    doing: a parity check, a separation)."""
    text = log.read_text(errors="replace")
    _before, found, crashed = text.partition("Current thread")
    frames = re.findall(r'File "(.+)", line (\d+) in (\S+)', crashed.split("\n\n")[0])
    if not found or not frames:
        return "unknown"
    path, line, name = frames[0]
    ours = [f"{Path(f).stem}.{function}" for f, _line, function in frames if "/stemd/" in f]
    return " < ".join([f"{Path(path).name}:{line} {name}", *ours])


def compare(reference: Path, stems: Path) -> dict[str, float]:
    """The stems of one run against torch fp32's of the same round."""
    expected = torch.from_numpy(np.load(reference))
    got = torch.from_numpy(np.load(stems))
    return {"max_diff": float((got - expected).abs().max()), "si_sdr_db": si_sdr_db(expected, got)}


def export_seconds(exports: Path) -> float:
    """export.json's export_seconds (one export: the bf16 child compiles the same one)."""
    return sum(
        float(json.loads(path.read_text())["export_seconds"])
        for path in exports.glob("*/export.json")
    )


def openvino_daemon_peak_rss(
    work: Path, repo: Path, exports: Path, threads: int, seconds: float
) -> dict[str, Any]:
    """The real daemon on model.backend openvino, its exports already built, on one
    track `seconds` long: RSS once warm, and peak RSS (VmHWM) once it is published."""
    root = work / "daemon"
    track = make_tone(work / "memory" / "long.flac", seconds, frequency=330)
    config = daemon_config(root, repo, settings={"backend": "openvino", "threads": threads})
    shutil.copytree(exports, root / "state" / "exports", ignore=shutil.ignore_patterns(".*.lock"))
    ready, peak, log = daemon_peak_rss(config, root, track)
    # what ran: the engine's load line names it, e.g. "(openvino, fp32)"
    runs_in = re.search(r"loaded on cpu \(([^,]+), ([^)]+)\)", log)
    shutil.rmtree(root, ignore_errors=True)
    return {
        "seconds": seconds,
        "ready_mib": ready / 1024,
        "peak_mib": peak / 1024,
        "runs_in": runs_in.group(1) if runs_in else "unknown",
        "within_limit": peak / 2**20 <= MEMORY_LIMIT_GIB,
    }


def cpu_ghz(cpuinfo: Path = PROC_CPUINFO) -> tuple[float, str]:
    """The clock the peak is computed at, and where it was read."""
    text = cpuinfo.read_text()
    mhz = re.search(r"^cpu MHz\s*:\s*([\d.]+)", text, re.M)
    if mhz:
        return float(mhz.group(1)) / 1000, "/proc/cpuinfo's cpu MHz: the clock now, not a turbo"
    named = re.search(r"@\s*([\d.]+)\s*GHz", cpu_model(cpuinfo))
    if named:
        return float(named.group(1)), "the model name's base clock"
    bogomips = re.search(r"^bogomips\s*:\s*([\d.]+)", text, re.M | re.I)
    if bogomips:
        return float(bogomips.group(1)) / 2 / 1000, "BogoMIPS / 2 (no clock in /proc/cpuinfo)"
    return 0.0, "no clock found"


def machine(threads: int) -> dict[str, Any]:
    flags = cpu_flags()
    ghz, ghz_source = cpu_ghz()
    isas = {"avx512": "avx512f" in flags, "avx2": "avx2" in flags}
    return {
        "cpu": cpu_model(),
        "flags": {flag: flag in flags for flag in FLAGS},
        "threads": threads,
        "torch": torch.__version__,
        "openvino": importlib.metadata.version("openvino"),
        "ghz": ghz,
        "ghz_source": ghz_source,
        # GFLOP/s an fp32 forward pass could reach at most on `threads` cores
        "peak_gflops": {
            isa: threads * ghz * per_cycle if isas[isa] else 0.0
            for isa, per_cycle in FLOPS_PER_CYCLE.items()
        },
    }


def variants_here() -> list[Variant]:
    """bf16 only where the CPU computes it (elsewhere it is emulated, far slower);
    none under the AVX2 cap, which has no bf16."""
    bf16 = native_bf16()
    return [v for v in VARIANTS if v.precision == "fp32" or bf16]


def measure_rounds(
    setup: Setup, variants: list[Variant], rounds: int
) -> dict[str, list[dict[str, Any]]]:
    runs: dict[str, list[dict[str, Any]]] = {v.name: [] for v in variants}
    dead: dict[str, dict[str, Any]] = {}  # a variant that died is not run again
    for n in range(1, rounds + 1):
        for i, variant in enumerate(variants):
            say(f"round {n} of {rounds}: {variant.name}")
            result = dead.get(variant.name) or run_child(setup, variant, f"r{n}-{i}")
            if "died" in result:
                if variant is not CAPPED_OPENVINO:  # only the cap is known to break a runtime
                    raise RuntimeError(f"{variant.name} {result['died']}; see {setup.work}")
                dead[variant.name] = result
                say(f"{variant.name}: {result['died']}")
            runs[variant.name].append(result)
        reference = setup.work / f"stems-r{n}-0.npy"
        for i, variant in enumerate(variants):
            stems = setup.work / f"stems-r{n}-{i}.npy"
            if stems.exists() and i > 0:
                runs[variant.name][-1].update(compare(reference, stems))
        for i in range(len(variants)):
            (setup.work / f"stems-r{n}-{i}.npy").unlink(missing_ok=True)
    return runs


def summarise(runs: dict[str, list[dict[str, Any]]], variants: list[Variant]) -> dict[str, Any]:
    """Per variant: times over rounds, and its ratios to its baseline round by round."""
    out: dict[str, Any] = {}
    for variant in variants:
        mine = runs[variant.name]
        died = next((r for r in mine if "died" in r), None)
        if died is not None:
            out[variant.name] = {"died": died["died"], "where": died.get("where", "unknown")}
            continue
        base = runs[baseline(variant).name]
        chunk = [statistics.median(r["chunk_s"]) for r in mine]
        base_chunk = [statistics.median(r["chunk_s"]) for r in base]
        chunk_ratio = [b / v for b, v in zip(base_chunk, chunk, strict=True)]
        track_ratio = [b["track_s"] / v["track_s"] for b, v in zip(base, mine, strict=True)]
        diffs = [r for r in mine if "max_diff" in r]
        out[variant.name] = {
            "runs_in": sorted({r["runs_in"] for r in mine}),
            "precision": sorted({r["precision"] for r in mine}),
            "load_s": statistics.median(r["load_s"] for r in mine),
            "chunk_median_s": statistics.median(chunk),
            "chunk_worst_s": max(max(r["chunk_s"]) for r in mine),
            "chunk_ratio": {"median": statistics.median(chunk_ratio), "worst": min(chunk_ratio)},
            "track_median_s": statistics.median(r["track_s"] for r in mine),
            "track_worst_s": max(r["track_s"] for r in mine),
            "track_ratio": {"median": statistics.median(track_ratio), "worst": min(track_ratio)},
            "peak_rss_mib": max(r["peak_rss_kib"] for r in mine) / 1024,
            "max_diff": max((r["max_diff"] for r in diffs), default=None),
            "si_sdr_db": min((r["si_sdr_db"] for r in diffs), default=None),
            "cpu_capability": sorted({r["cpu_capability"] for r in mine}),
        }
    return out


def say(message: str) -> None:
    print(f"[backends] {message}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rounds", type=int, default=None, help="rounds (default 3; 1 with --quick)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="1 round, a shorter mix and daemon track"
    )
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    plan = QUICK if args.quick else FULL
    rounds = args.rounds or plan.rounds
    work = (args.out / "work-backends").resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    threads = plan_threads(1).intra_op  # one CPU worker's, as the daemon plans it
    setup = Setup(work / "models", work / "exports", work, threads, plan.track_seconds)
    build_model(setup.repo)
    variants = variants_here()

    say("first children, untimed: torch's counts the FLOPs, OpenVINO's makes the export")
    flops = run_child(setup, TORCH, "prepare-torch", prepare=True, count_flops=True)
    prepared = run_child(setup, VARIANTS[1], "prepare-openvino", prepare=True)
    for result in (flops, prepared):
        if "died" in result:
            raise RuntimeError(f"a first child {result['died']}; see {work}/child-prepare-*.log")
    runs = measure_rounds(setup, variants, rounds)
    say(f"peak RSS: the daemon on OpenVINO, a {plan.memory_seconds:g} s track")
    memory = openvino_daemon_peak_rss(work, setup.repo, setup.exports, threads, plan.memory_seconds)
    results = {
        "mode": "quick" if args.quick else "full",
        "rounds": rounds,
        "plan": asdict(plan),
        "machine": machine(threads),
        "flops_per_chunk": flops["flops_per_chunk"],
        "export_seconds": export_seconds(setup.exports),
        "variants": {v.name: asdict(v) for v in variants},
        "runs": runs,
        "summary": summarise(runs, variants),
        "daemon_memory": memory,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "backends.json").write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    shutil.rmtree(work, ignore_errors=True)


# -- the table ----------------------------------------------------------------------


def head(r: dict[str, Any]) -> list[str]:
    m = r["machine"]
    flags = ", ".join(
        f"{flag} {'yes' if present else 'no'}" for flag, present in m["flags"].items()
    )
    peaks = m["peak_gflops"]
    return [
        f"CPU: {m['cpu']}; {flags}",
        f"threads: {m['threads']}; torch {m['torch']}; openvino {m['openvino']}",
        f"fp32 peak: threads x {m['ghz']:.2f} GHz ({m['ghz_source']}) x FLOPs/cycle/core, "
        f"assuming two FMA units (AVX-512: 64, AVX2: 32) = {peaks['avx512']:.0f} / "
        f"{peaks['avx2']:.0f} GFLOP/s; bf16 rows are shown against the fp32 peak too",
        f"{r['flops_per_chunk'] / 1e9:.1f} GFLOP per chunk (torch.utils.flop_counter, one "
        f"torch forward; the STFT's FFTs are not counted); OpenVINO export "
        f"{r['export_seconds']:.1f} s (once, before the rounds)",
        f"{r['mode']} run, {r['rounds']} round(s); load: Engine() in a fresh process "
        "(OpenVINO's includes compiling the export and the parity check, a pass of each "
        "runtime); chunk: median and worst of "
        f"{TIMED_PASSES} passes after a warm-up; track: a {r['plan']['track_seconds']:g} s "
        "seeded mix, shifts=1; x torch: torch fp32 time / this time within a round "
        "(AVX2 rows: against torch fp32 under the same cap; torch's own AVX2 row: against "
        "uncapped torch), median (worst round); stems against torch fp32 (uncapped) of the "
        "same round, worst round",
    ]


def row(name: str, s: dict[str, Any], isa: str, r: dict[str, Any], note: str = "") -> str:
    gflops = r["flops_per_chunk"] / s["chunk_median_s"] / 1e9
    peak = r["machine"]["peak_gflops"][isa]
    share = f"{gflops / peak:.0%}" if peak else "n/a"
    diff = "reference" if s["max_diff"] is None else f"{s['max_diff']:.1e}"
    sdr = "" if s["si_sdr_db"] is None else f"{s['si_sdr_db']:.1f}"
    runs_in = "/".join(s["runs_in"]) + " " + "/".join(s["precision"])
    cells = [
        f"{name}{note}",
        runs_in,
        f"{s['load_s']:.1f}",
        f"{s['chunk_median_s']:.2f} ({s['chunk_worst_s']:.2f})",
        f"{s['chunk_ratio']['median']:.2f} ({s['chunk_ratio']['worst']:.2f})",
        f"{gflops:.0f}",
        share,
        f"{s['track_median_s']:.1f} ({s['track_worst_s']:.1f})",
        f"{s['track_ratio']['median']:.2f} ({s['track_ratio']['worst']:.2f})",
        diff,
        sdr,
        f"{s['peak_rss_mib']:.0f}",
    ]
    return "| " + " | ".join(cells) + " |"


def table(r: dict[str, Any]) -> str:
    lines = [
        *head(r),
        "",
        "| variant | runs in | load s | chunk s | chunk x torch | GFLOP/s | of peak | "
        "track s | track x torch | max abs diff | SI-SDR dB | peak RSS MiB |",
        "| --- " * 12 + "|",
    ]
    summary = r["summary"]
    for name, variant in r["variants"].items():
        s = summary[name]
        if "died" not in s:
            lines.append(row(name, s, variant["isa"], r))
            continue
        # no figure under the cap: the uncapped one, said to be that
        uncapped = name.replace(", AVX2 cap", "")
        note = f": no working AVX2 cap ({s['died']}); its AVX-512 figures"
        if uncapped in summary and "died" not in summary[uncapped]:
            lines.append(row(uncapped, summary[uncapped], "avx512", r, note))
        else:
            lines.append(f"| {name}{note.split(';')[0]} |" + " |" * 11)
    deaths = [f"{name} {s['died']} in {s['where']}" for name, s in summary.items() if "died" in s]
    d = r["daemon_memory"]
    verdict = "within" if d["within_limit"] else "OVER"
    lines += [
        "",
        f"daemon on {d['runs_in']}, a {d['seconds'] / 60:g} min track: ready {d['ready_mib']:.0f} "
        f"MiB, peak RSS {d['peak_mib']:.0f} MiB ({verdict} {MEMORY_LIMIT_GIB:g} GiB)",
        *deaths,
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
