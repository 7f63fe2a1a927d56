"""Typed errors. Each carries the path or key it is about and says what to do.

Only `cli.main` turns these into exit codes (see `exit_code`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

EX_OK = 0
EX_SOFTWARE = 1  # anything unexpected
EX_USAGE = 2  # the command line is incomplete (as argparse exits)
EX_PIPE = 141  # the reader closed the pipe: what a process killed by SIGPIPE reports
EX_UNAVAILABLE = 69  # model or device unavailable
EX_CONFIG = 78  # configuration error


class StemdError(Exception):
    """Base of every error stemd raises on purpose."""

    exit_code = EX_SOFTWARE


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a config file: where, which key, and what is wrong."""

    source: str  # file name, or "<defaults>" / "<command line>"
    key: str  # dotted key, e.g. "watch.settle"; "" for the whole file
    message: str

    def __str__(self) -> str:
        where = f"{self.source}: {self.key}" if self.key else self.source
        return f"{where}: {self.message}"


class ConfigError(StemdError):
    """The configuration is invalid. Holds every issue found, not just the first."""

    exit_code = EX_CONFIG

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = list(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))

    @classmethod
    def single(cls, source: str, key: str, message: str) -> ConfigError:
        return cls([ConfigIssue(source, key, message)])


class ModelError(StemdError):
    """The model cannot be loaded or the device cannot be used."""

    exit_code = EX_UNAVAILABLE


class InputError(StemdError):
    """An input file cannot be used. Retrying the same bytes will not help."""

    def __init__(self, path: Path | str, message: str) -> None:
        self.path = str(path)
        super().__init__(f"{path}: {message}")
        self.reason = message


class StateError(StemdError):
    """The state directory or its ledger cannot be used."""

    exit_code = EX_UNAVAILABLE


class OutboxError(StemdError):
    """Stems could not be written or published into the outbox."""


class NoSpace(StemdError):
    """A disk stemd writes to has no room. Not the track's fault: the job waits
    for space instead of using up its attempts."""


class NameTaken(OutboxError):
    """The track folder's name appeared while publishing (another host, another
    copy): the same publish may simply be tried again."""


class OutboxFull(OutboxError, NoSpace):
    """The outbox has no room for a track's stems."""


class WorkAreaFull(NoSpace):
    """The work area (state_dir/work, local disk) has no room for a track's work
    files (its decoded mix and its stems before encoding)."""


class JobCancelled(StemdError):
    """Raised inside a separation when the job must stop at the next chunk."""


class OutputError(StemdError):
    """A command's standard output cannot be written (a full disk, a closed
    terminal): said in one line, not a traceback."""


class OutputClosed(OutputError):
    """Whoever read the output stopped reading (`stemd status | head -2`): the
    command ends quietly, as other Unix tools do."""
