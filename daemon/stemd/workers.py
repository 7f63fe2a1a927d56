"""The daemon's workers: one per device and model.workers, each with its own
model instance (stemd.worker). The service owns this pool: it starts, wakes,
reloads, stops and joins them, renews the leases of the jobs they hold while
they show signs of life, and reports them (status, the page, the nodes table).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from stemd.config import Config
from stemd.intake import Intake
from stemd.ledger import Ledger
from stemd.separation.engine import Engine, ModelInfo
from stemd.separation.workfiles import WorkArea
from stemd.worker import Worker

log = logging.getLogger("stemd")


class Workers:
    def __init__(
        self, ledger: Ledger, config: Config, intake: Intake, engines: list[Engine]
    ) -> None:
        """A worker per engine (one per device and model.workers, loaded by the
        service), named w0, w1 ... in leases and status."""
        self.ledger = ledger
        self.work_area = WorkArea(config.state_dir)  # shared; each names its folders
        self.all = [
            Worker(f"w{index}", ledger, config, engine, intake, str(engine.device))
            for index, engine in enumerate(engines)
        ]

    @property
    def first(self) -> Worker:
        return self.all[0]

    @property
    def model_info(self) -> ModelInfo:
        """The model as the page shows it (every worker loads the same)."""
        return self.first.engine.info

    @property
    def engine(self) -> Engine:
        """The first worker's engine: the model's description (all load the same)."""
        return self.first.engine

    def start(self) -> None:
        # work files a crash left behind: cleared once, before any worker has a job
        freed = self.work_area.clear()
        if freed:
            log.info("removed %.1f MiB of work files left by an earlier run", freed / 2**20)
        for worker in self.all:
            worker.start()

    def wake(self) -> None:
        for worker in self.all:
            worker.wake.set()

    def dead(self) -> list[Worker]:
        return [worker for worker in self.all if not worker.is_alive()]

    def alive(self) -> list[Worker]:
        return [worker for worker in self.all if worker.is_alive()]

    def failure(self) -> BaseException | None:
        return next((w.failure for w in self.all if w.failure is not None), None)

    def silent_for(self, now: float) -> tuple[float, Worker]:
        """The longest any worker has gone without a sign of life, and which."""
        worker = min(self.all, key=lambda w: w.heartbeat)
        return now - worker.heartbeat, worker

    def busy(self) -> list[Worker]:
        return [worker for worker in self.all if worker.current is not None]

    def warm_up_seconds(self) -> float | None:
        seconds = [w.warm_up_seconds for w in self.all if w.warm_up_seconds is not None]
        return max(seconds) if seconds else None

    # -- leases -------------------------------------------------------------------

    def renew_leases(self, ledger: Ledger, lease: float, hang_timeout: float) -> None:
        """Renew what each live, moving worker holds (a hung one's leases run
        out, as the watchdog's rule would stop it), over `ledger` (the liveness
        thread's own connection). Raises LedgerUnavailable."""
        now = time.monotonic()
        held: dict[int, int] = {}
        owners: dict[int, Worker] = {}
        for worker in self.all:
            if not worker.is_alive() or now - worker.heartbeat > hang_timeout:
                continue
            for job_id, claim in worker.held_claims().items():
                held[job_id] = claim
                owners[job_id] = worker
        lost = ledger.renew(held, lease)
        for job_id in lost:
            owners[job_id].leases_lost({job_id})

    # -- control --------------------------------------------------------------------

    def request_reload(self, config: Config) -> None:
        for worker in self.all:
            worker.request_reload(config)

    def request_stop(self) -> None:
        for worker in self.all:
            worker.request_stop()

    def request_cancel(self) -> None:
        for worker in self.all:
            worker.request_cancel()

    def join(self, timeout: float) -> None:
        """Wait for all to end, `timeout` in all."""
        deadline = time.monotonic() + timeout
        for worker in self.all:
            worker.join(max(0.0, deadline - time.monotonic()))

    # -- reporting ------------------------------------------------------------------

    def report(self) -> list[dict[str, Any]]:
        """Each worker as status and the page show it."""
        out: list[dict[str, Any]] = []
        for worker in self.all:
            current = worker.current
            out.append(
                {
                    "name": worker.worker_name,
                    "device": worker.engine.info.device,
                    "backend": worker.engine.info.backend,
                    "precision": worker.engine.info.precision,
                    "alive": worker.is_alive(),
                    "job": current.job_id if current else None,
                    "source": current.source if current else None,
                    "progress": round(current.progress, 3) if current else None,
                }
            )
        return out
