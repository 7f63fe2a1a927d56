"""Models on disk, and whether the hub is needed to load one. No torch here:
`stemd separate` and `models fetch` decide an offline start before importing it.

demucs loads a hub name from the Hugging Face cache (one repository per named
model) and falls back to torch.hub's cache (its legacy source); `cached_files`
looks in both the way demucs names their files.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import huggingface_hub.constants

from stemd.errors import ModelError
from stemd.separation.hub import hub_endpoint, unreachable_reason
from stemd.separation.modelnames import (
    BUILT_IN,
    HUB_PREFIX,
    bag_members,
    remote_files,
    remote_members,
)

log = logging.getLogger("stemd")

DEFAULT_NAMESPACE = "adefossez"  # demucs.hf.DEFAULT_NAMESPACE
# Names the hub was found reachable for, in this process: asked once per name.
_reached_for: set[str] = set()


def hf_repo_name(name: str) -> str:
    """demucs.hf.hf_repo_name, kept here so that asking needs no torch import
    (tests check the two agree): `htdemucs_ft` -> `HTDemucs-ft`."""
    if name == "htdemucs":
        return "HTDemucs"
    if name.startswith("htdemucs_"):
        return "HTDemucs-" + name[len("htdemucs_") :]
    return "Demucs-" + name


def model_caches() -> tuple[Path, Path]:
    """The Hugging Face and torch.hub caches demucs downloads into (model.cache sets both)."""
    home = Path.home() / ".cache"
    hf_home = Path(os.environ.get("HF_HOME", home / "huggingface"))
    torch_home = Path(os.environ.get("TORCH_HOME", home / "torch"))
    return hf_home, torch_home


def cached_files(name: str) -> list[Path] | None:
    """Every file of a hub-loaded model on disk: in the Hugging Face cache (what
    demucs tries first), or in torch.hub's (its legacy source); None if any is
    missing."""
    from huggingface_hub import try_to_load_from_cache

    namespace, short = name.split("/", 1) if "/" in name else (DEFAULT_NAMESPACE, name)
    repo_id = f"{namespace}/{hf_repo_name(short)}"
    bag = try_to_load_from_cache(repo_id, f"{short}.yaml")
    if isinstance(bag, str):
        found = [
            try_to_load_from_cache(repo_id, f"{m}.safetensors") for m in bag_members(Path(bag))
        ]
        if all(isinstance(path, str) for path in found):
            return [Path(bag), *(Path(str(path)) for path in found)]
    files = remote_files()
    checkpoints = model_caches()[1] / "hub" / "checkpoints"
    legacy = [checkpoints / files.get(m, f"{m}.th") for m in remote_members(short)]
    return legacy if all(path.is_file() for path in legacy) else None


def offline_help(name: str, problem: str, fetching: bool) -> str:
    """One message for a hub that cannot be reached, with the ways out that fit
    the command: `models fetch` is about reaching the hub, the others about weights."""
    hf_home, torch_home = model_caches()
    hub = f"the Hugging Face hub ({hub_endpoint()}) cannot be reached: {problem}"
    if fetching:
        return (
            f"{hub}. `stemd models fetch` downloads from it: check this machine's network, "
            "DNS or proxy (HTTPS_PROXY), or fetch on a machine that has internet and copy "
            f"its model cache ({hf_home}, {torch_home}) to this one."
        )
    return (
        f"model {name!r} is not in the model cache ({hf_home}, {torch_home}) and {hub}. "
        f"Either run `stemd models fetch {name}` where there is internet and copy the "
        "cache folder here (model.cache), or put the model's files in a folder and set "
        "model.repo to it (README: Model weights offline)."
    )


def check_reachable(name: str, repo: Path | None, fetching: bool = False) -> None:
    """Before loading `name`: weights from the hub need the hub only when they
    are not on disk. Asks once whether it can be reached; when it cannot, cached
    weights load without it (no requests) and missing ones fail at once with one
    message, instead of the hub's retries."""
    if repo is not None or name == BUILT_IN or huggingface_hub.constants.HF_HUB_OFFLINE:
        return  # offline already (the user's HF_HUB_OFFLINE, or an earlier call): the cache
    if name in _reached_for:
        return  # `separate` asks before importing torch, then the loader asks again
    problem = unreachable_reason()
    if problem is None:
        _reached_for.add(name)
        return
    if cached_files(name.removeprefix(HUB_PREFIX)) is None:
        raise ModelError(offline_help(name, problem, fetching))
    huggingface_hub.constants.HF_HUB_OFFLINE = True  # the cache, no requests
    log.info("the model hub cannot be reached (%s); using the cached weights", problem)
