"""What the HTTP server sees of the daemon: the Service, its intake and its workers,
as protocols. `http` imports none of the classes that run the daemon (Service,
Intake, Workers), so the routes can be served in-process over a stand-in: a test
gives them a real ledger and a fake daemon, and asks them in milliseconds."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from stemd.choices import Choices
    from stemd.config import Config
    from stemd.ledger import Ledger


class RunningJob(Protocol):
    """What a worker has in hand (`worker.Current`)."""

    @property
    def job_id(self) -> int: ...

    @property
    def progress(self) -> float: ...

    @property
    def source(self) -> str: ...


class BusyWorker(Protocol):
    @property
    def worker_name(self) -> str: ...

    @property
    def current(self) -> RunningJob | None: ...


class ModelFacts(Protocol):
    """The loaded model as the page shows it (`engine.ModelInfo`)."""

    @property
    def name(self) -> str: ...

    @property
    def device(self) -> str: ...

    @property
    def sources(self) -> tuple[str, ...]: ...

    @property
    def backend(self) -> str: ...

    @property
    def precision(self) -> str: ...


class WorkersView(Protocol):
    @property
    def model_info(self) -> ModelFacts: ...

    def busy(self) -> Sequence[BusyWorker]: ...

    def report(self) -> list[dict[str, Any]]:
        """Each worker, as `stemd status` and the page list them."""
        ...

    def wake(self) -> None: ...

    def warm_up_seconds(self) -> float | None: ...


class IntakeView(Protocol):
    def take_upload(
        self,
        path: Path,
        relative: str,
        sha256: str,
        choices: Choices | None = None,
        callback_url: str | None = None,
    ) -> int:
        """Register and attach a spooled upload with its choices (and its checked
        callback URL); its input's id."""
        ...

    def check_choices(self, choices: Choices) -> None:
        """ChoiceError (naming the key) unless a job can be rendered with these."""
        ...


class DaemonView(Protocol):
    @property
    def config(self) -> Config: ...

    @property
    def ledger(self) -> Ledger | None: ...

    @property
    def intake(self) -> IntakeView | None: ...

    @property
    def workers(self) -> WorkersView | None: ...

    @property
    def model_load_seconds(self) -> float | None: ...

    @property
    def started_at(self) -> float: ...

    def health(self) -> list[str]:
        """What is wrong (empty when healthy): the systemd watchdog's rule."""
        ...

    @property
    def stopping(self) -> bool: ...
