"""Reading a config file: YAML, the schema, the rules across keys, paths resolved;
every problem reported at once with its file and dotted key (`stemd.yaml:
watch.settle: ...`), so a user fixes a file in one pass.

Relative paths are resolved against the working directory of the process that
loads the file (`make run` runs from the repository root, so `./inbox` is the
repository's inbox); `stemd check` prints them resolved.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ValidationError,
)

from stemd.config.sections import (
    CONFIG_ENV,
    DEFAULT_CONFIG_PATH,
    MP3_RATES,
    PATH_KEYS,
    Config,
    OutputConfig,
    is_loopback,
    listen_address,
)
from stemd.errors import ConfigError, ConfigIssue
from stemd.separation.modelnames import unknown_name_problem


def changed_keys(old: Config, new: Config) -> list[str]:
    """`key: old -> new` for every dotted key whose value differs (for a reload's log)."""

    def flat(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in data.items():
            if isinstance(value, Mapping):
                out.update(flat(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = value
        return out

    before, after = flat(old.to_display()), flat(new.to_display())
    changes = [
        f"{key}: {before.get(key)!r} -> {after.get(key)!r}"
        for key in sorted(before.keys() | after.keys())
        if before.get(key) != after.get(key)
    ]
    if old.notifications != new.notifications and before.get("notifications") == after.get(
        "notifications"
    ):
        changes.append("notifications: a URL changed in a part not shown (secrets are masked)")
    return changes


def default_config_path(explicit: Path | None) -> Path:
    """`-c PATH`, else `$STEMD_CONFIG`, else /etc/stemd/stemd.yaml."""
    if explicit is not None:
        return explicit
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env)
    return DEFAULT_CONFIG_PATH


def load_config(
    path: Path | None,
    overrides: Mapping[str, Any] | None = None,
    base_dir: Path | None = None,
    absolute_paths: bool = False,
) -> Config:
    """Read, validate and resolve a config file. `path=None` means all defaults.

    `overrides` (command-line flags) replace top-level keys or merge into sections.
    `absolute_paths` refuses relative paths (for the service, whose working
    directory is not the admin's).

    Raises ConfigError with every issue found.
    """
    source = path.name if path is not None else "<defaults>"
    raw: dict[str, Any] = {}
    if path is not None:
        raw = _read_yaml(path)
    for key, value in (overrides or {}).items():
        if isinstance(value, Mapping):  # a section: merge key by key
            merged = dict(raw[key]) if isinstance(raw.get(key), dict) else {}
            merged.update(value)
            raw[key] = merged
        else:
            raw[key] = value
    base = base_dir or Path.cwd()
    relative = _relative_paths(raw, source) if absolute_paths else []
    try:
        config = Config.model_validate(raw)
    except ValidationError as err:
        errors = err.errors()
        issues = [_issue_from(source, e) for e in errors]
        issues += _cross_check_partial(raw, errors, source, base)
        raise ConfigError(issues + relative) from None
    config = _resolve_paths(config, base)
    issues = _cross_check(config, source) + relative
    if issues:
        raise ConfigError(issues)
    return config


def _cross_check_partial(
    raw: dict[str, Any], errors: list[Any], source: str, base: Path
) -> list[ConfigIssue]:
    """Cross-key rules on what did validate, so one run reports every problem.

    Invalid keys are dropped (their defaults stand in), and rules touching a
    section that had an error are left out to avoid reporting a default's fault.
    """
    pruned: dict[str, Any] = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    broken_sections: set[str] = set()
    for error in errors:
        loc = [part for part in error["loc"] if isinstance(part, str)]
        if not loc:
            continue
        broken_sections.add(loc[0])
        if len(loc) == 1 or not isinstance(pruned.get(loc[0]), dict):
            pruned.pop(loc[0], None)
        else:
            pruned[loc[0]].pop(loc[1], None)
    try:
        config = _resolve_paths(Config.model_validate(pruned), base)
    except ValidationError:
        return []
    folders = {"inbox", "outbox", "state_dir"}
    return [
        issue
        for issue in _cross_check(config, source)
        if issue.key.split(".")[0] not in broken_sections
        and not (issue.key in folders and broken_sections & folders)
    ]


class _Loader(yaml.SafeLoader):
    """SafeLoader that keeps leading-zero integers (`0664`) as written.

    YAML 1.1 reads `0664` as the octal number 436; file modes are then parsed
    from the text, so `0664`, `"0664"` and `664` all mean rw-rw-r--.
    """


def _int_or_octal_text(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int | str:
    text = str(node.value)
    if re.fullmatch(r"0[0-7]+", text):
        return text
    value: int = loader.construct_yaml_int(node)
    return value


_Loader.add_constructor("tag:yaml.org,2002:int", _int_or_octal_text)


def _read_yaml(path: Path) -> dict[str, Any]:
    name = path.name
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError.single(
            str(path), "", f"no such file; pass -c PATH or set ${CONFIG_ENV}"
        ) from None
    except OSError as err:
        raise ConfigError.single(str(path), "", f"cannot read: {err.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError.single(str(path), "", "not UTF-8 text") from None
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError.single(name, "", f"{where}invalid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError.single(name, "", "the file must be a mapping of keys (inbox: ...)")
    return data


def _issue_from(source: str, error: Mapping[str, Any]) -> ConfigIssue:
    # Union members add their type names to the location; drop those so the key
    # reads as the user wrote it.
    loc = [
        str(part)
        for part in error["loc"]
        if not (isinstance(part, str) and ("[" in part or part in ("int", "str", "float")))
    ]
    # Tuple items show up as trailing integers: report them as key[i].
    key_parts: list[str] = []
    for part in loc:
        if part.isdigit() and key_parts:
            key_parts[-1] += f"[{part}]"
        else:
            key_parts.append(part)
    key = ".".join(key_parts)
    kind = error["type"]
    if kind == "extra_forbidden":
        message = "unknown key; check its spelling against the documented config"
        close = _close_keys(key_parts)
        if close:
            message = f"unknown key; did you mean {' or '.join(close)}?"
    elif kind == "literal_error":
        expected = error.get("ctx", {}).get("expected", "")
        message = f"{error.get('input')!r} is not allowed; use one of {expected}"
    elif kind == "value_error":
        message = str(error.get("ctx", {}).get("error", error["msg"]))
    else:
        message = f"{error['msg']} (got {error.get('input')!r})"
    return ConfigIssue(source, key, message)


def _close_keys(key_parts: list[str]) -> list[str]:
    """The documented keys spelled most like an unknown one (`watch.setle` ->
    `settle`), looked up in the section it was written in."""
    section: type[BaseModel] = Config
    for part in key_parts[:-1]:
        field = section.model_fields.get(part)
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        section = annotation
    return difflib.get_close_matches(key_parts[-1], list(section.model_fields), n=2, cutoff=0.6)


def _raw_value(raw: Mapping[str, Any], key: str) -> Any:
    """The value of a dotted key in the file as read, or None."""
    value: Any = raw
    for part in key.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _relative_paths(raw: Mapping[str, Any], source: str) -> list[ConfigIssue]:
    return [
        ConfigIssue(source, key, f"{value!r}: the service needs an absolute path")
        for key in PATH_KEYS
        if isinstance(value := _raw_value(raw, key), str) and not value.startswith("/")
    ]


def _resolve_paths(config: Config, base: Path) -> Config:
    top: dict[str, Any] = {}
    sections: dict[str, dict[str, Path]] = {}
    for key in PATH_KEYS:
        section, _, name = key.rpartition(".")
        path: Path | None = getattr(getattr(config, section) if section else config, name)
        if path is None:
            continue
        path = path.expanduser()
        resolved = Path(os.path.normpath(path if path.is_absolute() else base / path))
        if section:
            sections.setdefault(section, {})[name] = resolved
        else:
            top[name] = resolved
    for section, fields in sections.items():
        top[section] = getattr(config, section).model_copy(update=fields)
    targets = []
    for target in config.notifications:
        if target.apprise_file is not None:
            path = target.apprise_file.expanduser()
            path = Path(os.path.normpath(path if path.is_absolute() else base / path))
            target = target.model_copy(update={"apprise_file": path})
        targets.append(target)
    top["notifications"] = tuple(targets)
    return config.model_copy(update=top)


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def _cross_check(config: Config, source: str) -> list[ConfigIssue]:
    """Rules that span keys: folders that must not overlap, keys that need others,
    a model name that model.repo (or demucs' own list) can provide."""
    issues: list[ConfigIssue] = []
    problem = unknown_name_problem(config.model.name, config.model.repo)
    if problem is not None:
        issues.append(ConfigIssue(source, "model.name", problem))
    folders = {"inbox": config.inbox, "outbox": config.outbox, "state_dir": config.state_dir}
    names = list(folders)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            a, b = folders[first], folders[second]
            if _inside(a, b) or _inside(b, a):
                issues.append(
                    ConfigIssue(
                        source,
                        second,
                        f"{b} overlaps {first} ({a}); give each its own folder",
                    )
                )
    for key, action, folder in (
        ("archive_dir", config.source.after_success, config.source.archive_dir),
        ("failed_dir", config.source.after_failure, config.source.failed_dir),
    ):
        if action == "move" and folder is None:
            trigger = "after_success" if key == "archive_dir" else "after_failure"
            issues.append(
                ConfigIssue(source, f"source.{key}", f"required when source.{trigger} is move")
            )
        if folder is not None and (_inside(folder, config.inbox) or _inside(folder, config.outbox)):
            issues.append(
                ConfigIssue(
                    source,
                    f"source.{key}",
                    f"{folder} must be outside the inbox and the outbox, "
                    "or moved files would be picked up again",
                )
            )
    if config.http.listen is not None and config.http.token_file is None:
        host, _port = listen_address(config.http.listen)
        if not is_loopback(host):
            issues.append(
                ConfigIssue(
                    source,
                    "http.listen",
                    f"{config.http.listen} is reachable from other machines: set "
                    "http.token_file (create one with `stemd token new PATH`), or listen "
                    "on 127.0.0.1 behind a reverse proxy",
                )
            )
    for key, message in output_conflicts(config.output, "output."):
        issues.append(ConfigIssue(source, f"output.{key}", message))
    for i, rule in enumerate(config.rules):
        # each rule's choices over the output section, held to the same rules
        chosen = rule.choices()
        for key, message in output_conflicts(config.output.with_choices(chosen)):
            where = f"rules[{i}].{key}" if key in chosen else f"rules[{i}]"
            issues.append(ConfigIssue(source, where, f"{message} (rule {rule.match!r})"))
    for i, target in enumerate(config.notifications):
        path = target.apprise_file
        if path is not None and not path.is_file():
            issues.append(
                ConfigIssue(
                    source,
                    f"notifications[{i}].apprise_file",
                    f"{path}: no such file; write the Apprise URLs there, one a line",
                )
            )
    return issues


def output_conflicts(output: OutputConfig, prefix: str = "") -> list[tuple[str, str]]:
    """(key, why) for each output key that contradicts another: the config's
    `output` section, and the settings one job's choices make of it
    (stemd.choices), are held to the same rules."""
    conflicts: list[tuple[str, str]] = []
    fmt, sample = output.format, output.sample_format
    if sample == "f32" and fmt != "wav":
        conflicts.append(("sample_format", f"f32 is for wav only, not {fmt}"))
    if output.stems is not None and output.two_stems is not None:
        conflicts.append(
            (
                "stems",
                f"cannot be combined with {prefix}two_stems: {prefix}stems writes some of "
                f"the model's stems, {prefix}two_stems writes STEM and no_STEM",
            )
        )
    rate = output.sample_rate
    if fmt == "mp3" and isinstance(rate, int) and rate not in MP3_RATES:
        conflicts.append(
            (
                "sample_rate",
                f"an mp3 cannot be {rate} Hz; use one of {', '.join(map(str, MP3_RATES))}",
            )
        )
    return conflicts
