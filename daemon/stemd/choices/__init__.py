"""Choices per folder and per job: which stems, format, rate and tags one job
renders, and where its end is POSTed.

    keys    the per-job keys (the `output` section's own names) read from a form,
            a query, JSON or a rule; applied over the `output` section
    rules   `rules:`, the first whose glob matches an inbox path; `stemd check --explain`

A job's choices are part of its output profile (stemd.profile), so the same
content asked for two ways is two jobs, rendered from one separation where the
worker can (stemd.worker keeps a separation's stems for the next job of the same
content and model).
"""

from stemd.choices.keys import (
    ChoiceError,
    Choices,
    apply_choices,
    check_model_stems,
    choices_from_json,
    choices_from_strings,
    output_of_params,
    shown_choices,
)
from stemd.choices.rules import RuleBook, glob_pattern

__all__ = [
    "ChoiceError",
    "Choices",
    "RuleBook",
    "apply_choices",
    "check_model_stems",
    "choices_from_json",
    "choices_from_strings",
    "glob_pattern",
    "output_of_params",
    "shown_choices",
]
