"""stemd: drop music into a folder, get stems back."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("stemd")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0+unknown"
