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


def has_ledger(config: Config) -> bool:
    """Whether there is a ledger to read: a shared one always is (the server
    makes it), a local one once the daemon has run."""
    from stemd.ledger import LEDGER_FILE

    return config.ledger.url is not None or (config.state_dir / LEDGER_FILE).exists()


def open_ledger(config: Config) -> Any:
    """The configured ledger, for a command: it does not wait for a database
    that cannot be reached (LedgerUnavailable says so)."""
    from stemd.ledger import LEDGER_FILE, connect

    if not has_ledger(config):
        path = config.state_dir / LEDGER_FILE
        raise StateError(f"{path}: no ledger yet; start the daemon (stemd run) first")
    return connect(config.state_dir, config.ledger.url, config.ledger.password_file)
