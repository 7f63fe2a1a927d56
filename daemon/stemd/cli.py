"""Command line: run, check, separate, status, retry, models.

The only place that exits the process: typed errors become exit codes here
(78 configuration, 69 model/device/state unavailable, 1 anything else).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from stemd import __version__
from stemd.config import Config, default_config_path, load_config
from stemd.errors import EX_OK, EX_SOFTWARE, ConfigError, StateError, StemdError

log = logging.getLogger("stemd")


def _add_config_flag(parser: argparse.ArgumentParser, top: bool) -> None:
    # Accepted before and after the subcommand; the subcommand's copy must not
    # overwrite a value given before it, hence SUPPRESS there.
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        default=None if top else argparse.SUPPRESS,
        help="config file (default: $STEMD_CONFIG, else /etc/stemd/stemd.yaml)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stemd", description="Watch a folder and separate the music dropped into it."
    )
    parser.add_argument("--version", action="version", version=f"stemd {__version__}")
    _add_config_flag(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon in the foreground")
    _add_config_flag(run, top=False)

    check = sub.add_parser("check", help="validate the config and print it resolved")
    _add_config_flag(check, top=False)

    sep = sub.add_parser("separate", help="separate files once, with a progress bar")
    _add_config_flag(sep, top=False)
    sep.add_argument("files", nargs="+", type=Path, metavar="FILE")
    sep.add_argument("-o", "--out", type=Path, help="output folder (default: the outbox)")
    sep.add_argument("--model", help="model name, hf://owner/name, or signature in --repo")
    sep.add_argument("--repo", type=Path, help="local folder of models")
    sep.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    sep.add_argument("--shifts", type=int)
    sep.add_argument("--format", choices=["wav", "flac", "mp3"])
    sep.add_argument("--sample-format", choices=["s16", "s24", "f32"])
    sep.add_argument("--clip", choices=["rescale", "clamp", "none"])
    sep.add_argument("--two-stems", metavar="STEM")

    status = sub.add_parser("status", help="what is queued, running, done and failed")
    _add_config_flag(status, top=False)
    status.add_argument("--json", action="store_true", help="machine-readable output")

    retry = sub.add_parser("retry", help="queue failed jobs again")
    _add_config_flag(retry, top=False)
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("--failed", action="store_true", help="every failed job")
    which.add_argument("sha256", nargs="?", help="the content hash (a prefix of 6+ digits)")

    models = sub.add_parser("models", help="list or fetch models")
    _add_config_flag(models, top=False)
    models_sub = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    models_sub.add_parser("list", help="models known to demucs and the configured repo")
    fetch = models_sub.add_parser("fetch", help="download a model into the local cache")
    fetch.add_argument("name")

    service = sub.add_parser(
        "install-service", help="install (or --uninstall) the systemd unit, user and folders"
    )
    service.add_argument(
        "--root", type=Path, default=Path("/"), help="install below this folder (default: /)"
    )
    service.add_argument("--uninstall", action="store_true", help="remove what install wrote")
    return parser


def _config(args: argparse.Namespace, optional: bool = False) -> tuple[Config, Path | None]:
    path = default_config_path(args.config)
    if optional and args.config is None and not path.exists():
        return load_config(None), None  # `separate` works with no config at all
    return load_config(path), path


def use_model_cache(config: Config) -> None:
    """Point demucs' downloads (Hugging Face hub, torch.hub) into model.cache.

    Must run before demucs/huggingface_hub are imported: huggingface_hub reads
    HF_HOME once, at import.
    """
    cache = config.model.cache
    if cache is not None:
        os.environ["HF_HOME"] = str(cache / "huggingface")
        os.environ["TORCH_HOME"] = str(cache / "torch")


def cmd_run(args: argparse.Namespace) -> int:
    from stemd.allocator import tune_for_model

    malloc = tune_for_model()  # first: before any thread starts
    from stemd.logs import setup_logging

    config, path = _config(args)
    setup_logging(config.logging.target, config.logging.level)
    use_model_cache(config)
    from stemd.service import Service

    log.info("stemd %s starting with %s", __version__, path)
    if malloc is not None:
        log.info("%s", malloc)
    return Service(config, path).run()


def cmd_check(args: argparse.Namespace) -> int:
    config, path = _config(args)
    print(f"# {path}: valid")
    print(yaml.safe_dump(config.to_display(), sort_keys=False, allow_unicode=True), end="")
    return EX_OK


# `stemd separate` flag -> (config section, key)
SEPARATE_OVERRIDES = {
    "model": ("model", "name"),
    "repo": ("model", "repo"),
    "device": ("model", "device"),
    "shifts": ("model", "shifts"),
    "format": ("output", "format"),
    "sample_format": ("output", "sample_format"),
    "clip": ("output", "clip"),
    "two_stems": ("output", "two_stems"),
}


def _separate_overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    overrides: dict[str, dict[str, Any]] = {}
    for flag, (section, key) in SEPARATE_OVERRIDES.items():
        if getattr(args, flag) is not None:
            overrides.setdefault(section, {})[key] = getattr(args, flag)
    return overrides


def separate_cache_dir() -> Path:
    """Where `stemd separate` without a config keeps its work files."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "stemd"


def cmd_separate(args: argparse.Namespace) -> int:
    from stemd.allocator import tune_for_model

    tune_for_model()  # as `stemd run` does: the model's passes reuse their memory
    from tqdm import tqdm

    from stemd.errors import InputError
    from stemd.hashing import sha256_file
    from stemd.logs import setup_logging
    from stemd.outbox import Outbox
    from stemd.profile import profile_key, profile_params

    path = default_config_path(args.config)
    use_file = args.config is not None or path.exists()
    overrides: dict[str, Any] = _separate_overrides(args)
    if args.out is not None:
        overrides["outbox"] = str(args.out)
    elif not use_file:
        overrides["outbox"] = "separated"  # what the demucs CLI writes to
    config = load_config(path if use_file else None, overrides)
    setup_logging("stderr", config.logging.level)
    use_model_cache(config)
    from stemd.engine import Engine
    from stemd.track import RenderRequest, render_track
    from stemd.workfiles import WorkArea

    engine = Engine(config.model)
    engine.check_stem(config.output.two_stems, "command line", "--two-stems")
    config.outbox.mkdir(parents=True, exist_ok=True)
    outbox = Outbox(config.outbox, config.output)
    params = profile_params(config, engine.info)
    key = profile_key(params)
    # decoded mix and stems wait on local disk, never in memory: in state_dir
    # when a config names one, else in the user's cache (not /tmp: often RAM)
    work_area = WorkArea(config.state_dir if use_file else separate_cache_dir())
    failures = 0
    for file in args.files:
        if not file.is_file():
            print(f"stemd: {file}: no such file", file=sys.stderr)
            failures += 1
            continue
        sha = sha256_file(file)
        with tqdm(
            total=100,
            desc=file.name,
            unit="%",
            bar_format="{l_bar}{bar}| {elapsed}",
            file=sys.stderr,
        ) as bar:

            def advance(fraction: float, bar: Any = bar) -> None:
                bar.update(round(fraction * 100) - bar.n)

            try:
                rendered = render_track(
                    engine,
                    outbox,
                    config,
                    RenderRequest(file, file.name, sha, key, params, f"separate-{os.getpid()}"),
                    work_area,
                    progress=advance,
                )
            except InputError as err:
                print(f"stemd: {err}", file=sys.stderr)
                failures += 1
                continue
            advance(1.0)
        target = outbox.publish(rendered.temp, rendered.folder, sha, key)
        if target is None:
            print(f"{file}: not written, {rendered.folder.name} exists (on_conflict: skip)")
        else:
            print(f"{file}: stems in {config.outbox / target}")
    return EX_SOFTWARE if failures else EX_OK


def _open_ledger(config: Config) -> Any:
    from stemd.ledger import LEDGER_FILE, Ledger

    path = config.state_dir / LEDGER_FILE
    if not path.exists():
        raise StateError(f"{path}: no ledger yet; start the daemon (stemd run) first")
    return Ledger(path)


def cmd_status(args: argparse.Namespace) -> int:
    from stemd.ledger import JobState

    config, _ = _config(args)
    ledger = _open_ledger(config)
    now = time.time()
    try:
        report = {
            "counts": ledger.counts(),
            "running": [
                {"source": job.source, "progress": round(job.progress, 3), "attempts": job.attempts}
                for job in ledger.jobs_in(JobState.RUNNING)
            ],
            # waiting jobs with their attempts used so far and, after a failed
            # attempt or a full outbox, why they wait and for how much longer
            "queued": [
                {
                    "source": job.source,
                    "sha256": job.sha256,
                    "attempts": job.attempts,
                    "error": job.error,
                    "retry_in": round(max(0.0, job.not_before - now), 1),
                }
                for job in ledger.jobs_in(JobState.QUEUED)
            ],
            "failed": ledger.failed_report(),
        }
    finally:
        ledger.close()
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return EX_OK
    counts = report["counts"]
    print(
        "  ".join(f"{state} {counts[state]}" for state in ("queued", "running", "done", "failed"))
    )
    for job in report["running"]:
        print(f"running: {job['source']} {job['progress']:.0%} (attempt {job['attempts']})")
    for job in report["queued"]:
        if job["error"]:
            print(
                f"waiting: {job['source']} ({job['attempts']} attempt(s) used; "
                f"next try in {job['retry_in']:.0f}s): {job['error']}"
            )
    if report["failed"]:
        print("recent failures:")
        for item in report["failed"]:
            sha = (item["sha256"] or "")[:12] or "-"
            print(
                f"  {item['source']} (sha256 {sha}, attempts {item['attempts']}): {item['error']}"
            )
    return EX_OK


def cmd_retry(args: argparse.Namespace) -> int:
    config, _ = _config(args)
    if args.sha256 is not None and (
        len(args.sha256) < 6 or any(c not in "0123456789abcdefABCDEF" for c in args.sha256)
    ):
        raise ConfigError.single(
            "command line", "SHA256", f"{args.sha256!r} is not a sha256 prefix (6+ hex digits)"
        )
    ledger = _open_ledger(config)
    try:
        count = ledger.retry(None if args.failed else args.sha256)
    finally:
        ledger.close()
    print(f"{count} job(s) queued again")
    return EX_OK if count or args.failed else EX_SOFTWARE


def cmd_models(args: argparse.Namespace) -> int:
    from demucs.pretrained import REMOTE_ROOT

    path = default_config_path(args.config)
    config = load_config(path if (args.config or path.exists()) else None)
    if args.models_command == "list":
        names = sorted(p.stem for p in Path(REMOTE_ROOT).glob("*.yaml"))
        print("demucs models (downloaded on first use, or fetched with `stemd models fetch`):")
        for name in names:
            mark = "  (configured)" if name == config.model.name else ""
            print(f"  {name}{mark}")
        print("  demucs_unittest  (tiny, random weights: for tests only)")
        repo = config.model.repo
        if repo is not None:
            print(f"in model.repo {repo}:")
            if repo.is_dir():
                for item in sorted(repo.iterdir()):
                    if item.suffix in (".th", ".yaml"):
                        print(f"  {item.stem.split('-')[0]}  ({item.name})")
            else:
                print("  (folder missing)")
        return EX_OK
    use_model_cache(config)
    from stemd.engine import load_model, model_caches

    load_model(args.name, None)
    hf_home, torch_home = model_caches()
    print(f"{args.name}: fetched into the model cache ({hf_home}, {torch_home})")
    return EX_OK


def cmd_install_service(args: argparse.Namespace) -> int:
    from stemd.install import install, uninstall

    root = args.root.resolve()
    report = uninstall(root) if args.uninstall else install(root)
    for path in report.written:
        print(f"wrote   {path}")
    for path in report.removed:
        print(f"removed {path}")
    for path in report.kept:
        print(f"kept    {path}")
    for warning in report.warnings:
        print(f"stemd: warning: {warning}", file=sys.stderr)
    if report.next_steps:
        print("next:")
        for step in report.next_steps:
            print(f"  {step}")
    return EX_OK


COMMANDS = {
    "run": cmd_run,
    "check": cmd_check,
    "separate": cmd_separate,
    "status": cmd_status,
    "retry": cmd_retry,
    "models": cmd_models,
    "install-service": cmd_install_service,
}


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        code = COMMANDS[args.command](args)
    except ConfigError as err:
        for issue in err.issues:
            print(f"stemd: config error: {issue}", file=sys.stderr)
        code = err.exit_code
    except StemdError as err:
        print(f"stemd: {err}", file=sys.stderr)
        code = err.exit_code
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)
