"""The daemon's commands: run it, check its config, install it as a service."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import yaml

from stemd import __version__
from stemd.cli.common import config_from, use_model_cache
from stemd.config import Config
from stemd.errors import EX_OK, ConfigError
from stemd.settle import BUILTIN_IGNORE

log = logging.getLogger("stemd")


def cmd_run(args: argparse.Namespace) -> int:
    from stemd.allocator import tune_for_model

    malloc = tune_for_model()  # first: before any thread starts
    from stemd.logs import setup_logging

    refuse_root_in_container()
    config, path = config_from(args)
    setup_logging(config.logging.target, config.logging.level)
    use_model_cache(config)
    from stemd.service import Service

    log.info("stemd %s starting with %s", __version__, path)
    if malloc is not None:
        log.info("%s", malloc)
    return Service(config, path).run()


def refuse_root_in_container() -> None:
    """In stemd's image, the entrypoint runs stemd as PUID:PGID; root only when
    PUID=0 says so on purpose (files root owns on a share are the classic
    complaint about media containers)."""
    if os.environ.get("STEMD_CONTAINER") and os.geteuid() == 0 and os.environ.get("PUID") != "0":
        raise ConfigError.single(
            "environment",
            "PUID",
            "stemd will not run as root in its container: start the container through its "
            "entrypoint with PUID/PGID of your media's owner, or set PUID=0 to run as root "
            "on purpose",
        )


def cmd_check(args: argparse.Namespace) -> int:
    """Every problem `run` would refuse the config for, before anything is made:
    the YAML, the files it names, and the model's stems (loaded from disk)."""
    config, path = config_from(args)
    use_model_cache(config)
    from stemd.preflight import preflight

    found = preflight(config, path.name if path is not None else "<defaults>")
    for warning in found.warnings:
        print(f"stemd: warning: {warning}", file=sys.stderr)
    found.raise_issues()
    if args.explain:
        for line in explain_paths(config, args.explain):
            print(line)
        return EX_OK
    print(f"# {path}: valid")
    print(yaml.safe_dump(config.to_display(), sort_keys=False, allow_unicode=True), end="")
    # what reaches the worker, as comments: the output stays the YAML above
    watch = config.watch
    print(f"# taken from the inbox: files ending in {' '.join('.' + e for e in watch.extensions)}")
    print(
        "# never taken, built in (any part of the path, case-insensitive): "
        + " ".join(BUILTIN_IGNORE)
    )
    configured = " ".join(watch.ignore) if watch.ignore else "(none)"
    print(f"# never taken, watch.ignore: {configured}")
    for note in found.notes:
        print(f"# {note}")
    return EX_OK


def cmd_install_service(args: argparse.Namespace) -> int:
    from stemd.install import install, uninstall

    root = args.root.resolve()
    given = args.config.resolve() if args.config is not None else None
    report = uninstall(root) if args.uninstall else install(root, given)
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


def explain_paths(config: Config, paths: list[str]) -> list[str]:
    """For each inbox path (relative, or absolute inside the inbox): the rule it
    takes, and the output keys its job is rendered with."""
    from stemd.choices import RuleBook, apply_choices, shown_choices

    book = RuleBook(config.rules)
    lines: list[str] = []
    for given in paths:
        relative = given
        candidate = Path(given)
        if candidate.is_absolute():
            try:
                relative = candidate.resolve().relative_to(config.inbox.resolve()).as_posix()
            except ValueError:
                lines.append(f"{given}: not inside the inbox {config.inbox}")
                continue
        found = book.match(relative)
        which = (
            f"rules[{found[0]}] (match {found[1].match!r})"
            if found is not None
            else "no rule matches: the output section"
        )
        output = apply_choices(config.output, book.rule_for(relative).choices())
        shown = ", ".join(f"{key}: {value}" for key, value in shown_choices(output).items())
        lines.append(f"{relative}: {which} -> {shown}")
    return lines
