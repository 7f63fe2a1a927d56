"""Power cuts at the worst moments: stemd SIGKILLs itself at a named point of a job
($STEMD_CRASH_AT), restarts, and must finish the work exactly once."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from stemd.crash import CRASH_ENV, CRASH_POINTS
from support.audio import make_tone
from support.daemon import Daemon, service_config
from support.instrumented_model import RECORDER, instrumented_model, model_env
from support.outbox_watch import TEMP_DIR, OutboxWatch
from support.waiting import wait_until

SECONDS = 3.0
MODEL = RECORDER
# Points after which the separation is finished: a restart must not redo it.
SEPARATED_BEFORE = {"renamed", "committed"}
# Points reached during the first separation: it is lost, and done once more.
SEPARATED_TWICE = {"separating", "written"}


@pytest.mark.slow
@pytest.mark.parametrize("point", CRASH_POINTS)
def test_a_crash_at_any_point_ends_with_one_complete_stem_set(
    tmp_path: Path, point: str, instrumented_repo: Path
) -> None:
    config = service_config(
        tmp_path,
        model=instrumented_model(instrumented_repo),
        source={"after_success": "move", "archive_dir": "archive"},
    )
    song = make_tone(tmp_path / "song.wav", SECONDS)
    env, record = model_env(tmp_path)
    daemon = Daemon(config, tmp_path, env={**env, CRASH_ENV: point})
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    with OutboxWatch(outbox, SECONDS) as watch:
        try:
            daemon.start().wait_ready()
            shutil.copyfile(song, tmp_path / "inbox/song.wav")
            assert daemon.process is not None
            wait_until(lambda: daemon.process.poll() is not None, 60, f"the crash at {point}")
            assert daemon.process.returncode == -9, daemon.log()

            del daemon.env[CRASH_ENV]
            daemon.start().wait_ready()
            second_pid = daemon.process.pid
            wait_until(
                lambda: daemon.report()["counts"]["done"] == 1, 60, "the job after the restart"
            )
            wait_until(lambda: (tmp_path / "archive/song.wav").exists(), 30, "the source moved")
            assert daemon.stop() == 0
        finally:
            daemon.kill()

    assert watch.problems == []
    manifests = [p for p in outbox.rglob("stemd.json") if TEMP_DIR not in p.parts]
    assert [p.parent.relative_to(outbox).as_posix() for p in manifests] == [f"{MODEL}/song"]
    stems = sorted(p.name for p in manifests[0].parent.iterdir() if p.suffix == ".wav")
    assert stems == ["bass.wav", "drums.wav", "other.wav", "vocals.wav"]
    assert {Path(path).name for path, _inode in watch.checked} == set(stems)
    assert not (outbox / TEMP_DIR).exists()
    assert daemon.status()["counts"] == {"queued": 0, "running": 0, "done": 1, "failed": 0}
    assert not (tmp_path / "inbox/song.wav").exists()
    assert (tmp_path / "archive/song.wav").read_bytes() == song.read_bytes()

    # The model's own record of what it separated: once, or twice where the crash
    # lost the first separation; never again once the stems were in place.
    assert record.count(SECONDS) == (2 if point in SEPARATED_TWICE else 1), record.passes()
    if point in SEPARATED_BEFORE:
        assert [p for p in record.passes() if p["pid"] == second_pid] == []
