from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from support.instrumented_model import build_instrumented_repo
from support.models import build_repo
from support.postgres import PostgresServer


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    """A local model repo with tiny random-weight models, built once per run."""
    repo = tmp_path_factory.mktemp("models")
    names = build_repo(repo)
    yield repo, names


@pytest.fixture(scope="session")
def instrumented_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local model repo with the models the tests watch and steer
    (support.instrumented_model), built once per run."""
    return build_instrumented_repo(tmp_path_factory.mktemp("instrumented"))


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A private PostgreSQL server (per test process), stopped at the end."""
    server = PostgresServer()
    yield server
    server.close()
