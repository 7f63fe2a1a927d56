"""Messages a user gets on their phone or in their chat, as the targets see
them: a daemon subprocess sends to local HTTP servers through Apprise (json://
and form://) and a webhook, while a target that refuses connections and one
that never answers are configured beside them."""

from __future__ import annotations

import re
import shutil
import signal
import time
from pathlib import Path

import pytest

from support.audio import make_tone
from support.daemon import Daemon, service_config
from support.receiver import Hanging, Receiver, refused_port

pytestmark = pytest.mark.slow
EVENTS = ["done", "failed", "drained"]
SECRET = "s3cretT0ken"  # in every URL's path: never in the log


def batch(tmp_path: Path, prefix: str, good: int, base: int) -> list[str]:
    """`good` tones (from `base` Hz up: new content, not duplicates) and one
    file that is not audio, dropped at once."""
    staging = tmp_path / f"staging-{prefix}"
    staging.mkdir()
    names = []
    for i in range(good):
        make_tone(staging / f"{prefix}{i}.wav", 1.0, frequency=base + 50 * i)
        names.append(f"{prefix}{i}.wav")
    (staging / f"{prefix}-bad.mp3").write_text(f"{prefix}: not audio at all")
    names.append(f"{prefix}-bad.mp3")
    for name in names:
        shutil.move(staging / name, tmp_path / "inbox" / name)
    return names


def test_done_failed_and_one_drained_summary_reach_apprise_and_webhooks_past_dead_targets(
    tmp_path: Path,
) -> None:
    with Receiver() as receiver, Hanging() as hanging:
        good = [
            {"apprise": f"json://127.0.0.1:{receiver.port}/json/{SECRET}", "on": EVENTS},
            {"apprise": f"form://127.0.0.1:{receiver.port}/form/{SECRET}", "on": EVENTS},
            {"webhook": f"http://127.0.0.1:{receiver.port}/hook/{SECRET}", "on": EVENTS},
        ]
        dead = [
            {"webhook": f"http://127.0.0.1:{refused_port()}/refused/{SECRET}", "on": EVENTS},
            # a service that takes the connection and never answers
            {"apprise": f"json://127.0.0.1:{hanging.port}/hung/{SECRET}", "timeout": "60s"},
        ]
        config = service_config(tmp_path, notifications=good + dead)
        daemon = Daemon(config, tmp_path).start()
        try:
            daemon.wait_warm()
            dropped = first_drop = time.monotonic()
            batch(tmp_path, "a", good=4, base=300)
            hook = receiver.wait_for(f"/hook/{SECRET}", 6, 120)  # 4 done, 1 failed, drained
            with_dead = time.monotonic() - dropped
            assert hanging.connections, "the hung target was never tried"

            done = [m.body for m in hook if m.body["event"] == "done"]
            assert sorted(m["source"] for m in done) == [f"a{i}.wav" for i in range(4)]
            for message in done:
                assert message["state"] == "done" and len(message["sha256"]) == 64
                assert message["error"] is None
                assert sorted(message["stems"]) == ["bass", "drums", "other", "vocals"]
                for path in message["stems"].values():
                    assert (tmp_path / "outbox" / path).is_file()
                durations = message["durations"]
                assert durations["audio"] == pytest.approx(1.0, abs=0.05)
                assert 0 < durations["separation"] <= durations["total"]
            (failed,) = [m.body for m in hook if m.body["event"] == "failed"]
            assert failed["source"] == "a-bad.mp3" and failed["state"] == "failed"
            assert "not a readable audio file" in failed["error"]
            drained = [m.body for m in hook if m.body["event"] == "drained"]
            assert len(drained) == 1 and (drained[0]["done"], drained[0]["failed"]) == (4, 1)
            assert re.fullmatch(r"4 done, 1 failed in \d+ s", drained[0]["summary"])
            assert hook[-1].body["event"] == "drained"  # after every job's own message

            for kind in ("json", "form"):
                got = receiver.wait_for(f"/{kind}/{SECRET}", 6, 30)
                titles = sorted(m.body["title"] for m in got)
                assert titles == sorted(
                    [f"stemd: a{i}.wav done" for i in range(4)]
                    + ["stemd: a-bad.mp3 failed", "stemd: the queue is empty"]
                ), kind
                summary = [m.body for m in got if m.body["title"] == "stemd: the queue is empty"]
                assert summary[0]["message"] == drained[0]["summary"]
                assert {m.body["type"] for m in got} == {"success", "failure", "info"}

            # the same batch again without the dead targets: as quick (they
            # held up nothing but their own queues)
            config.write_text(config.read_text().replace(f"/refused/{SECRET}", f"/gone/{SECRET}"))
            service_config(tmp_path, notifications=good)
            daemon.signal(signal.SIGHUP)
            daemon._wait_logged("notifications: 3 target(s) now", 30, "the reload")
            dropped = time.monotonic()
            batch(tmp_path, "b", good=4, base=700)
            receiver.wait_for(f"/hook/{SECRET}", 12, 120)
            without_dead = time.monotonic() - dropped
            print(f"batch with dead targets {with_dead:.1f}s, without {without_dead:.1f}s")
            assert with_dead < 2 * without_dead + 3, (with_dead, without_dead)
        finally:
            daemon.stop()
        elapsed = time.monotonic() - first_drop
        log = daemon.log()
    assert SECRET not in log
    refusals = [line for line in log.splitlines() if "webhook http://127.0.0.1:" in line
                and "trying the" in line]  # fmt: skip
    assert refusals, log
    # one line per try, not per message: the tries come 5 s, 10 s, 20 s apart
    assert len(refusals) <= 1 + elapsed / 5, (elapsed, refusals)
    assert "Connection refused" in refusals[0]
    assert all("/***" in line for line in refusals), refusals
