"""`stemd models`: which models there are, which are on disk; fetching one;
exporting the configured one for its CPU runtime ahead of the first start."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from stemd.cli.common import config_from, use_model_cache
from stemd.config import Config
from stemd.errors import EX_OK, EX_UNAVAILABLE, ConfigError
from stemd.separation.modelnames import BUILT_IN, HUB_PREFIX, bag_members, unknown_name_problem


def _size(paths: Sequence[Path]) -> str:
    total = sum(path.stat().st_size for path in paths)
    return f"{total / 2**20:.1f} MiB" if total >= 2**20 else f"{total / 2**10:.0f} KiB"


def _repo_files(repo: Path, name: str) -> list[Path]:
    """A repo entry's files: a bag's yaml and its members' weights, or one model's."""
    bag = repo / f"{name}.yaml"
    members = bag_members(bag) if bag.is_file() else [name]
    weights = [path for m in members for path in repo.glob(f"{m}*.th")]
    return ([bag] if bag.is_file() else []) + weights


def _list_models(config: Config) -> int:
    use_model_cache(config)
    from stemd.separation.modelcache import cached_files, model_caches
    from stemd.separation.modelnames import BUILT_IN, remote_bags, repo_names

    configured = config.model.name
    repo = config.model.repo

    def mark(name: str) -> str:
        return "  <- model.name" if name == configured else ""

    if repo is not None:
        # with model.repo set, demucs loads from there and nowhere else
        print(f"in model.repo {repo}:")
        if not repo.is_dir():
            print("  (the folder does not exist)")
        for name in repo_names(repo) if repo.is_dir() else []:
            print(f"  {name:<24} {_size(_repo_files(repo, name)):>8}{mark(name)}")
    else:
        hf_home = model_caches()[0]
        print(f"demucs models (their parts load by signature too); on disk in {hf_home}")
        for name in remote_bags():
            files = cached_files(name)
            where = f"{_size(files):>8} on disk" if files else "       -  (fetched on first use)"
            print(f"  {name:<24} {where}{mark(name)}")
    print(f"  {BUILT_IN:<24} built in (tiny, random weights: for tests){mark(BUILT_IN)}")
    if configured.startswith("hf://"):
        print(f"  {configured}  <- model.name (from the hub)")
    return EX_OK


def _export_model(config: Config) -> int:
    """What the daemon does at its first start with model.backend openvino or auto
    (the export, the parity check, auto's timing), done now, with its steps on
    stderr; the daemon then finds it all in state_dir/exports."""
    import sys

    from stemd.logs import setup_logging

    if config.model.backend == "torch":
        print("model.backend is torch: nothing to export (set it to openvino or auto)")
        return EX_OK
    setup_logging("stderr", "info")  # the steps and what each found
    use_model_cache(config)
    from stemd.separation.engine import EXPORTS, Engine, resolve_device, worker_devices

    if not any(resolve_device(name).type == "cpu" for name in worker_devices(config.model)):
        print("model.device has no CPU worker: the exported network runs on the CPU only")
        return EX_OK
    steps = 0

    def step(words: str) -> None:
        nonlocal steps
        steps += 1
        print(f"stemd: [{steps}] {words}", file=sys.stderr, flush=True)

    exports = config.state_dir / EXPORTS
    engine = Engine(config.model, "cpu", exports, on_step=step)
    print(
        f"{config.model.name}: {engine.info.backend}, {engine.info.precision}"
        f" (exports in {exports})"
    )
    if config.model.backend == "openvino" and engine.info.backend == "torch":
        # asked for and not made: the warnings above say why
        print(
            f"stemd: {config.model.name} runs in torch, not OpenVINO (see above)", file=sys.stderr
        )
        return EX_UNAVAILABLE
    return EX_OK


def cmd_models(args: argparse.Namespace) -> int:
    config, _path = config_from(args, optional=True)  # `models` works without a config
    if args.models_command == "list":
        return _list_models(config)
    if args.models_command == "export":
        return _export_model(config)
    problem = unknown_name_problem(args.name, None)
    if problem is not None:
        raise ConfigError.single("command line", "NAME", problem)
    if args.name == BUILT_IN:
        print(f"{args.name}: built into demucs, nothing to fetch")
        return EX_OK
    use_model_cache(config)
    from stemd.separation.modelcache import cached_files, check_reachable, model_caches

    hf_home, torch_home = model_caches()
    if cached_files(args.name.removeprefix(HUB_PREFIX)) is not None:
        print(f"{args.name}: already in the model cache ({hf_home}, {torch_home})")
        return EX_OK
    check_reachable(args.name, None, fetching=True)  # before torch is imported
    from stemd.separation.engine import load_model

    load_model(args.name, None, fetching=True)
    print(f"{args.name}: fetched into the model cache ({hf_home}, {torch_home})")
    return EX_OK
