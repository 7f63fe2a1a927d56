"""What the commands share: the config they run on, the model cache, the ledger."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from stemd.config import Config, default_config_path, load_config
from stemd.errors import StateError


def config_from(args: argparse.Namespace, optional: bool = False) -> tuple[Config, Path | None]:
    path = default_config_path(args.config)
    if optional and args.config is None and not path.exists():
        return load_config(None), None  # `models` works with no config at all
    return load_config(path), path


def use_model_cache(config: Config) -> None:
    """Point demucs' downloads (Hugging Face hub, torch.hub) into model.cache.

    Must run before demucs/huggingface_hub are imported: huggingface_hub reads
    HF_HOME once, at import.
    """
    cache = config.model.cache
    if cache is not None:
        os.environ["HF_HOME"] = str(cache / "huggingface")
        os.environ["TORCH_HOME"] = str(cache / "torch")


def open_ledger(config: Config) -> Any:
    from stemd.ledger import LEDGER_FILE, Ledger

    path = config.state_dir / LEDGER_FILE
    if not path.exists():
        raise StateError(f"{path}: no ledger yet; start the daemon (stemd run) first")
    return Ledger(path)
