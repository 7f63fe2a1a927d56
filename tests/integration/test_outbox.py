"""Publishing into a real outbox: atomic folders, conflicts, reuse, modes, sources."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path, PurePosixPath

import pytest

from stemd.config import OutputConfig
from stemd.ledger import FileStat
from stemd.manifest import MANIFEST, manifest_peaks, new_manifest, open_stem
from stemd.outbox import TEMP_DIR, Outbox, dispose_source

SHA = "c" * 64


def sealed(outbox: Outbox, sha: str = SHA, profile: str = "p", text: str = "v1") -> Path:
    temp = outbox.new_temp("job1")
    (temp / "vocals.wav").write_text(text)
    outbox.seal(temp, new_manifest(sha256=sha, profile=profile, stems={"vocals": "vocals.wav"}))
    return temp


def test_publish_renames_a_sealed_folder_into_place(tmp_path: Path) -> None:
    modes = OutputConfig(file_mode="0640", dir_mode="0750")  # type: ignore[arg-type]
    outbox = Outbox(tmp_path, modes)
    target = outbox.publish(sealed(outbox), PurePosixPath("m/rock/song"), SHA, "p")
    assert target == PurePosixPath("m/rock/song")
    folder = tmp_path / "m/rock/song"
    assert (folder / "vocals.wav").read_text() == "v1"
    assert json.loads((folder / MANIFEST).read_text())["sha256"] == SHA
    assert stat.S_IMODE((folder / "vocals.wav").stat().st_mode) == 0o640
    assert stat.S_IMODE(folder.stat().st_mode) == 0o750
    assert stat.S_IMODE((tmp_path / "m/rock").stat().st_mode) == 0o750
    assert not (tmp_path / TEMP_DIR).exists()  # nothing in it: tidied away


def test_publishing_the_same_content_again_is_a_no_op(tmp_path: Path) -> None:
    """A crash between the rename and the ledger commit must not publish twice."""
    outbox = Outbox(tmp_path, OutputConfig())
    outbox.publish(sealed(outbox), PurePosixPath("m/song"), SHA, "p")
    again = outbox.publish(sealed(outbox, text="v2"), PurePosixPath("m/song"), SHA, "p")
    assert again == PurePosixPath("m/song")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["song"]
    assert (tmp_path / "m/song/vocals.wav").read_text() == "v1"


@pytest.mark.parametrize(
    ("policy", "expected", "content"),
    [("rename", "m/song (2)", "new"), ("overwrite", "m/song", "new"), ("skip", None, "old")],
)
def test_a_different_track_with_the_same_name(
    tmp_path: Path, policy: str, expected: str | None, content: str
) -> None:
    outbox = Outbox(tmp_path, OutputConfig(on_conflict=policy))  # type: ignore[arg-type]
    outbox.publish(sealed(outbox, sha="a" * 64, text="old"), PurePosixPath("m/song"), "a" * 64, "p")
    target = outbox.publish(sealed(outbox, text="new"), PurePosixPath("m/song"), SHA, "p")
    assert target == (PurePosixPath(expected) if expected else None)
    assert (tmp_path / "m/song/vocals.wav").read_text() == (
        content if policy != "rename" else "old"
    )
    if policy == "rename":
        assert (tmp_path / "m/song (2)/vocals.wav").read_text() == "new"
    assert not (tmp_path / TEMP_DIR).exists()  # nothing in it: tidied away


def test_renaming_keeps_counting(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path, OutputConfig())
    for i in range(3):
        sha = str(i) * 64
        outbox.publish(sealed(outbox, sha=sha), PurePosixPath("m/song"), sha, "p")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["song", "song (2)", "song (3)"]


@pytest.mark.parametrize("link", [True, False])
def test_reused_stems_are_links_or_copies(tmp_path: Path, link: bool) -> None:
    outbox = Outbox(tmp_path, OutputConfig())
    outbox.publish(sealed(outbox), PurePosixPath("m/song"), SHA, "p")
    temp = outbox.new_temp("dup")
    outbox.copy_stems(tmp_path / "m/song", temp, {"vocals.wav": "vocals.wav"}, link=link)
    same_inode = (temp / "vocals.wav").stat().st_ino == (
        tmp_path / "m/song/vocals.wav"
    ).stat().st_ino
    assert same_inode is link


def test_leftover_work_folders_are_cleaned(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path, OutputConfig())
    sealed(outbox)
    sealed(outbox)
    assert outbox.cleanup_temp() == 2
    assert not (tmp_path / TEMP_DIR).exists()  # nothing in it: tidied away


def test_an_unknown_group_is_a_config_error(tmp_path: Path) -> None:
    from stemd.errors import ConfigError

    with pytest.raises(ConfigError, match=r"output\.group"):
        Outbox(tmp_path, OutputConfig(group="no-such-group-stemd"))


def source(tmp_path: Path, name: str = "in/a/song.mp3") -> tuple[Path, FileStat]:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"audio")
    return path, FileStat.of(os.lstat(path))


def test_sources_are_kept_moved_or_deleted(tmp_path: Path) -> None:
    path, expected = source(tmp_path)
    assert dispose_source(path, "a/song.mp3", expected, "keep", None) == "kept"
    assert path.exists()
    archive = tmp_path / "archive"
    assert dispose_source(path, "a/song.mp3", expected, "move", archive).startswith("moved")
    assert (archive / "a/song.mp3").read_bytes() == b"audio" and not path.exists()
    path, expected = source(tmp_path)  # same name again: archived beside the first
    dispose_source(path, "a/song.mp3", expected, "move", archive)
    assert (archive / "a/song (2).mp3").exists()
    path, expected = source(tmp_path)
    assert dispose_source(path, "a/song.mp3", expected, "delete", None) == "deleted"
    assert not path.exists()


def test_a_source_that_changed_after_processing_is_left_alone(tmp_path: Path) -> None:
    path, expected = source(tmp_path)
    path.write_bytes(b"a newer version")
    assert "changed" in dispose_source(path, "a/song.mp3", expected, "delete", None)
    assert path.read_bytes() == b"a newer version"


def test_a_planted_or_tampered_folder_with_our_hash_is_not_adopted(tmp_path: Path) -> None:
    """A folder whose manifest claims this content and profile is adopted (a crash
    between rename and commit) only when it can be trusted: one naming a file outside
    it is another track's folder, and the stems are published beside it."""
    outbox = Outbox(tmp_path, OutputConfig())
    planted = tmp_path / "m/song"
    planted.mkdir(parents=True)
    (tmp_path / "secret").write_text("token")
    manifest = new_manifest(sha256=SHA, profile="p", stems={"vocals": "../../secret"})
    (planted / MANIFEST).write_text(json.dumps(manifest))
    assert outbox.find_ours(PurePosixPath("m/song"), SHA, "p") is None
    target = outbox.publish(sealed(outbox), PurePosixPath("m/song"), SHA, "p")
    assert target == PurePosixPath("m/song (2)")


def test_a_pipe_is_refused_at_once_and_peaks_only_as_a_plain_file_of_its_own(
    tmp_path: Path,
) -> None:
    """The outbox is a share: a FIFO under a stem's name would hold a reader (an
    HTTP thread) for ever, and a manifest may name anything as its peaks."""
    folder = tmp_path / "m" / "song"
    folder.mkdir(parents=True)
    (folder / "vocals.wav").write_bytes(b"RIFF")
    os.mkfifo(folder / "pipe.wav")
    with pytest.raises(OSError, match="not a regular file"):
        open_stem(folder / "pipe.wav", tmp_path)  # at once: O_NONBLOCK
    manifest = new_manifest(sha256="a" * 64, stems={"vocals": "vocals.wav"})
    for name, kept in (("peaks.json", True), ("pipe.wav", False), ("vocals.wav", False)):
        if name == "peaks.json":
            (folder / name).write_text("{}")
        (folder / MANIFEST).write_text(json.dumps({**manifest, "peaks": name}))
        assert (manifest_peaks(folder, tmp_path) is not None) is kept, name
    (folder / "peaks.json").unlink()
    os.symlink(folder / "vocals.wav", folder / "peaks.json")
    (folder / MANIFEST).write_text(json.dumps({**manifest, "peaks": "peaks.json"}))
    assert manifest_peaks(folder, tmp_path) is None
