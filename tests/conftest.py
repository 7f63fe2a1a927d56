from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from support.daemon import STARTED, log_tails
from support.instrumented_model import build_instrumented_repo
from support.models import build_repo
from support.postgres import PostgresServer

FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[object]:
    report = yield
    if call.when == "call" and call.excinfo is not None:
        item.stash[FAILED] = True
    return report


@pytest.fixture(autouse=True)
def daemon_logs_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    """A failing test prints the logs of the daemons it started (pytest shows
    them under "Captured stdout teardown"): CI keeps nothing else."""
    STARTED.clear()
    yield
    if request.node.stash.get(FAILED, False) and STARTED:
        print(log_tails(STARTED))
    STARTED.clear()


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
