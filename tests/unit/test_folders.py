from __future__ import annotations

from pathlib import Path

from stemd.folders import FolderChange, FolderEvent, SharedFolders


def test_a_folder_gone_back_and_replaced_is_reported_once_each(tmp_path: Path) -> None:
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir()
    outbox.mkdir()
    folders = SharedFolders(inbox, outbox)
    assert folders.check() == [] and folders.missing() == []

    inbox.rename(tmp_path / "away")
    assert folders.missing() == ["inbox"]
    assert folders.check() == [FolderChange("inbox", inbox, FolderEvent.GONE)]
    assert folders.check() == []  # said once

    (tmp_path / "away").rename(inbox)
    assert folders.check() == [FolderChange("inbox", inbox, FolderEvent.BACK)]

    outbox.rename(tmp_path / "old-outbox")
    outbox.mkdir()  # a different folder at the same path, as a remount gives
    assert folders.check() == [FolderChange("outbox", outbox, FolderEvent.REPLACED)]


def test_a_file_where_the_folder_was_counts_as_missing(tmp_path: Path) -> None:
    (tmp_path / "outbox").mkdir()
    (tmp_path / "inbox").write_text("not a folder")
    assert SharedFolders(tmp_path / "inbox", tmp_path / "outbox").missing() == ["inbox"]


def test_forget_makes_the_next_check_report_the_folder_back(tmp_path: Path) -> None:
    (tmp_path / "inbox").mkdir()
    (tmp_path / "outbox").mkdir()
    folders = SharedFolders(tmp_path / "inbox", tmp_path / "outbox")
    folders.forget("inbox")  # its deletion was seen by an event
    assert folders.check() == [FolderChange("inbox", tmp_path / "inbox", FolderEvent.BACK)]
