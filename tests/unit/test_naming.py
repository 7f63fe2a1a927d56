"""Outbox names: the layout template, safe components, collisions."""

from __future__ import annotations

from pathlib import PurePosixPath

import pytest

from stemd.outbox import (
    MAX_NAME_BYTES,
    TrackNames,
    numbered,
    safe_component,
    stem_filename,
    track_folder,
)

DEFAULT = "{model}/{relative_dir}/{track}/{stem}.{ext}"
SHA = "0123456789abcdef" * 4


def names(relative: str) -> TrackNames:
    return TrackNames.for_input("htdemucs", relative, SHA)


def test_default_layout_is_the_demucs_cli_layout_plus_inbox_folders() -> None:
    assert track_folder(DEFAULT, names("song.mp3")) == PurePosixPath("htdemucs/song")
    assert track_folder(DEFAULT, names("rock/70s/song.flac")) == PurePosixPath(
        "htdemucs/rock/70s/song"
    )
    assert stem_filename(DEFAULT, names("song.mp3"), "vocals", "wav") == "vocals.wav"


def test_all_placeholders() -> None:
    layout = "{model}/{hash}/{track}.{trackext}/{relative_dir}-{stem}.{ext}"
    item = names("a/b/Song.Name.mp3")
    assert item.track == "Song.Name" and item.trackext == "mp3"
    assert track_folder(layout, item) == PurePosixPath(f"htdemucs/{SHA[:12]}/Song.Name.mp3")
    assert stem_filename(layout, item, "bass", "flac") == "a_b-bass.flac"


@pytest.mark.parametrize(
    ("layout", "folder", "stem"),
    [
        ("{model}/{relative_dir}_{track}/{stem}.{ext}", "htdemucs/song", "vocals.wav"),
        ("{model}/{track}/{relative_dir}-{stem}.{ext}", "htdemucs/song", "vocals.wav"),
        ("{model}/{track}/{stem}_{relative_dir}.{ext}", "htdemucs/song", "vocals.wav"),
        ("{model}/{track} {relative_dir}/{stem}.{ext}", "htdemucs/song", "vocals.wav"),
    ],
)
def test_a_file_at_the_inbox_top_leaves_no_stray_separator(
    layout: str, folder: str, stem: str
) -> None:
    top = names("song.mp3")
    assert track_folder(layout, top) == PurePosixPath(folder)
    assert stem_filename(layout, top, "vocals", "wav") == stem
    nested = names("rock/song.mp3")  # the separator stays where there is a folder
    assert "rock" in f"{track_folder(layout, nested)}/{stem_filename(layout, nested, 'v', 'w')}"


def test_a_name_without_extension_keeps_its_name() -> None:
    assert names("README").track == "README"


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("a/b", "a_b"),
        ("..", "_"),
        (".", "_"),
        ("", "_"),
        ("line\nbreak", "line_break"),
        (".hidden", "_hidden"),
        ("  padded  ", "padded"),
        ("emoji 🎸 ok", "emoji 🎸 ok"),
        ("-i", "-i"),
    ],
)
def test_components_are_safe_on_any_share(raw: str, clean: str) -> None:
    assert safe_component(raw) == clean


def test_long_names_are_cut_to_255_bytes_on_a_character_boundary() -> None:
    name = "é" * 200  # 400 bytes
    cleaned = safe_component(name)
    assert len(cleaned.encode()) <= MAX_NAME_BYTES
    assert cleaned == "é" * 127


@pytest.mark.parametrize("relative", ["../../etc/passwd.mp3", "../x/song.mp3", "a/../../b.mp3"])
def test_a_track_folder_never_leaves_the_outbox(relative: str) -> None:
    folder = track_folder(DEFAULT, names(relative))
    assert ".." not in folder.parts and not folder.is_absolute()


def test_collisions_are_numbered() -> None:
    assert numbered(PurePosixPath("htdemucs/song"), 2) == PurePosixPath("htdemucs/song (2)")
