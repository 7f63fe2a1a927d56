"""`stemd separate`: files once, through the same engine and outbox rules."""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stemd.cli.common import use_model_cache
from stemd.config import Config, default_config_path, load_config
from stemd.errors import EX_OK, EX_SOFTWARE, ConfigError, ConfigIssue

if TYPE_CHECKING:  # torch comes with these: imported when a command needs them
    from stemd.outbox import Outbox
    from stemd.separation.engine import Engine
    from stemd.separation.workfiles import WorkArea
    from stemd.track import Rendered, RenderRequest

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
    "stems": ("output", "stems"),
    "sample_rate": ("output", "sample_rate"),
    "tags": ("output", "tags"),
}


def _separate_overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    overrides: dict[str, dict[str, Any]] = {}
    for flag, (section, key) in SEPARATE_OVERRIDES.items():
        if getattr(args, flag) is not None:
            overrides.setdefault(section, {})[key] = getattr(args, flag)
    return overrides


def _flag_name(flag: str) -> str:
    return "--" + flag.replace("_", "-")


def _as_flag(issue: ConfigIssue, args: argparse.Namespace) -> ConfigIssue:
    """The issue in the words the user used: a key a flag set is named as that flag,
    where the issue is filed and in its message (`--two-stems`, not output.two_stems)."""
    given = {
        f"{section}.{key}": _flag_name(flag)
        for flag, (section, key) in SEPARATE_OVERRIDES.items()
        if getattr(args, flag) is not None
    }
    if not given:
        return issue
    pattern = re.compile(r"(?<![\w.])(" + "|".join(map(re.escape, given)) + r")(?![\w])")
    message = pattern.sub(lambda match: given[match.group(1)], issue.message)
    if issue.key in given:
        return ConfigIssue("command line", given[issue.key], message)
    return ConfigIssue(issue.source, issue.key, message)


def separate_cache_dir() -> Path:
    """Where `stemd separate` without a config keeps its work files."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "stemd"


def cmd_separate(args: argparse.Namespace) -> int:
    from stemd.allocator import tune_for_model

    tune_for_model()  # as `stemd run` does: the model's passes reuse their memory
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
    try:
        config = load_config(path if use_file else None, overrides)
    except ConfigError as err:  # name the flag, where a flag set the key
        raise ConfigError([_as_flag(issue, args) for issue in err.issues]) from None
    setup_logging("stderr", config.logging.level)
    use_model_cache(config)
    from stemd.separation.modelcache import check_reachable

    check_reachable(config.model.name, config.model.repo)  # an offline start fails here, fast
    from stemd.separation.engine import EXPORTS, Engine
    from stemd.separation.workfiles import WorkArea
    from stemd.track import RenderRequest, stems_folder

    # exported networks (model.backend) are kept where the work files are
    state = config.state_dir if use_file else separate_cache_dir()
    engine = Engine(config.model, exports=state / EXPORTS)
    try:
        engine.check_stem(config.output.two_stems, "config", "output.two_stems")
        engine.check_stems(config.output.stems, "config", "output.stems")
    except ConfigError as err:
        raise ConfigError([_as_flag(issue, args) for issue in err.issues]) from None
    config.outbox.mkdir(parents=True, exist_ok=True)
    outbox = Outbox(config.outbox, config.output)
    params = profile_params(config, engine.info)
    key = profile_key(params)
    # decoded mix and stems wait on local disk, never in memory: in state_dir
    # when a config names one, else in the user's cache (not /tmp: often RAM)
    work_area = WorkArea(state)
    failures = 0
    for file in args.files:
        if not file.is_file():
            print(f"stemd: {file}: no such file", file=sys.stderr)
            failures += 1
            continue
        sha = sha256_file(file)
        folder = stems_folder(engine.info, config, file.name, sha)
        existing = outbox.find_ours(folder, sha, key)
        if existing is not None:  # this content, these settings: nothing to redo
            print(f"{file}: reused the stems already in {config.outbox / existing}")
            continue
        if outbox.would_skip(folder, sha, key):  # decided before, not after, separating
            print(f"{file}: not written, {folder.name} exists (on_conflict: skip)")
            continue
        request = RenderRequest(file, file.name, sha, key, params, f"separate-{os.getpid()}")
        try:
            rendered = _render_with_a_bar(engine, outbox, config, request, work_area)
        except InputError as err:  # the bar has ended its line: the reason gets its own
            print(f"stemd: {err}", file=sys.stderr)
            failures += 1
            continue
        target = outbox.publish(rendered.temp, rendered.folder, sha, key)
        if target is None:
            print(f"{file}: not written, {rendered.folder.name} exists (on_conflict: skip)")
        else:
            print(f"{file}: stems in {config.outbox / target}")
    return EX_SOFTWARE if failures else EX_OK


def _render_with_a_bar(
    engine: Engine, outbox: Outbox, config: Config, request: RenderRequest, work_area: WorkArea
) -> Rendered:
    """One track with a progress bar on stderr, closed (its line ended) before
    anything else is printed, whatever happens."""
    from tqdm import tqdm

    from stemd.track import render_track

    with tqdm(
        total=100,
        desc=request.path.name,
        unit="%",
        bar_format="{l_bar}{bar}| {elapsed}",
        file=sys.stderr,
    ) as bar:

        def advance(fraction: float) -> None:
            bar.update(round(fraction * 100) - bar.n)

        rendered = render_track(engine, outbox, config, request, work_area, progress=advance)
        advance(1.0)
    return rendered
