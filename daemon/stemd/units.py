"""Durations and sizes written as people write them: `10s`, `5m`, `1h30m`, `2GiB`."""

from __future__ import annotations

import re

_DURATION_UNITS = {
    "ms": 0.001,
    "s": 1.0,
    "sec": 1.0,
    "m": 60.0,
    "min": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|sec|min|s|m|h|d)")

_SIZE_UNITS = {
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]*)")


def parse_duration(value: object) -> float:
    """Seconds from `2s`, `1.5m`, `1h30m`, `250ms`, or a bare number of seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 2s, 5m or 1h")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        if re.fullmatch(r"\d+(\.\d+)?", text):
            seconds = float(text)
        else:
            pos = 0
            seconds = 0.0
            for match in _DURATION_PART.finditer(text):
                if match.start() != pos:
                    break
                seconds += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
                pos = match.end()
            if pos != len(text) or not text:
                raise ValueError(
                    f"{value!r} is not a duration; write it like 500ms, 2s, 5m, 1h or 1h30m"
                )
    else:
        raise ValueError("expected a duration such as 2s, 5m or 1h")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def parse_size(value: object) -> int:
    """Bytes from `2GiB`, `500MB`, `1.5G`, or a bare number of bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 500MiB or 2GiB")
    if isinstance(value, int):
        size = value
    elif isinstance(value, float):
        size = int(value)
    elif isinstance(value, str):
        match = _SIZE.fullmatch(value.strip().lower().replace(" ", ""))
        if not match or match.group(2) not in ("", *_SIZE_UNITS):
            raise ValueError(f"{value!r} is not a size; write it like 500MiB, 2GiB or 1GB")
        size = int(float(match.group(1)) * _SIZE_UNITS.get(match.group(2) or "b", 1))
    else:
        raise ValueError("expected a size such as 500MiB or 2GiB")
    if size < 0:
        raise ValueError("a size cannot be negative")
    return size


def format_duration(seconds: float) -> str:
    """The shortest exact human form: 2s, 10m, 1h30m, 250ms."""
    if seconds == 0:
        return "0s"
    if seconds < 1 or seconds != int(seconds):
        if (seconds * 1000) == int(seconds * 1000) and seconds < 1:
            return f"{int(seconds * 1000)}ms"
        return f"{seconds:g}s"
    total = int(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if total >= size:
            parts.append(f"{total // size}{unit}")
            total %= size
    return "".join(parts)


def format_size(size: int) -> str:
    """Binary units when exact (2GiB), else bytes."""
    for unit, factor in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}B"
