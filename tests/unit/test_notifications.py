"""Notification targets: their config, their URLs never shown whole, and a
channel that neither blocks the one offering it messages nor floods the log
while its target is down."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
import yaml

from stemd.config import Config, load_config
from stemd.errors import ConfigError
from stemd.masking import masked_url
from stemd.notifications.channels import QUEUE_MAX, Channel
from stemd.notifications.messages import Message
from stemd.notifications.senders import AppriseSender, WebhookSender
from support.daemon import stemd, write_config
from support.receiver import Hanging, Receiver, refused_port
from support.waiting import wait_until

TOKEN = "Zq81xTOKENxx"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"https://hooks.example.com/services/T0/{TOKEN}", "https://hooks.example.com/***"),
        (f"ntfy://{TOKEN}@ntfy.sh/topic", "ntfy://***@ntfy.sh/***"),
        (f"tgram://123456:{TOKEN}/998877", "tgram://***/***"),
        (f"discord://1234/{TOKEN}", "discord://***/***"),
        (f"mailtos://me:{TOKEN}@mail.example.org", "mailtos://***@mail.example.org"),
        (f"json://127.0.0.1:8080/x?token={TOKEN}", "json://127.0.0.1:8080/***?***"),
        ("gotify://localhost:80", "gotify://localhost:80"),
    ],
)
def test_urls_are_shown_without_their_secrets(url: str, shown: str) -> None:
    assert masked_url(url) == shown


def load(tmp_path: Path, targets: object) -> Config:
    path = tmp_path / "stemd.yaml"
    path.write_text(yaml.safe_dump({"notifications": targets}))
    return load_config(path, base_dir=tmp_path)


def test_targets_take_a_bare_on_key_and_default_to_failures_and_the_summary(
    tmp_path: Path,
) -> None:
    (tmp_path / "apprise.txt").write_text("# mine\nntfy://ntfy.sh/a\n\n")
    path = tmp_path / "stemd.yaml"
    path.write_text(
        "notifications:\n"
        "  - apprise: ntfy://ntfy.sh/mytopic\n"
        "    on: [done]\n"  # YAML 1.1 reads a bare `on` as true
        "  - apprise_file: apprise.txt\n"
        "  - webhook: https://example.com/hook\n"
        "    timeout: 3s\n"
    )
    config = load_config(path, base_dir=tmp_path)
    first, second, third = config.notifications
    assert first.on == ("done",)
    assert second.apprise_file == tmp_path / "apprise.txt"
    assert second.on == ("failed", "drained")
    assert third.timeout == 3.0


def test_bad_targets_are_named_with_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(
            tmp_path,
            [
                {"apprise": "ntfy://a", "webhook": "https://b"},
                {"webhook": "ftp://example.com/x"},
                {"apprise": "just-a-name", "on": ["finished"]},
                f"https://hooks.example.com/{TOKEN}",  # a URL where a mapping belongs
            ],
        )
    text = "\n".join(str(issue) for issue in caught.value.issues)
    assert "notifications[0]: give exactly one of apprise" in text
    assert "found apprise and webhook" in text
    assert "notifications[1].webhook: is not an http:// or https:// URL" in text
    assert "notifications[2].apprise: is not an Apprise URL" in text
    assert "notifications[2].on[0]: 'finished' is not allowed" in text
    assert "notifications[3]: each target is a mapping" in text
    assert TOKEN not in text
    with pytest.raises(ConfigError) as missing:
        load(tmp_path, [{"apprise_file": "missing.txt"}])
    assert [str(issue) for issue in missing.value.issues] == [
        f"stemd.yaml: notifications[0].apprise_file: {tmp_path / 'missing.txt'}: no such "
        "file; write the Apprise URLs there, one a line"
    ]


def test_check_and_a_reload_never_show_a_token(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "c.yaml",
        {
            "notifications": [
                {"apprise": f"tgram://123:{TOKEN}/456", "on": ["done"]},
                {"webhook": f"https://user:{TOKEN}@example.com/hook/{TOKEN}"},
            ]
        },
    )
    result = stemd("-c", str(config), "check", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert TOKEN not in result.stdout + result.stderr
    shown = yaml.safe_load(result.stdout)["notifications"]
    assert [t.get("apprise") or t.get("webhook") for t in shown] == [
        "tgram://***/***",
        "https://***@example.com/***",
    ]


def message(n: int = 0) -> Message:
    return Message("failed", f"stemd: {n}.wav failed", "cannot decode", {"event": "failed"})


def test_a_target_that_hangs_holds_up_nothing_and_its_queue_stays_bounded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with Hanging() as hanging:
        channel = Channel(
            AppriseSender(f"json://127.0.0.1:{hanging.port}/x/{TOKEN}", timeout=30),
            frozenset({"failed"}),
        )
        channel.start()
        try:
            with caplog.at_level(logging.WARNING, logger="stemd"):
                for n in range(QUEUE_MAX + 20):  # the first is in the hung send
                    channel.offer(message(n))
                wait_until(lambda: hanging.connections, 10, "the send to hang")
            # the offers returned while the first send hangs; what did not fit
            # was dropped, with one warning
            assert channel.dropped >= 19
            drops = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
            assert len(drops) == 1 and "json://127.0.0.1:" in drops[0]
        finally:
            channel.close(0)
            assert not channel.join(0.5)  # still in its send: left to its timeout
    assert TOKEN not in caplog.text


def test_a_refusing_target_is_retried_with_backoff_logged_once_a_try_then_delivered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = refused_port()
    url = f"http://127.0.0.1:{port}/hook/{TOKEN}"
    channel = Channel(WebhookSender(url, timeout=5), frozenset({"failed"}), retry_first=0.2)
    channel.start()
    try:
        with caplog.at_level(logging.INFO, logger="stemd"):
            channel.offer(message(1))
            channel.offer(message(2))
            started = time.monotonic()
            wait_until(lambda: channel.failing, 10, "the first failed try")
            wait_until(
                lambda: sum(f":{port}/***: Connection refused" in r.getMessage()
                            for r in caplog.records) >= 3,
                10,
                "three tries",
            )  # fmt: skip
            with Receiver(port=port) as receiver:  # the target comes back
                got = receiver.wait_for(f"/hook/{TOKEN}", 2, 30)
                elapsed = time.monotonic() - started
        tries = [
            r.getMessage()
            for r in caplog.records
            if "trying the" in r.getMessage() and f":{port}/" in r.getMessage()
        ]
        # 0.2 s, 0.4 s, 0.8 s ...: one line a try, not one per message or per second
        assert 3 <= len(tries) <= 2 + elapsed / 0.2, tries
        assert all("webhook http://127.0.0.1:" in t and "/***" in t for t in tries)
        assert "Connection refused" in tries[0]
        assert [m.body for m in got] == [{"event": "failed"}, {"event": "failed"}]
        assert any("delivered again" in r.getMessage() for r in caplog.records)
        assert TOKEN not in caplog.text
    finally:
        channel.close(0)
        channel.join(5)
