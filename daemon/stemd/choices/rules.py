"""`rules:`: per-folder choices. Each rule's `match` is a glob on the path
relative to the inbox (`karaoke/**`, `**/*.flac`, `live/*/set?.wav`); the first
rule that matches a path gives its choices, the `output` section the rest."""

from __future__ import annotations

import re
from collections.abc import Sequence

from stemd.config import RuleConfig


def glob_pattern(glob: str) -> re.Pattern[str]:
    """A glob as a regex over '/'-separated paths: `*` and `?` stay inside one
    folder name, `[...]` is a set of characters, `**` as a whole part is any
    number of folders (`a/**` matches everything under a/)."""
    parts = glob.split("/")
    out: list[str] = []
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        if part == "**":
            out.append(".*" if last else "(?:[^/]*/)*")
            continue
        out.append(_part(part) + ("" if last else "/"))
    return re.compile("".join(out))


def _part(part: str) -> str:
    regex, i = [], 0
    while i < len(part):
        char = part[i]
        if char == "*":
            regex.append("[^/]*")
        elif char == "?":
            regex.append("[^/]")
        elif char == "[":
            end = part.find("]", i + 2)
            if end == -1:
                regex.append(re.escape(char))
            else:
                body = part[i + 1 : end]
                negate = body.startswith("!")
                body = body[1:] if negate else body
                body = re.escape(body).replace("\\-", "-")  # ranges stay ranges
                regex.append(f"[{'^' if negate else ''}{body}]")
                i = end
        else:
            regex.append(re.escape(char))
        i += 1
    return "".join(regex)


class RuleBook:
    """The config's rules, compiled once per config."""

    def __init__(self, rules: Sequence[RuleConfig]) -> None:
        self.rules = tuple(rules)
        self._patterns = [glob_pattern(rule.match) for rule in self.rules]

    def match(self, relative: str) -> tuple[int, RuleConfig] | None:
        """The first rule whose glob matches the whole inbox-relative path, and its
        index in `rules:`; None: the `output` section alone."""
        for index, (rule, pattern) in enumerate(zip(self.rules, self._patterns, strict=True)):
            if pattern.fullmatch(relative):
                return index, rule
        return None

    def rule_for(self, relative: str) -> RuleConfig:
        """The rule an inbox path takes; no rule matching is an empty one (the
        `output` section's keys, no callback)."""
        found = self.match(relative)
        return found[1] if found is not None else NO_RULE


NO_RULE = RuleConfig(match="**")  # chooses nothing
