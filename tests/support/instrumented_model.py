"""A Demucs model that can be made to hang, so tests can see a stuck worker.

It is a real HTDemucs, saved into a local model repo and loaded by demucs' own
code in the daemon. While the gate folder named by $STEMD_TEST_GATE has no
`open` file in it, forward() marks `entered` and waits (bounded) for it to appear.
Silence passes the gate: it is the daemon's warm-up pass, not a track.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from demucs.htdemucs import HTDemucs

if TYPE_CHECKING:  # the daemon imports this module to unpickle the model: keep it light
    from support.daemon import Daemon

GATE_ENV = "STEMD_TEST_GATE"
MAX_HANG_S = 600.0


class GatedHTDemucs(HTDemucs):
    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        gate = os.environ.get(GATE_ENV)
        if gate and bool(mix.any()):
            folder = Path(gate)
            deadline = time.monotonic() + MAX_HANG_S
            while not (folder / "open").exists() and time.monotonic() < deadline:
                (folder / "entered").touch()
                time.sleep(0.05)  # simulating a hung GPU call: nothing to wait on
        out: torch.Tensor = super().forward(mix)
        return out


def build_gated_repo(repo: Path) -> str:
    """A local model repo holding one tiny GatedHTDemucs; returns its model name.

    The daemon must have the tests folder on PYTHONPATH to unpickle the class.
    """
    from support.models import SOURCES, TINY_HTDEMUCS, save_model

    torch.manual_seed(0)
    save_model(GatedHTDemucs(sources=SOURCES, **TINY_HTDEMUCS), repo, "9a8b7c6d")
    (repo / "gated.yaml").write_text("models: ['9a8b7c6d']\n")
    return "gated"


TESTS_DIR = Path(__file__).resolve().parents[1]  # on the daemon's PYTHONPATH


def gated_daemon(
    root: Path, env: dict[str, str] | None = None, **service: str
) -> tuple[Daemon, Path, Path]:
    """A daemon (not started) whose model blocks while `root/gate/open` is missing.

    Returns (Daemon, config file, gate folder); `service` adds service.* keys.
    """
    from support.daemon import Daemon, service_config

    repo = root / "models"
    model = build_gated_repo(repo)
    gate = root / "gate"
    gate.mkdir()
    config = service_config(
        root,
        model={"name": model, "repo": str(repo), "device": "cpu"},
        service={"shutdown_grace": "60s", **service},
    )
    daemon_env = {GATE_ENV: str(gate), "PYTHONPATH": str(TESTS_DIR), **(env or {})}
    return Daemon(config, root, env=daemon_env), config, gate
