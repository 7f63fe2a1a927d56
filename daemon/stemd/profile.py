"""The output profile: a fingerprint of everything that changes the stems.

The job key is (content sha256, profile). Two drops of the same bytes under the
same profile get one separation; change the model, its weights, shifts, overlap,
segment, the stems written (output.stems, output.two_stems), format, bit depth,
sample rate, tags, clip mode or precision and the same bytes are separated again.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

from stemd.config import Config

if TYPE_CHECKING:  # engine imports torch; the profile only reads two fields
    from stemd.engine import ModelInfo


def profile_params(config: Config, model: ModelInfo) -> dict[str, Any]:
    output = config.output
    params: dict[str, Any] = {
        "model": model.name,
        "weights": model.weights,
        "shifts": config.model.shifts,
        "overlap": config.model.overlap,
        "segment": config.model.segment,
        "precision": config.model.precision,
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


def profile_key(params: dict[str, Any]) -> str:
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def render_profile(config: Config, model: ModelInfo) -> tuple[str, dict[str, Any]]:
    """(key, parameters) of what `config` and `model` render: jobs are keyed by
    the key, and a worker renders with the parameters of the key it claims."""
    params = profile_params(config, model)
    return profile_key(params), params
