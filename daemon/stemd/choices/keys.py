"""The per-job keys: read from a form or query (strings, lists comma-separated),
from JSON or a rule (typed), checked as the `output` section's own keys are, and
applied over the `output` section."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from stemd.config import JOB_KEYS, JobChoices, OutputConfig, output_conflicts

# what a job's choices are: output keys (JOB_KEYS) with typed values, and
# callback_url; a key absent is no choice
Choices = dict[str, Any]
CHOICE_KEYS = (*JOB_KEYS, "callback_url")


class ChoiceError(ValueError):
    """A choice refused: `key` names it, the message says why and what to do."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


def choices_from_strings(values: Mapping[str, str]) -> Choices:
    """Choices written as text: form fields beside `file`, query parameters with
    a raw body. Lists are comma-separated (`stems=vocals,drums`); an empty
    `two_stems` or `stems` means none (all the model's stems)."""
    typed: dict[str, object] = {}
    for key, text in values.items():
        text = text.strip()
        if key == "stems":
            names = [name.strip() for name in text.split(",") if name.strip()]
            typed[key] = names or None
        elif key == "two_stems":
            typed[key] = text or None
        elif key in ("mp3_bitrate", "sample_rate") and re.fullmatch(r"\d+", text):
            typed[key] = int(text)
        else:
            typed[key] = text
    return choices_from_json(typed)


def choices_from_json(values: Mapping[str, object]) -> Choices:
    """Choices as JSON or YAML holds them (`/predict`'s parameters, a rule):
    checked by the `output` section's own rules; an unknown key is refused by
    name (ChoiceError)."""
    unknown = sorted(set(values) - set(CHOICE_KEYS))
    if unknown:
        raise ChoiceError(
            unknown[0],
            f"not a per-job key; the keys are {', '.join(CHOICE_KEYS)}",
        )
    try:
        parsed = JobChoices.model_validate(dict(values))
    except ValidationError as err:
        first = err.errors()[0]
        key = str(first["loc"][0]) if first["loc"] else "choices"
        message = str(first["msg"]).removeprefix("Value error, ")
        raise ChoiceError(key, message) from None
    choices = parsed.choices()
    if parsed.callback_url is not None:
        choices["callback_url"] = parsed.callback_url
    return choices


def apply_choices(output: OutputConfig, choices: Mapping[str, Any]) -> OutputConfig:
    """The `output` section as one job's choices change it. Choosing `stems`
    drops the section's `two_stems` and the other way round (a job picks one
    way to split). ChoiceError when the result breaks a rule across keys
    (f32 in an mp3, an mp3 at 96 kHz)."""
    result = output.with_choices(dict(choices))
    for key, message in output_conflicts(result):
        raise ChoiceError(key, message)
    return result


def check_model_stems(output: OutputConfig, sources: Sequence[str], model: str) -> None:
    """ChoiceError unless the stems a job asks for are the model's."""
    wanted: Iterable[tuple[str, str]] = [
        *(("stems", name) for name in output.stems or ()),
        *((("two_stems", output.two_stems),) if output.two_stems else ()),
    ]
    for key, name in wanted:
        if name not in sources:
            raise ChoiceError(
                key, f"{name!r} is not a stem of {model}; it has {', '.join(sources)}"
            )


def output_of_params(output: OutputConfig, params: Mapping[str, Any]) -> OutputConfig:
    """The output settings a job's profile parameters name (stemd.profile), over
    `output` for the keys a profile does not hold (layout, modes, conflicts):
    what a worker renders the job with, whichever host made it."""
    return output.model_copy(
        update={
            "format": params.get("format", output.format),
            "sample_format": params.get("sample_format") or output.sample_format,
            "mp3_bitrate": params.get("mp3_bitrate") or output.mp3_bitrate,
            "clip": params.get("clip", output.clip),
            "two_stems": params.get("two_stems"),
            "stems": tuple(params["stems"]) if params.get("stems") else None,
            "sample_rate": params.get("sample_rate", "model"),
            "tags": params.get("tags", "copy"),
        }
    )


def shown_choices(output: OutputConfig) -> dict[str, Any]:
    """The per-job keys as a job was rendered (the API's and the manifest's
    `output`)."""
    shown: dict[str, Any] = {key: getattr(output, key) for key in JOB_KEYS}
    shown["stems"] = list(output.stems) if output.stems is not None else None
    if output.format == "mp3":
        shown.pop("sample_format")
    else:
        shown.pop("mp3_bitrate")
    return shown
