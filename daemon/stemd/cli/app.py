"""The parser and `main`: the only place that exits the process. Typed errors
become exit codes here (78 configuration, 69 model/device/state unavailable,
2 an incomplete command line, 141 a reader that stopped reading, 1 anything else).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from stemd import __version__
from stemd.cli.daemon import cmd_check, cmd_install_service, cmd_run
from stemd.cli.jobs import cmd_dismiss, cmd_retry, cmd_status
from stemd.cli.models import cmd_models
from stemd.cli.ping import cmd_ping
from stemd.cli.separate import cmd_separate
from stemd.cli.token import cmd_token
from stemd.errors import EX_PIPE, EX_USAGE, ConfigError, OutputClosed, OutputError, StemdError
from stemd.stdout import discard, guard_stdout

CONFIG_HELP = "config file (default: $STEMD_CONFIG, else /etc/stemd/stemd.yaml)"


def _stem_list(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _sample_rate(text: str) -> str | int:
    return int(text) if text.isdigit() else text


def _add_config_flag(
    parser: argparse.ArgumentParser, top: bool, help_text: str = CONFIG_HELP
) -> None:
    # One rule for every command: accepted before the command and after it (after
    # each word of it: `stemd models list -c FILE`); a later copy must not overwrite
    # a value given before it, hence SUPPRESS there.
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        default=None if top else argparse.SUPPRESS,
        help=help_text,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stemd", description="Watch a folder and separate the music dropped into it."
    )
    parser.add_argument("--version", action="version", version=f"stemd {__version__}")
    _add_config_flag(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon in the foreground")
    _add_config_flag(run, top=False)

    check = sub.add_parser("check", help="validate the config and print it resolved")
    _add_config_flag(check, top=False)
    check.add_argument(
        "--explain",
        nargs="+",
        metavar="PATH",
        help="say which rule (rules:) each inbox path takes and what it writes, "
        "e.g. karaoke/song.mp3",
    )

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
    sep.add_argument(
        "--stems", metavar="STEM,...", type=_stem_list, help="only these stems, e.g. vocals,drums"
    )
    sep.add_argument(
        "--sample-rate",
        metavar="RATE",
        type=_sample_rate,
        help="model (44.1 kHz), source (each file's own) or a rate in Hz",
    )
    sep.add_argument("--tags", choices=["copy", "none"])

    status = sub.add_parser("status", help="what is queued, running, done and failed")
    _add_config_flag(status, top=False)
    status.add_argument("--json", action="store_true", help="machine-readable output")

    retry = sub.add_parser("retry", help="queue failed jobs again")
    _add_config_flag(retry, top=False)
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("--failed", action="store_true", help="every failed job")
    which.add_argument("sha256", nargs="?", help="the content hash (a prefix of 6+ digits)")

    dismiss = sub.add_parser(
        "dismiss", help="take failures off the list (the files are left as they are)"
    )
    _add_config_flag(dismiss, top=False)
    which = dismiss.add_mutually_exclusive_group(required=True)
    which.add_argument("--failed", action="store_true", help="every failure")
    which.add_argument("sha256", nargs="?", help="the content hash (a prefix of 6+ digits)")

    models = sub.add_parser("models", help="list, fetch or export models")
    _add_config_flag(models, top=False)
    models_sub = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    listing = models_sub.add_parser(
        "list", help="the models there are, which are on disk and their size, which is used"
    )
    _add_config_flag(listing, top=False)
    fetch = models_sub.add_parser("fetch", help="download a model into the local cache")
    _add_config_flag(fetch, top=False)
    fetch.add_argument("name")
    export = models_sub.add_parser(
        "export",
        help="export the configured model for model.backend (openvino, auto) now, "
        "not at the daemon's first start",
    )
    _add_config_flag(export, top=False)

    token = sub.add_parser("token", help="make an access token for the HTTP server")
    _add_config_flag(token, top=False)
    token_sub = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    new = token_sub.add_parser("new", help="write a random token to PATH (mode 0600), and print it")
    _add_config_flag(new, top=False)
    new.add_argument(
        "path", nargs="?", type=Path, metavar="PATH", help="default: the config's http.token_file"
    )
    new.add_argument(
        "--if-missing",
        action="store_true",
        help="only when there is none (a token already there is checked and kept)",
    )

    show = token_sub.add_parser("show", help="print the token of http.token_file")
    _add_config_flag(show, top=False)

    ping = sub.add_parser(
        "ping", help="exit 0 when the running daemon answers /ping (a health check)"
    )
    _add_config_flag(ping, top=False)

    service = sub.add_parser(
        "install-service",
        help="install (or --uninstall) the systemd unit, user and folders",
        description=(
            "Install stemd as a systemd service. The service reads /etc/stemd/stemd.yaml. "
            "With -c FILE that file is checked and copied there (when none is there yet; "
            "a different one already there is refused, not replaced); without -c, the file "
            "already there is used, or the packaged example is put there."
        ),
    )
    _add_config_flag(service, top=False, help_text="the config to install as /etc/stemd/stemd.yaml")
    service.add_argument(
        "--root", type=Path, default=Path("/"), help="install below this folder (default: /)"
    )
    service.add_argument("--uninstall", action="store_true", help="remove what install wrote")
    return parser


COMMANDS = {
    "run": cmd_run,
    "check": cmd_check,
    "separate": cmd_separate,
    "status": cmd_status,
    "retry": cmd_retry,
    "dismiss": cmd_dismiss,
    "models": cmd_models,
    "token": cmd_token,
    "ping": cmd_ping,
    "install-service": cmd_install_service,
}


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # `stemd` alone: what it can do
        parser.print_help()
        sys.exit(EX_USAGE)
    guard_stdout()
    try:
        code = COMMANDS[args.command](args)
        sys.stdout.flush()  # here, where a failure is still ours to report
    except OutputClosed:
        discard()
        code = EX_PIPE
    except OutputError as err:
        discard()
        print(f"stemd: {err}", file=sys.stderr)
        code = err.exit_code
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
