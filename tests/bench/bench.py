"""`make bench`: stemd against the demucs CLI on the same files, in one run.

    python tests/bench/bench.py [--quick] [--out bench-results]

Builds a full-size random-weight HTDemucs (the released htdemucs architecture,
about 42 M parameters) into a local model repo, generates tracks in several
formats, and measures:

  a  `python -m demucs.separate` once per file (what a shell watch script does)
  b  `python -m demucs.separate` once with all the files
  c  stemd, warm: the daemon running and warmed up, all files dropped at once,
     until every stem set is published
  cold c  stemd from `stemd run` (files already in the inbox) to the last stems:
     interpreter start, model load and first pass included, as b pays them
  d  the floor: the model's forward passes alone, for the same chunks, in one
     process

Each round runs a, b, c, cold c and d in turn (3 rounds; 1 with --quick). The
machine's speed drifts by 10 % and more over minutes, so ratios are taken within
a round (a_i/c_i, b_i/c_i, c_i/d_i), and the table shows their median and the
worst round. c also reports the share of its wall time that the model computed
(the published manifests' model_seconds), which no drift can move.
Then pickup latency, idle CPU with 10 000 files in the inbox (inotify and
polling, a periodic rescan inside the window), peak RSS of b and c on the long
track (the full-size model), peak RSS of the daemon by track length (10, 60 and
120 minutes, the featherweight model), and hashing throughput against
`sha256sum`. Prints a Markdown table;
writes everything to OUT/bench.json. Every number comes from this run: nothing
is copied from elsewhere.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch

from stemd.config import WatchConfig

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))

from support.audio import make_tone  # noqa: E402
from support.daemon import Daemon, service_config  # noqa: E402
from support.models import SOURCES, build_repo, save_model  # noqa: E402
from support.outbox_watch import TEMP_DIR  # noqa: E402
from support.processes import stat_fields  # noqa: E402
from support.waiting import wait_until  # noqa: E402

MODEL = "htdemucs_random"
# the released htdemucs: demucs/remote/files.txt's 955717e8, built with these
HTDEMUCS = {
    "channels": 48,
    "dconv_mode": 3,
    "bottom_channels": 512,
    "segment": Fraction(39, 5),
}
NO_RESCAN_S = 86400.0  # no rescan falls in the window
DEFAULT_RESCAN_S = WatchConfig.model_fields["rescan_interval"].default  # watch.rescan_interval
FORMATS = [("wav", ()), ("flac", ()), ("mp3", ("-b:a", "192k")), ("m4a", ("-c:a", "aac"))]


@dataclass(frozen=True)
class Plan:
    short_tracks: int
    short_seconds: float
    long_seconds: float
    pickups: int
    idle_seconds: float
    idle_files: int
    hash_bytes: int
    # memory vs length: the featherweight model's daemon on tracks this long
    memory_seconds: tuple[float, ...]
    # a, b, c, cold c and d each run this many times, in turn (a b c c' d a b ...),
    # and each round gives its own ratios: this machine's speed drifts by 10 % and
    # more over minutes, so only measurements side by side are compared
    rounds: int
    # idle CPU is measured twice: with no rescan in the window, and with a rescan
    # every this many seconds (a dozen fall inside it, so where the window starts
    # moves the count by one at most); the difference is what rescans cost
    rescan_interval: float


FULL = Plan(12, 15.0, 600.0, 10, 60.0, 10_000, 1 << 30, (600.0, 3600.0, 7200.0), 3, 5.0)
QUICK = Plan(3, 15.0, 60.0, 5, 20.0, 10_000, 256 << 20, (120.0, 600.0), 1, 2.5)


def build_model(repo: Path) -> None:
    import demucs.htdemucs

    torch.manual_seed(0)
    model = demucs.htdemucs.HTDemucs(sources=SOURCES, **HTDEMUCS)
    save_model(model, repo, "b3e1c0de")
    (repo / f"{MODEL}.yaml").write_text("models: ['b3e1c0de']\n")


def make_tracks(folder: Path, plan: Plan) -> tuple[list[Path], Path]:
    tracks = []
    for i in range(plan.short_tracks):
        ext, codec = FORMATS[i % len(FORMATS)]
        tracks.append(
            make_tone(
                folder / f"song{i:02d}.{ext}",
                plan.short_seconds,
                frequency=200 + 37 * i,
                codec_args=codec,
            )
        )
    long = make_tone(folder / "long" / "concert.flac", plan.long_seconds, frequency=330)
    return tracks, long


def timed(command: list[str], cwd: Path) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one child process."""
    errors = cwd / "child-stderr.log"
    with open(errors, "wb") as stderr:
        started = time.perf_counter()
        child = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=stderr)
        _pid, status, usage = os.wait4(child.pid, 0)  # wait4: the child's own peak RSS
        seconds = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} failed:\n{errors.read_text()[-2000:]}")
    return seconds, usage.ru_maxrss


def demucs_cli(repo: Path, out: Path, files: list[Path]) -> list[str]:
    return [sys.executable, "-m", "demucs.separate", "-n", MODEL, "--repo", str(repo),
            "-d", "cpu", "-o", str(out), *map(str, files)]  # fmt: skip


def run_cli_per_file(repo: Path, work: Path, out: Path, tracks: list[Path]) -> float:
    total = 0.0
    for track in tracks:
        seconds, _rss = timed(demucs_cli(repo, out, [track]), work)
        total += seconds
    return total


def daemon_config(
    root: Path,
    repo: Path,
    model: str = MODEL,
    settings: dict[str, Any] | None = None,
    **watch: str,
) -> Path:
    """A CPU daemon in `root` on a model of `repo`, settle 1 s unless `watch` says;
    `settings` adds to or replaces the model section's keys."""
    root.mkdir(parents=True, exist_ok=True)
    # model.backend torch, not the default auto: a, b, c and d compare stemd's
    # pipeline with the demucs CLI on the same (torch) forward pass;
    # tests/bench/backends.py compares the forward passes themselves
    section = {"name": model, "repo": str(repo), "device": "cpu", "backend": "torch"}
    return service_config(
        root,
        model={**section, **(settings or {})},
        watch={"settle": "1s", **watch},
    )


def manifests(daemon: Daemon) -> list[Path]:
    """The stemd.json of every stem set published (read in-process: a `stemd
    status` subprocess each poll would take CPU from the daemon being measured).
    Manifests in the hidden temp folder are written before the stems are fsynced
    and the folder renamed into place: those are not published yet."""
    outbox = daemon.cwd / "outbox"
    return [p for p in outbox.glob("**/stemd.json") if TEMP_DIR not in p.relative_to(outbox).parts]


def published(daemon: Daemon) -> int:
    return len(manifests(daemon))


def model_seconds(daemon: Daemon) -> float:
    """The model's forward passes, summed over the stem sets the daemon published
    (each manifest's model_seconds, measured inside stemd)."""
    stem_sets = [json.loads(path.read_text()) for path in manifests(daemon)]
    return sum(float(stem_set["model_seconds"]) for stem_set in stem_sets)


def run_stemd_cold(repo: Path, root: Path, tracks: list[Path]) -> float:
    """cold c: the files are in the inbox, then `stemd run` starts; until every
    stem set is published. Interpreter start, imports, model load, warm-up and
    the startup scan are all inside, as they are in b."""
    config = daemon_config(root, repo)
    for track in tracks:
        shutil.copyfile(track, root / "inbox" / track.name)
    started = time.perf_counter()
    daemon = Daemon(config, root).start()
    try:
        wait_until(lambda: published(daemon) == len(tracks), 7200, "cold stemd to publish", 0.1)
        return time.perf_counter() - started
    finally:
        daemon.stop(600)


def run_stemd(repo: Path, root: Path, tracks: list[Path]) -> tuple[float, Daemon]:
    """c: the daemon running (ready and warmed up, as a service is long before files
    arrive), every file dropped at once, until all are published."""
    daemon = Daemon(daemon_config(root, repo), root).start()
    daemon.wait_warm(600)
    staging = root / "staging"  # same filesystem: a rename drops each file whole
    staging.mkdir()
    for track in tracks:
        shutil.copyfile(track, staging / track.name)
    started = time.perf_counter()
    for track in tracks:
        os.rename(staging / track.name, root / "inbox" / track.name)
    # polled every 0.1 s: a coarser poll would add up to its interval to c, and a
    # glob of a dozen stem folders costs the daemon nothing measurable
    wait_until(lambda: published(daemon) == len(tracks), 7200, "stemd to publish all", 0.1)
    return time.perf_counter() - started, daemon


def floor_seconds(repo: Path, tracks: list[Path]) -> float:
    """d: the forward passes alone for the same chunks (batch 1, as stemd on CPU),
    on a warmed-up model: the first pass's extra cost is not part of the floor;
    with stemd's malloc settings, so they do not count as stemd's gain either."""
    from stemd.allocator import tune_for_model
    from stemd.audio import decode
    from stemd.config import ModelConfig
    from stemd.separation.engine import Engine
    from stemd.separation.streaming import TensorSource, separate_streamed

    tune_for_model()  # main thread here: the arena limit does not matter, the rest does
    engine = Engine(ModelConfig(name=MODEL, repo=repo, device="cpu"))
    engine.warm_up()
    spent = 0.0

    def forward(module: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
        nonlocal spent
        started = time.perf_counter()
        with torch.no_grad():
            out: torch.Tensor = module(batch)
        spent += time.perf_counter() - started
        return out

    for track in tracks:
        wav = decode(track, engine.info.samplerate, engine.info.audio_channels)
        separate_streamed(
            engine.model, TensorSource(wav), lambda _s, _r: None, forward, 1, shifts=1
        )
    return spent


def pickup_latency(daemon: Daemon, root: Path, count: int) -> list[float]:
    """File closed -> separation started, one file at a time into an idle daemon."""
    latencies = []
    for i in range(count):
        name = f"pickup{i:02d}.wav"
        staged = make_tone(root / "pickup-staging" / name, 1.0, frequency=1000 + 50 * i)
        seen = len(daemon.log())
        done_before = published(daemon)
        started_line = f"{name}: separating"
        shutil.copyfile(staged, root / "inbox" / name)  # closed when copyfile returns
        closed = time.monotonic()
        wait_until(lambda: started_line in daemon.log()[seen:], 60, started_line, 0.005)  # noqa: B023
        latencies.append(time.monotonic() - closed)
        wait_until(lambda: published(daemon) > done_before, 120, f"{name} done", 0.2)  # noqa: B023
    return latencies


def cpu_seconds(pid: int) -> float:
    fields = stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def settled(pid: int, window: float = 2.0, share: float = 0.02, timeout: float = 300) -> None:
    """Wait until a process uses under `share` of a core over `window` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = cpu_seconds(pid)
        time.sleep(window)  # the measuring window itself
        if cpu_seconds(pid) - before < share * window:
            return
    raise RuntimeError(f"pid {pid} still busy after {timeout:.0f}s")


def idle_cpu(
    root: Path, mode: str, plan: Plan, rescan_interval: float, settled_share: float
) -> float:
    """Percent of one core used by an idle daemon watching `plan.idle_files` files,
    rescanning them every `rescan_interval` seconds. Measuring starts once the
    daemon uses under `settled_share` of a core: with rescans every few seconds it
    is never quiet, only no longer starting up."""
    repo = root / "tiny-models"
    names = build_repo(repo)
    inbox = root / "inbox"
    for i in range(plan.idle_files):  # not audio: the daemon stays idle, but the
        folder = inbox / f"album{i // 100:03d}"  # poller stats each one all the same
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"notes{i:05d}.txt").write_text("liner notes\n")
    config = daemon_config(
        root,
        repo,
        names["feather"],
        mode=mode,
        settle="2s",
        rescan_interval=f"{rescan_interval:g}s",
    )
    daemon = Daemon(config, root).start()
    try:
        daemon.wait_ready(120)
        assert daemon.process is not None
        pid = daemon.process.pid
        settled(pid, share=settled_share)  # the startup scan and warm-up are done
        before, started = cpu_seconds(pid), time.monotonic()
        time.sleep(plan.idle_seconds)  # the window
        used = cpu_seconds(pid) - before
        return 100.0 * used / (time.monotonic() - started)
    finally:
        daemon.stop()


def hashing(root: Path, size: int) -> tuple[float, float]:
    """MB/s of stemd's sha256_file and of sha256sum on the same file (best of 3, warm)."""
    from stemd.hashing import sha256_file

    path = root / "big.bin"
    with open(path, "wb") as out:
        chunk = random.Random(0).randbytes(1 << 20)
        for _ in range(size >> 20):
            out.write(chunk)
    ours, theirs = [], []
    for _ in range(3):
        started = time.perf_counter()
        digest = sha256_file(path)
        ours.append(time.perf_counter() - started)
        started = time.perf_counter()
        line = subprocess.run(["sha256sum", str(path)], capture_output=True, check=True, text=True)
        theirs.append(time.perf_counter() - started)
        assert line.stdout.split()[0] == digest
    path.unlink()
    mb = size / 1e6
    return mb / min(ours), mb / min(theirs)


def vm_kib(pid: int, field: str) -> int:
    """VmHWM (peak RSS) or VmRSS of a live process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0


def stemd_peak_rss(root: Path, repo: Path, model: str, track: Path) -> tuple[int, int]:
    """(RSS once ready and warmed up, peak RSS after `track` is published), KiB."""
    ready, peak, _log = daemon_peak_rss(daemon_config(root, repo, model), root, track)
    return ready, peak


def daemon_peak_rss(config: Path, root: Path, track: Path) -> tuple[int, int, str]:
    """A daemon on `config` in `root` given `track`: (RSS once ready and warmed up,
    peak RSS after it is published, KiB; its log)."""
    daemon = Daemon(config, root).start()
    try:
        daemon.wait_warm(600)
        assert daemon.process is not None
        ready = vm_kib(daemon.process.pid, "VmRSS")
        shutil.copyfile(track, root / "inbox" / track.name)
        wait_until(lambda: published(daemon) == 1, 7200, track.name, 1.0)
        return ready, vm_kib(daemon.process.pid, "VmHWM"), daemon.log()
    finally:
        daemon.stop(600)


def memory_by_length(work: Path, lengths: tuple[float, ...]) -> list[dict[str, float]]:
    """Peak RSS of the running daemon (VmHWM, what `top` shows at its highest) on
    tracks of each length. The featherweight model keeps the separations to
    minutes on a CPU; a track's buffers do not depend on the model, and the
    model's own share is the `ready` RSS."""
    repo = work / "tiny-models"
    names = build_repo(repo)
    rows = []
    for seconds in lengths:
        track = make_tone(work / "lengths" / f"{seconds:g}.flac", seconds, frequency=220)
        root = work / f"c-length-{seconds:g}"
        ready, peak = stemd_peak_rss(root, repo, names["feather"], track)
        shutil.rmtree(root, ignore_errors=True)  # gigabytes of stems
        track.unlink()
        mix_mib = seconds * 44100 * 2 * 4 / 2**20  # the decoded mix, float32 stereo
        rows.append(
            {
                "seconds": seconds,
                "ready_mib": ready / 1024,
                "peak_mib": peak / 1024,
                "mix_mib": mix_mib,
            }
        )
    return rows


# Per-round ratios, and which way is worse for each: a/c and b/c should be high
# (stemd faster), c/d low (stemd close to the floor), the model share high.
RATIOS = {
    "a/c": ("a", "c", min),
    "b/c": ("b", "c", min),
    "b/cold c": ("b", "c_cold", min),
    "c/d": ("c", "d", max),
    "model share of c": ("c_model", "c", min),
}


def per_round(runs: dict[str, list[float]]) -> dict[str, list[float]]:
    """Each ratio, round by round: both sides measured minutes apart, never a
    fast run of one side against a slow run of the other."""
    return {
        name: [top / bottom for top, bottom in zip(runs[num], runs[den], strict=True)]
        for name, (num, den, _worst) in RATIOS.items()
    }


def summary(values: list[float], name: str) -> dict[str, float]:
    worst = RATIOS[name][2]
    return {
        "median": statistics.median(values),
        "worst": worst(values),
        "spread": max(values) - min(values),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer and shorter tracks")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    work = (args.out / "work").resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    torch.set_num_threads(os.cpu_count() or 1)
    results: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.cuda.is_available(),
        },
        "plan": plan.__dict__,
    }

    def say(message: str) -> None:
        print(f"[bench] {message}", file=sys.stderr, flush=True)

    repo = work / "models"
    build_model(repo)
    tracks, long = make_tracks(work / "tracks", plan)
    audio_s = plan.short_tracks * plan.short_seconds
    say(f"{len(tracks)} tracks of {plan.short_seconds:g}s, and one of {plan.long_seconds:g}s")

    runs: dict[str, list[float]] = {k: [] for k in ("a", "b", "c", "c_cold", "d", "c_model")}
    latencies: list[float] = []
    for n in range(1, plan.rounds + 1):
        say(f"round {n} of {plan.rounds}; a: demucs CLI once per file")
        runs["a"].append(run_cli_per_file(repo, work, work / f"a{n}", tracks))
        say(f"a: {runs['a'][-1]:.1f}s; b: demucs CLI once with all files")
        runs["b"].append(timed(demucs_cli(repo, work / f"b{n}", tracks), work)[0])
        say(f"b: {runs['b'][-1]:.1f}s; c: stemd, warm")
        c_run, daemon = run_stemd(repo, work / f"c{n}", tracks)
        runs["c"].append(c_run)
        runs["c_model"].append(model_seconds(daemon))
        say(f"c: {c_run:.1f}s")
        try:
            if n == 1:
                say("pickup latency")
                latencies = pickup_latency(daemon, work / f"c{n}", plan.pickups)
        finally:
            daemon.stop(600)
        say("cold c: stemd from its start")
        runs["c_cold"].append(run_stemd_cold(repo, work / f"c-cold{n}", tracks))
        say(f"cold c: {runs['c_cold'][-1]:.1f}s; d: forward passes alone")
        runs["d"].append(floor_seconds(repo, tracks))
        say(f"d: {runs['d'][-1]:.1f}s")
        for folder in (f"a{n}", f"b{n}", f"c{n}", f"c-cold{n}"):
            shutil.rmtree(work / folder, ignore_errors=True)
    rounds = per_round(runs)

    say(f"peak RSS on the {plan.long_seconds:g}s track: demucs CLI")
    _seconds, rss_b = timed(demucs_cli(repo, work / "b-long", [long]), work)
    say("peak RSS: stemd")
    _ready, rss_c = stemd_peak_rss(work / "c-long", repo, MODEL, long)
    say("peak RSS by track length (featherweight model)")
    lengths = memory_by_length(work, plan.memory_seconds)

    say("idle CPU")
    idle: dict[str, dict[str, float]] = {}
    for mode in ("inotify", "poll"):
        quiet = idle_cpu(work / f"idle-{mode}-quiet", mode, plan, NO_RESCAN_S, 0.02)
        busy = idle_cpu(work / f"idle-{mode}-rescans", mode, plan, plan.rescan_interval, 0.6)
        rescan_cpu = max(0.0, busy - quiet) / 100 * plan.rescan_interval
        idle[mode] = {
            "between_rescans": quiet,
            "rescanning": busy,
            "rescan_cpu_seconds": rescan_cpu,
            # derived: the quiet rate plus one rescan per default interval
            "at_default_interval": quiet + 100 * rescan_cpu / DEFAULT_RESCAN_S,
        }
    say("hashing")
    ours_mbs, sha256sum_mbs = hashing(work, plan.hash_bytes)

    results["runs_seconds"] = runs
    results["rounds"] = rounds
    results["ratios"] = {name: summary(values, name) for name, values in rounds.items()}
    results["audio_seconds"] = audio_s
    results["pickup_latency_s"] = {
        "median": statistics.median(latencies),
        "p95": sorted(latencies)[max(0, round(0.95 * len(latencies)) - 1)],
        "all": latencies,
        "settle_s": 1.0,
    }
    results["idle_cpu_percent"] = {
        **idle,
        "files": plan.idle_files,
        "seconds": plan.idle_seconds,
        "rescan_interval_s": plan.rescan_interval,
        "default_rescan_interval_s": DEFAULT_RESCAN_S,
    }
    results["peak_rss_mib_long_track"] = {"b_cli": rss_b / 1024, "c_stemd": rss_c / 1024}
    results["stemd_memory_by_length"] = lengths
    results["hashing_mb_s"] = {
        "stemd": ours_mbs,
        "sha256sum": sha256sum_mbs,
        "ratio": ours_mbs / sha256sum_mbs,
        "bytes": plan.hash_bytes,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    shutil.rmtree(work, ignore_errors=True)


def table(r: dict[str, Any]) -> str:
    runs, q = r["runs_seconds"], r["ratios"]
    p, i, m, h = r["pickup_latency_s"], r["idle_cpu_percent"], r["peak_rss_mib_long_track"], r[
        "hashing_mb_s"]  # fmt: skip
    lengths = r["stemd_memory_by_length"]
    shortest = lengths[0]
    plan = r["plan"]

    def seconds(key: str) -> str:
        return " / ".join(f"{value:.1f}" for value in runs[key]) + " s"

    def ratio(name: str, fmt: str = "{:.2f}") -> str:
        median, worst = q[name]["median"], q[name]["worst"]
        return f"{fmt.format(median)} (worst round {fmt.format(worst)})"

    rows = [
        ("a: demucs CLI, once per file", seconds("a")),
        ("b: demucs CLI, all files at once", seconds("b")),
        ("c: stemd warm, all files dropped", seconds("c")),
        ("cold c: stemd from `stemd run`, files waiting", seconds("c_cold")),
        ("d: forward passes alone", seconds("d")),
        ("a/c (target >= 1.25)", ratio("a/c")),
        ("b/c (target >= 1.0)", ratio("b/c")),
        ("b/cold c", ratio("b/cold c")),
        ("c/d (target <= 1.10)", ratio("c/d")),
        ("share of c the model computed", ratio("model share of c", "{:.1%}")),
        (
            f"pickup latency, median / p95 (settle {p['settle_s']:g} s)",
            f"{p['median']:.2f} s / {p['p95']:.2f} s",
        ),
        *(
            (
                f"idle CPU, {i['files']} files, {mode}: between rescans / rescanning every "
                f"{i['rescan_interval_s']:g} s / at the default "
                f"{i['default_rescan_interval_s'] / 60:g} min (derived)",
                f"{i[mode]['between_rescans']:.2f} / {i[mode]['rescanning']:.2f} / "
                f"{i[mode]['at_default_interval']:.2f} %; one rescan: "
                f"{i[mode]['rescan_cpu_seconds']:.2f} CPU s",
            )
            for mode in ("inotify", "poll")
        ),
        (f"peak RSS, {plan['long_seconds']:g} s track: demucs CLI", f"{m['b_cli']:.0f} MiB"),
        (f"peak RSS, {plan['long_seconds']:g} s track: stemd", f"{m['c_stemd']:.0f} MiB"),
        *(
            (
                f"stemd, {row['seconds'] / 60:g} min track (featherweight model): "
                "ready / peak RSS (target: peak <= 2.5 GiB, <= 1.2x the shortest's)",
                f"{row['ready_mib']:.0f} / {row['peak_mib']:.0f} MiB, "
                f"{row['peak_mib'] / shortest['peak_mib']:.2f}x the "
                f"{shortest['seconds'] / 60:g} min track's peak (its decoded mix: "
                f"{row['mix_mib']:.0f} MiB)",
            )
            for row in lengths
        ),
        (
            f"hashing {h['bytes'] >> 20} MiB: stemd / sha256sum",
            f"{h['stemd']:.0f} / {h['sha256sum']:.0f} MB/s ({h['ratio']:.0%})",
        ),
    ]
    head = (
        f"{plan['short_tracks']} tracks x {plan['short_seconds']:g} s, "
        f"{r['machine']['cpus']} CPUs, torch {r['machine']['torch']}, "
        f"{'CUDA' if r['machine']['cuda'] else 'no GPU'} ({r['mode']} run, "
        f"{plan['rounds']} round(s): times are per round, ratios within a round)"
    )
    lines = [head, "", "| measure | result |", "| --- | --- |"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    lines += ["", "| round | a/c | b/c | b/cold c | c/d | model share of c |", "| --- " * 6 + "|"]
    rounds = r["rounds"]
    for n in range(plan["rounds"]):
        lines.append(
            f"| {n + 1} | {rounds['a/c'][n]:.2f} | {rounds['b/c'][n]:.2f} | "
            f"{rounds['b/cold c'][n]:.2f} | {rounds['c/d'][n]:.2f} | "
            f"{rounds['model share of c'][n]:.1%} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
