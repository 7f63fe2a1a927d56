from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from support.models import build_repo


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    """A local model repo with tiny random-weight models, built once per run."""
    repo = tmp_path_factory.mktemp("models")
    names = build_repo(repo)
    yield repo, names
