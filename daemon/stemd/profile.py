"""The output profile: a fingerprint of everything that changes the stems.

The job key is (content sha256, profile). Two drops of the same bytes under the
same profile get one separation; change the model, its weights, shifts, overlap,
segment, the stems written (output.stems, output.two_stems), format, bit depth,
sample rate, tags, clip mode or precision and the same bytes are separated again.
A job's own choices (a rule's, an upload's: stemd.choices) are part of its
profile, so dedup holds per choice.

The model's part of the profile is the *separation*: jobs of one content and one
separation differ only in how the model's output is written, so a worker renders
them from one pass of the model (stemd.worker).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from stemd.choices import apply_choices
from stemd.config import Config

if TYPE_CHECKING:  # engine imports torch; the profile only reads two fields
    from stemd.separation.engine import ModelInfo

# the parameters that decide what the model computes, before anything is written
SEPARATION_KEYS = ("model", "weights", "shifts", "overlap", "segment", "precision")


@dataclass(frozen=True)
class Profile:
    key: str  # jobs are keyed by it
    params: dict[str, Any]  # what the key fingerprints: a worker renders with these
    separation: str  # the key of the params' model part

    @classmethod
    def of(cls, params: dict[str, Any]) -> Profile:
        return cls(profile_key(params), params, separation_key(params))


def profile_params(
    config: Config, model: ModelInfo, choices: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    output = apply_choices(config.output, choices or {})
    params: dict[str, Any] = {
        "model": model.name,
        "weights": model.weights,
        "shifts": config.model.shifts,
        "overlap": config.model.overlap,
        "segment": config.model.segment,
        "precision": model.precision,  # as it runs (model.precision auto resolved)
        "two_stems": output.two_stems,
        "format": output.format,
        "sample_format": output.sample_format if output.format != "mp3" else None,
        "mp3_bitrate": output.mp3_bitrate if output.format == "mp3" else None,
        "clip": output.clip,
    }
    # keys added later join only when set away from their default, so the stems
    # made before they existed keep their profile (and are not made again)
    if output.stems is not None:
        params["stems"] = sorted(output.stems)
    if output.sample_rate != "model":
        params["sample_rate"] = output.sample_rate
    if output.tags != "copy":
        params["tags"] = output.tags
    return params


def _digest(params: Mapping[str, Any]) -> str:
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def profile_key(params: dict[str, Any]) -> str:
    return _digest(params)


def separation_key(params: Mapping[str, Any]) -> str:
    return _digest({key: params.get(key) for key in SEPARATION_KEYS})


def render_profile(
    config: Config, model: ModelInfo, choices: Mapping[str, Any] | None = None
) -> Profile:
    """The profile of what `config` and `model` render for a job of these
    `choices` (none: the `output` section's): jobs are keyed by its key, and a
    worker renders with its parameters."""
    return Profile.of(profile_params(config, model, choices))
