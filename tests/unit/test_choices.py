"""The per-job keys as a form, a query, JSON or a rule write them, and the rules'
globs: what a user sends is taken as meant, or refused naming the key."""

from __future__ import annotations

import pytest

from stemd.choices import (
    ChoiceError,
    RuleBook,
    apply_choices,
    check_model_stems,
    choices_from_json,
    choices_from_strings,
    glob_pattern,
)
from stemd.config import OutputConfig, RuleConfig

SOURCES = ("drums", "bass", "other", "vocals")


def test_form_and_query_text_becomes_typed_choices() -> None:
    choices = choices_from_strings(
        {"stems": "vocals, drums", "format": "mp3", "mp3_bitrate": "192", "sample_rate": "48000"}
    )
    assert choices == {
        "stems": ("vocals", "drums"),
        "format": "mp3",
        "mp3_bitrate": 192,
        "sample_rate": 48000,
    }
    assert choices_from_strings({"two_stems": ""}) == {"two_stems": None}  # all stems


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"colour": "red"}, "colour"),
        ({"format": "ogg"}, "format"),
        ({"mp3_bitrate": "100"}, "mp3_bitrate"),
        ({"sample_rate": "48k"}, "sample_rate"),
        ({"stems": "vocals,vocals"}, "stems"),
        ({"callback_url": "ftp://example.com/x"}, "callback_url"),
    ],
)
def test_a_bad_or_unknown_key_is_refused_by_name(values: dict[str, str], key: str) -> None:
    with pytest.raises(ChoiceError) as raised:
        choices_from_strings(values)
    assert raised.value.key == key and str(raised.value).startswith(f"{key}: ")


def test_json_choices_keep_their_types() -> None:
    assert choices_from_json({"stems": ["vocals"], "tags": "none"}) == {
        "stems": ("vocals",),
        "tags": "none",
    }


def test_a_choice_of_split_replaces_the_sections_and_cross_key_rules_hold() -> None:
    four_flac = OutputConfig(format="flac", stems=("vocals", "drums"))
    karaoke = apply_choices(four_flac, {"two_stems": "vocals", "format": "mp3"})
    assert (karaoke.two_stems, karaoke.stems, karaoke.format) == ("vocals", None, "mp3")
    assert apply_choices(OutputConfig(two_stems="vocals"), {"stems": ("bass",)}).two_stems is None
    with pytest.raises(ChoiceError, match="sample_format: f32 is for wav only"):
        apply_choices(OutputConfig(sample_format="f32"), {"format": "flac"})
    with pytest.raises(ChoiceError, match="sample_rate: an mp3 cannot be 96000 Hz"):
        apply_choices(OutputConfig(), {"format": "mp3", "sample_rate": 96000})


def test_stems_the_model_lacks_are_refused_naming_the_ones_it_has() -> None:
    with pytest.raises(ChoiceError, match="'piano' is not a stem of htdemucs; it has drums"):
        check_model_stems(OutputConfig(stems=("piano",)), SOURCES, "htdemucs")
    check_model_stems(OutputConfig(two_stems="vocals"), SOURCES, "htdemucs")


@pytest.mark.parametrize(
    ("glob", "path", "matches"),
    [
        ("karaoke/**", "karaoke/song.mp3", True),
        ("karaoke/**", "karaoke/live/set.mp3", True),
        ("karaoke/**", "practice/karaoke/song.mp3", False),
        ("**/*.flac", "song.flac", True),
        ("**/*.flac", "a/b/song.flac", True),
        ("*.flac", "a/song.flac", False),  # `*` stays inside one folder name
        ("live/*/set?.wav", "live/2024/set1.wav", True),
        ("live/[0-9]*/**", "live/2024/x.wav", True),
        ("live/[!0-9]*/**", "live/2024/x.wav", False),
        ("a+b (1)/**", "a+b (1)/x.mp3", True),  # regex characters are literal
    ],
)
def test_globs_match_whole_inbox_paths(glob: str, path: str, matches: bool) -> None:
    assert bool(glob_pattern(glob).fullmatch(path)) is matches


def test_the_first_rule_that_matches_wins() -> None:
    book = RuleBook(
        [
            RuleConfig(match="karaoke/duets/**", stems=("vocals",)),
            RuleConfig(match="karaoke/**", two_stems="vocals"),
        ]
    )
    found = book.match("karaoke/duets/a.mp3")
    assert found is not None and found[0] == 0 and found[1].choices() == {"stems": ("vocals",)}
    found = book.match("karaoke/b.mp3")
    assert found is not None and found[0] == 1
    assert book.match("other.mp3") is None
