"""What the HTTP server sees of the daemon: the Service, as a protocol (so the
server does not import the service that owns it)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from stemd.config import Config
    from stemd.intake import Intake
    from stemd.ledger import Ledger
    from stemd.workers import Workers


class DaemonView(Protocol):
    @property
    def config(self) -> Config: ...

    @property
    def ledger(self) -> Ledger | None: ...

    @property
    def intake(self) -> Intake | None: ...

    @property
    def workers(self) -> Workers | None: ...

    @property
    def model_load_seconds(self) -> float | None: ...

    @property
    def started_at(self) -> float: ...

    def health(self) -> list[str]:
        """What is wrong (empty when healthy): the systemd watchdog's rule."""
        ...

    @property
    def stopping(self) -> bool: ...
