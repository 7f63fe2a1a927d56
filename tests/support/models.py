"""Small random-weight models saved into a local model repo, loaded by demucs' real code."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from demucs.demucs import Demucs
from demucs.hdemucs import HDemucs
from demucs.htdemucs import HTDemucs
from demucs.states import save_with_checksum

SOURCES = ["drums", "bass", "other", "vocals"]

# Small enough for a 4 s chunk in about 0.35 s on one CPU core. Depth 4, not 3:
# the transformer then attends over 4 frequency rows instead of 16, which took a
# depth-3 model three times as long (1.0 s a chunk) for fewer parameters.
TINY_HTDEMUCS = {"channels": 8, "depth": 4, "t_layers": 1, "t_heads": 2, "segment": 4, "nfft": 2048}


def save_model(model: torch.nn.Module, repo: Path, signature: str) -> Path:
    """Serialise as demucs' pretrained files are: {klass, args, kwargs, state}, with the
    checksum in the file name (`SIG-CHECKSUM.th`) that LocalRepo verifies."""
    args, kwargs = model._init_args_kwargs  # type: ignore[attr-defined]
    package = {
        "klass": model.__class__,
        "args": args,
        "kwargs": kwargs,
        "state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    repo.mkdir(parents=True, exist_ok=True)
    save_with_checksum(package, repo / f"{signature}.th")
    return next(repo.glob(f"{signature}-*.th"))


# The first Demucs architecture at its smallest: ~5 ms for a 0.1 s file with
# shifts 0, so load tests measure stemd's pipeline rather than the model.
FEATHER_DEMUCS = {"channels": 4, "depth": 2, "lstm_layers": 0, "segment": 1}


def build_repo(repo: Path, seed: int = 0) -> dict[str, str]:
    """A repo with a tiny HTDemucs ("tiny_ht"), a tiny HDemucs, a bag of both, and
    a featherweight Demucs for load tests.

    Returns the names to pass as model.name.
    """
    torch.manual_seed(seed)
    save_model(HTDemucs(sources=SOURCES, **TINY_HTDEMUCS), repo, "a1b2c3d4")
    save_model(HDemucs(sources=SOURCES, channels=4), repo, "e5f6a7b8")
    save_model(Demucs(sources=SOURCES, **FEATHER_DEMUCS), repo, "f1e2d3c4")
    (repo / "tiny_ht.yaml").write_text("models: ['a1b2c3d4']\n")
    (repo / "tiny_bag.yaml").write_text(
        "models: ['a1b2c3d4', 'e5f6a7b8']\nweights: [[1, 1, 0, 0], [0, 0, 1, 1]]\nsegment: 4\n"
    )
    return {"htdemucs": "tiny_ht", "hdemucs": "e5f6a7b8", "bag": "tiny_bag", "feather": "f1e2d3c4"}


class MemoryCappedHTDemucs(HTDemucs):
    """Raises CUDA's out-of-memory error for batches over `STEMD_TEST_MEMORY_CAP`
    chunks, as a GPU with little memory would: lets the halving run on a CPU."""

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        cap = int(os.environ.get("STEMD_TEST_MEMORY_CAP", "0"))
        if cap and mix.shape[0] > cap:
            raise torch.cuda.OutOfMemoryError(f"out of memory: {mix.shape[0]} chunks, cap {cap}")
        out: torch.Tensor = super().forward(mix)
        return out


def build_capped_repo(repo: Path) -> str:
    torch.manual_seed(0)
    save_model(MemoryCappedHTDemucs(sources=SOURCES, **TINY_HTDEMUCS), repo, "c4p4c4p4")
    return "c4p4c4p4"
