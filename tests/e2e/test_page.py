"""The page in a real browser (support.browser: Debian's chromium and
chromedriver): upload, progress, workers, a result, a failure retried."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from support.audio import make_tone
from support.browser import chromium
from support.daemon import Daemon, service_config
from support.http import EPHEMERAL, client, http_url
from support.instrumented_model import (
    FAIL_ENV,
    GATE_AFTER_ENV,
    GATED,
    build_instrumented_repo,
    instrumented_model,
    model_env,
)

WAIT_S = 90


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    with chromium() as driver:
        yield driver


def row(driver: WebDriver, section: str, name: str) -> WebElement | None:
    for item in driver.find_elements(By.CSS_SELECTOR, f"#{section} li.job"):
        if item.find_element(By.CSS_SELECTOR, ".title").text == name:
            return item
    return None


def test_the_page_uploads_shows_progress_plays_and_retries(
    tmp_path: Path, browser: WebDriver
) -> None:
    repo = build_instrumented_repo(tmp_path / "models")
    env, _record = model_env(tmp_path, gate=True)
    gate = tmp_path / "gate"
    fail = tmp_path / "fail"
    env[GATE_AFTER_ENV] = "2"  # two passes go through, then the model waits at the gate
    env[FAIL_ENV] = str(fail)
    config = service_config(
        tmp_path,
        model=instrumented_model(repo, GATED),
        source={"max_attempts": 1},
        http=EPHEMERAL,
    )
    daemon = Daemon(config, tmp_path, env=env).start()
    try:
        url = http_url(daemon)
        daemon.wait_warm()
        browser.get(url)
        wait = WebDriverWait(browser, WAIT_S)
        wait.until(lambda d: d.find_element(By.ID, "model").text == GATED)
        assert browser.find_element(By.ID, "device").text == "cpu"
        # beside the device, what runs the forward pass, as /api/v1/info says
        with client(url) as http:
            info = http.get("/api/v1/info").json()
        runs = f"{info['backend']} {info['precision']}"
        assert runs == "torch fp32"  # demucs_unittest's architecture: never exported
        assert browser.find_element(By.ID, "runtime").text == f"· {runs}"
        device_fact = browser.find_element(By.ID, "device").find_element(By.XPATH, "..")
        assert device_fact.text == f"cpu · {runs}"
        assert browser.find_element(By.ID, "free").text.endswith("B")
        wait.until(lambda d: d.find_element(By.ID, "live").text == "connected")

        # A long track through the file input: its bar moves, then it is done.
        song = make_tone(tmp_path / "long song.wav", 12.0, frequency=330)
        browser.find_element(By.ID, "file-input").send_keys(str(song))
        bar = wait.until(
            lambda d: (
                (r := row(d, "running", "long song.wav"))
                and r.find_element(By.TAG_NAME, "progress")
            )
        )
        moved = wait.until(lambda _d: float(bar.get_attribute("value") or 0) > 0 and bar)
        held_at = float(moved.get_attribute("value") or 0)
        assert 0 < held_at < 1  # held at the gate, part of the way
        # the workers list shows this daemon's one worker running it
        worker = wait.until(
            lambda d: (
                (w := d.find_element(By.CSS_SELECTOR, "#workers li.worker"))
                and "long song.wav" in w.text
                and w
            )
        )
        assert "· w0 (cpu)" in worker.text
        (gate / "open").touch()
        done = wait.until(lambda d: row(d, "done", "long song.wav"))
        players = done.find_elements(By.TAG_NAME, "audio")
        assert len(players) == 4
        assert len(done.find_elements(By.LINK_TEXT, "download")) == 4
        assert done.find_element(By.CSS_SELECTOR, "a.zip").get_attribute("href")
        # the mixer opens its streams when it first plays
        done.find_element(By.CSS_SELECTOR, "button.play").click()
        duration = wait.until(
            lambda d: d.execute_script(
                "const a = arguments[0]; return a.readyState >= 1 ? a.duration : 0;", players[3]
            )
        )
        assert abs(duration - 12.0) < 0.2

        # A file the model fails on: its reason and a retry button; retried, done.
        fail.touch()
        short = make_tone(tmp_path / "short.wav", 2.0, frequency=550)
        browser.find_element(By.ID, "file-input").send_keys(str(short))
        failed = wait.until(lambda d: row(d, "failed", "short.wav"))
        assert "fails on request" in failed.find_element(By.CSS_SELECTOR, ".reason").text
        fail.unlink()
        failed.find_element(By.CSS_SELECTOR, "button.retry").click()
        retried = wait.until(lambda d: row(d, "done", "short.wav"))
        assert len(retried.find_elements(By.TAG_NAME, "audio")) == 4
        assert row(browser, "failed", "short.wav") is None

        shot = tmp_path / "page.png"
        assert browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
    finally:
        (gate / "open").touch()
        assert daemon.stop() == 0, daemon.log()
