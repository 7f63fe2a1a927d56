"""What `stemd run` would refuse beyond the YAML itself, found without creating
anything: the files the config names (the HTTP token), and the model's stems that
output.stems and output.two_stems pick from. `stemd check` asks all of it, so a config
it calls valid starts; `run` asks the files before it makes a folder.

Also the warnings a secret's file earns when others may read it.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, field
from pathlib import Path

from stemd.callbacks.signing import SECRET_KEY, read_secret, secret_path
from stemd.config import Config
from stemd.errors import ConfigError, ConfigIssue, ModelError


@dataclass
class Findings:
    issues: list[ConfigIssue] = field(default_factory=list)  # run would exit 78
    warnings: list[str] = field(default_factory=list)  # run starts, but says so
    notes: list[str] = field(default_factory=list)  # what could not be checked, and why

    def raise_issues(self) -> None:
        if self.issues:
            raise ConfigError(self.issues)


def secret_files(config: Config) -> list[tuple[str, Path]]:
    """(key, path) of every file the config names that holds a secret."""
    files: list[tuple[str, Path]] = []
    if config.http.token_file is not None:
        files.append(("http.token_file", config.http.token_file))
    files.append((SECRET_KEY, secret_path(config.http.callback_secret_file, config.state_dir)))
    if config.ledger.password_file is not None:
        files.append(("ledger.password_file", config.ledger.password_file))
    for index, target in enumerate(config.notifications):
        if target.apprise_file is not None:
            files.append((f"notifications[{index}].apprise_file", target.apprise_file))
    return files


def loose_modes(config: Config) -> list[str]:
    """A warning for each secret's file that its group or everyone may read."""
    warnings = []
    for key, path in secret_files(config):
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except OSError:
            continue  # a missing file is an issue of its own, said elsewhere
        if mode & 0o077:
            warnings.append(
                f"{key}: {path} is mode {mode:04o}, so users other than its owner can read "
                f"the secret in it; make it the owner's alone: chmod 600 {path}"
            )
    return warnings


def file_issues(config: Config, source: str) -> Findings:
    """The token file as the HTTP server will read it, the ledger's password file,
    and the modes of secrets."""
    from stemd.http.auth import read_token

    found = Findings(warnings=loose_modes(config))
    password_file = config.ledger.password_file
    if config.ledger.url is not None and password_file is not None:
        try:
            password_file.read_bytes()
        except OSError as err:
            found.issues.append(
                ConfigIssue(
                    source,
                    "ledger.password_file",
                    f"cannot read {password_file} ({err.strerror}); write the database "
                    "password there, readable by stemd alone",
                )
            )
    secret = secret_path(config.http.callback_secret_file, config.state_dir)
    if secret.exists() or secret.is_symlink():  # a missing one is made at start
        try:
            read_secret(secret, source)
        except ConfigError as err:
            found.issues.extend(err.issues)
    token_file = config.http.token_file
    if config.http.listen is not None and token_file is not None:
        try:
            read_token(token_file, source)
        except ConfigError as err:
            found.issues.extend(err.issues)
    return found


def model_issues(config: Config, source: str) -> Findings:
    """output.stems, output.two_stems and model.segment against the model, read with
    the real loading code from disk (as `run` loads it: a model.repo's files are
    code you trust). A hub model not downloaded yet is a note: nothing is
    downloaded here."""
    from stemd.separation.engine import model_sources, stems_issue

    found = Findings()
    two_stems = config.output.two_stems
    wanted: dict[str, tuple[str, ...]] = {
        "output.two_stems": (two_stems,) if two_stems else (),
        "output.stems": config.output.stems or (),
    }
    for i, rule in enumerate(config.rules):  # a rule's stems are the model's too
        wanted[f"rules[{i}].two_stems"] = (rule.two_stems,) if rule.two_stems else ()
        wanted[f"rules[{i}].stems"] = rule.stems or ()
    try:
        sources = model_sources(config.model)
    except ModelError as err:
        found.issues.append(ConfigIssue(source, "model.name", str(err)))
        return found
    except ConfigError as err:
        found.issues.extend(err.issues)
        return found
    if sources is None:
        found.notes.append(
            f"model {config.model.name} is not on disk yet: `stemd run` downloads it "
            f"(or `stemd models fetch {config.model.name}`); its stems are checked then"
        )
        return found
    for key, stems in wanted.items():
        issue = stems_issue(sources, config.model.name, stems, source, key)
        if issue is not None:
            found.issues.append(issue)
    return found


def preflight(config: Config, source: str) -> Findings:
    """Everything `run` would refuse or warn about, beyond the YAML."""
    found = file_issues(config, source)
    model = model_issues(config, source)
    found.issues.extend(model.issues)
    found.notes.extend(model.notes)
    return found
