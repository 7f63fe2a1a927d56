from __future__ import annotations

import pytest

from stemd.units import format_duration, format_size, parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("2s", 2),
        ("10m", 600),
        ("1h30m", 5400),
        ("250ms", 0.25),
        ("1.5m", 90),
        (3, 3),
        ("45", 45),
        ("2 h", 7200),
        ("1d", 86400),
    ],
)
def test_durations_read_as_people_write_them(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "2 parsecs", "s", "-3s", "1h-2m", "", True, [1]])
def test_bad_durations_say_how_to_write_one(text: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("2GiB", 2 * 1024**3),
        ("500MB", 500_000_000),
        ("1.5k", 1500),
        (4096, 4096),
        ("10 MiB", 10 * 1024**2),
        ("7", 7),
    ],
)
def test_sizes_read_as_people_write_them(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["lots", "2 parsecs", "GiB", "-1", False])
def test_bad_sizes_say_how_to_write_one(text: object) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


@pytest.mark.parametrize("seconds", [2.0, 600.0, 5400.0, 0.25, 7200.0, 0.0, 1.5])
def test_durations_print_back_to_the_same_value(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


def test_sizes_print_in_binary_units_when_exact() -> None:
    assert format_size(2 * 1024**3) == "2GiB"
    assert format_size(1000) == "1000B"
