"""Debian's chromium, driven by selenium through Debian's chromedriver
(scripts/install-system-deps.sh installs both; selenium is given the driver's
path, so it never downloads one).

Audio in headless Chromium on a machine without a sound card: media elements
and Web Audio run on Chromium's fake audio output (a timer, not a device), so
`currentTime` advances as in a real browser; `--autoplay-policy` lets a test's
script start playback without a user's gesture (a click through selenium is one
anyway, but `play()` from a script is not)."""

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
        "--autoplay-policy=no-user-gesture-required",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
