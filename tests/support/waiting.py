"""Bounded polling: every wait in the tests ends, with a message saying what did not happen."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(check: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    """Call `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: T = check()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)
        last = check()
    return last


def holds_for(
    check: Callable[[], object], seconds: float, what: str, interval: float = 0.1
) -> None:
    """Assert `check` stays truthy for `seconds`: for what must not happen, where
    no event says it did not (a claim a host must not make, say)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not check():
            raise AssertionError(f"{what} stopped holding")
        time.sleep(interval)
