"""Which model names demucs can provide, known without loading anything.

demucs' `get_model` takes: `hf://[namespace/]name` (the Hugging Face hub),
`demucs_unittest` (built in), and otherwise a bag name or a single model's
signature, looked up in `model.repo` when one is set and else in demucs' own
list (`demucs/remote/*.yaml` for bags, `files.txt` for signatures). A name that is
none of these can never load; saying so when the config is read, with the
closest names, spares the user the hub's retries and a cause buried last.

Reads demucs' package files by path: importing demucs here would import torch,
which `stemd check` does not need.
"""

from __future__ import annotations

import difflib
import importlib.util
from pathlib import Path

import yaml

BUILT_IN = "demucs_unittest"
HUB_PREFIX = "hf://"


def demucs_remote_folder() -> Path | None:
    spec = importlib.util.find_spec("demucs")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "remote"


def _signature(file_name: str) -> str:
    """`955717e8-8726e21a.th` -> `955717e8` (demucs names a model by its signature)."""
    return file_name.removesuffix(".th").split("-")[0]


def remote_files() -> dict[str, str]:
    """demucs' own single models: signature -> file name (as torch.hub caches it)."""
    folder = demucs_remote_folder()
    files = folder / "files.txt" if folder is not None else None
    if files is None or not files.is_file():
        return {}
    lines = (line.strip() for line in files.read_text().splitlines())
    return {
        _signature(line): line
        for line in lines
        if line.endswith(".th") and not line.startswith("#")
    }


def bag_members(bag: Path) -> list[str]:
    """The signatures a bag file (`NAME.yaml`, demucs' format) lists."""
    return [str(member) for member in yaml.safe_load(bag.read_text()).get("models", [])]


def remote_members(name: str) -> list[str]:
    """The signatures a demucs name stands for: a bag's members, or itself."""
    folder = demucs_remote_folder()
    bag = folder / f"{name}.yaml" if folder is not None else None
    return bag_members(bag) if bag is not None and bag.is_file() else [name]


def remote_bags() -> list[str]:
    """demucs' named models (bags), as `demucs -n` takes them."""
    folder = demucs_remote_folder()
    return sorted(path.stem for path in folder.glob("*.yaml")) if folder is not None else []


def remote_names() -> list[str]:
    """demucs' own bags and signatures."""
    return sorted({*remote_bags(), *remote_files()})


def repo_names(repo: Path) -> list[str]:
    """The bags (`NAME.yaml`) and single models (`SIG[-CHECKSUM].th`) in a local repo."""
    names = {path.stem for path in repo.glob("*.yaml")}
    names.update(_signature(path.name) for path in repo.glob("*.th"))
    return sorted(names)


def known_names(repo: Path | None) -> list[str]:
    """Every plain name `get_model` can load with this repo (None: demucs' list)."""
    return [*(repo_names(repo) if repo is not None else remote_names()), BUILT_IN]


def unknown_name_problem(name: str, repo: Path | None) -> str | None:
    """Why `name` can never load, with the closest names; None if it may.

    A `repo` that is not a folder is left to the model loader, which says so.
    """
    if name.startswith(HUB_PREFIX):
        rest = name[len(HUB_PREFIX) :]
        if not rest or rest.startswith("/") or rest.endswith("/") or rest.count("/") > 1:
            return f"{name!r} is not a hub name; write hf://NAME or hf://OWNER/NAME"
        return None
    if repo is not None and not repo.is_dir():
        return None
    known = known_names(repo)
    if not known or name in known:
        return None
    where = f"in model.repo {repo}" if repo is not None else "one of demucs' models"
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    return f"{name!r} is not {where}; {hint}`stemd models list` shows them all"
