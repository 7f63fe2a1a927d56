"""Debian's chromium, driven by selenium through Debian's chromedriver
(scripts/install-system-deps.sh installs both; selenium is given the driver's
path, so it never downloads one).

Audio in headless Chromium on a machine without a sound card (no /dev/snd):
media elements and Web Audio play into Chromium's fake audio output (paced by a
timer, not a device), so `currentTime` advances and an AudioContext runs as in a
real browser. No autoplay flag is given: the tests press the page's buttons, and
a click through WebDriver is a user's gesture, so the page meets the autoplay
policy as it must for people (`play()` called from a test's script would not)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@contextmanager
def chromium(window: str = "1200,1600") -> Iterator[WebDriver]:
    for needed in (CHROMIUM, CHROMEDRIVER):
        assert Path(needed).exists(), f"{needed} is missing: run scripts/install-system-deps.sh"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        f"--window-size={window}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
