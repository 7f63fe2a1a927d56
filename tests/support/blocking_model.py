"""A Demucs model that can be made to hang, so tests can see a stuck worker.

It is a real HTDemucs, saved into a local model repo and loaded by demucs' own
code in the daemon. While the gate folder named by $STEMD_TEST_GATE has no
`open` file in it, forward() marks `entered` and waits (bounded) for it to appear.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from demucs.htdemucs import HTDemucs

GATE_ENV = "STEMD_TEST_GATE"
MAX_HANG_S = 600.0


class GatedHTDemucs(HTDemucs):
    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        gate = os.environ.get(GATE_ENV)
        if gate:
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
