"""The page behind a reverse proxy's path prefix (the README's nginx example,
`location /stemd/`, played by support.proxy), in Chromium: the mixer plays a
result's stems in sync, mutes and solos, draws each stem's waveform from
peaks.json, and a 20-minute track is drawn and played without a whole stem
being fetched; the library is searched, paged and a failure dismissed."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait

from support.audio import make_tone
from support.browser import chromium
from support.daemon import Daemon, service_config
from support.http import EPHEMERAL, http_url
from support.instrumented_model import FAIL_ENV, PASSTHROUGH, instrumented_model, model_env
from support.long_stems import write_long_stems
from support.proxy import PrefixProxy
from support.waiting import wait_until

WAIT_S = 90
LONG_S = 20 * 60.0
LONG_RATE = 16000  # 16-bit stereo: 77 MB a stem, encoded in a few seconds
SYNC_S = 0.05  # the most the stems may drift apart


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    with chromium(window="1200,1400") as driver:
        yield driver


def row(driver: WebDriver, section: str, name: str) -> WebElement | None:
    """The job's row in one section, found in one script (rows come and go)."""
    found: WebElement | None = driver.execute_script(
        "return [...document.querySelectorAll(`#${arguments[0]} li.job`)].find("
        "(li) => li.querySelector('.title').textContent === arguments[1]) || null;",
        section,
        name,
    )
    return found


def mixer_call(driver: WebDriver, job: int, expression: str) -> Any:
    """`expression` about `m`, the page's mixer of `job`."""
    return driver.execute_script(
        f"const m = window.stemd.mixers.get({job}); return m ? {expression} : null;"
    )


def drawn(driver: WebDriver, item: WebElement) -> bool:
    """Every waveform canvas of the row drawn from peaks, with ink on it."""
    canvases = item.find_elements(By.CSS_SELECTOR, "canvas.wave")
    return bool(canvases) and all(
        c.get_attribute("data-drawn") == "peaks"
        and driver.execute_script(
            "const c = arguments[0], d = c.getContext('2d').getImageData(0, 0, c.width, c.height)"
            ".data; let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n;",
            c,
        )
        > c.size["width"]  # more than a line: a waveform
        for c in canvases
    )


def spread(positions: dict[str, float]) -> float:
    return max(positions.values()) - min(positions.values())


def wait_position(driver: WebDriver, job: int, at_least: float) -> dict[str, float]:
    WebDriverWait(driver, WAIT_S).until(
        lambda d: (mixer_call(d, job, "m.position()") or 0) >= at_least
    )
    positions: dict[str, float] = mixer_call(driver, job, "m.positions()")
    return positions


@pytest.mark.slow
def test_the_mixer_behind_a_path_prefix(tmp_path: Path, browser: WebDriver) -> None:
    config = service_config(tmp_path, http=EPHEMERAL)
    daemon = Daemon(config, tmp_path).start()
    proxy: PrefixProxy | None = None
    try:
        proxy = PrefixProxy(http_url(daemon)).start()
        daemon.wait_warm()
        browser.get(proxy.url)
        wait = WebDriverWait(browser, WAIT_S)
        # the page's script, stylesheet, API calls and event stream all under /stemd/
        wait.until(lambda d: d.find_element(By.ID, "model").text == "demucs_unittest")
        wait.until(lambda d: d.find_element(By.ID, "live").text == "connected")
        assert browser.execute_script("return getComputedStyle(document.body).backgroundColor") == (
            "rgb(247, 248, 250)"
        )  # style.css came
        assert ("GET", "/static/app.js", "") in proxy.requests
        assert browser.find_element(By.LINK_TEXT, "status").get_attribute("href") == (
            proxy.url + "api/v1/status"
        )

        # A result: four stems, each with its waveform, before any stem is fetched.
        song = make_tone(tmp_path / "song.wav", 8.0, frequency=330)
        browser.find_element(By.ID, "file-input").send_keys(str(song))
        done = wait.until(lambda d: row(d, "done", "song.wav"))
        job = int(done.get_attribute("data-id") or 0)
        stems_path = f"/api/v1/jobs/{job}/stems/"
        assert len(done.find_elements(By.CSS_SELECTOR, "canvas.wave")) == 4
        wait.until(lambda d: drawn(d, done))
        assert proxy.sent(stems_path) == 0  # drawn from peaks.json alone
        assert done.find_element(By.CSS_SELECTOR, "a.zip").get_attribute("href") == (
            f"{proxy.url}api/v1/jobs/{job}/stems.zip"
        )

        # One transport: after 3 s the four stems are within 50 ms of each other.
        done.find_element(By.CSS_SELECTOR, "button.play").click()
        positions = wait_position(browser, job, 3.0)
        # heard through the page's Web Audio graph, which runs (the click was a gesture)
        assert browser.execute_script("return window.stemd.graph().state") == "running"
        print(f"after 3 s: {positions}")
        assert len(positions) == 4
        assert spread(positions) < SYNC_S, positions
        assert proxy.sent(stems_path) > 0  # streamed through the proxy (Range and all)

        # Mute, solo and volume: the gain each stem is heard at.
        def gains() -> dict[str, float]:
            values: dict[str, float] = mixer_call(browser, job, "m.gains()")
            return values

        def button(stem: str, kind: str) -> WebElement:
            return done.find_element(By.CSS_SELECTOR, f".stem[data-stem='{stem}'] button.{kind}")

        assert gains() == {"drums": 1, "bass": 1, "other": 1, "vocals": 1}
        button("drums", "mute").click()
        assert gains() == {"drums": 0, "bass": 1, "other": 1, "vocals": 1}
        button("vocals", "solo").click()
        assert gains() == {"drums": 0, "bass": 0, "other": 0, "vocals": 1}
        button("bass", "solo").click()
        assert gains() == {"drums": 0, "bass": 1, "other": 0, "vocals": 1}
        button("vocals", "solo").click()
        button("bass", "solo").click()
        button("drums", "mute").click()
        volume = done.find_element(By.CSS_SELECTOR, ".stem[data-stem='other'] input.volume")
        browser.execute_script(
            "arguments[0].value = '0.5'; arguments[0].dispatchEvent(new Event('input'))", volume
        )
        assert gains() == {"drums": 1, "bass": 1, "other": 0.5, "vocals": 1}

        # Seek: every stem moves, and they stay together.
        seek = done.find_element(By.CSS_SELECTOR, "input.seek")
        browser.execute_script(
            "arguments[0].value = '1'; arguments[0].dispatchEvent(new Event('input'))", seek
        )
        positions = mixer_call(browser, job, "m.positions()")
        assert all(p < 2.0 for p in positions.values()), positions
        positions = wait_position(browser, job, 2.5)
        assert spread(positions) < SYNC_S, positions

        # A 20-minute result: its stems are written by stemd's own encoder from
        # synthetic audio (a 20-minute separation would take a minute of CI).
        long = make_tone(tmp_path / "long.wav", 2.0, frequency=550)
        browser.find_element(By.ID, "file-input").send_keys(str(long))
        long_row = wait.until(lambda d: row(d, "done", "long.wav"))
        long_job = int(long_row.get_attribute("data-id") or 0)
        folder = tmp_path / "outbox" / daemon_job(daemon, long_job)["output_dir"]
        manifest = json.loads((folder / "stemd.json").read_text())
        write_long_stems(folder, manifest["stems"], LONG_S, LONG_RATE)
        sizes = {stem: (folder / name).stat().st_size for stem, name in manifest["stems"].items()}
        assert min(sizes.values()) > 70_000_000

        proxy.reset()
        browser.refresh()
        long_row = wait.until(lambda d: row(d, "done", "long.wav"))
        wait.until(lambda d: drawn(d, long_row))
        long_stems = f"/api/v1/jobs/{long_job}/stems/"
        assert proxy.sent(long_stems) == 0  # drawn before any stem is fetched
        assert proxy.sent(f"/api/v1/jobs/{long_job}/peaks") < 100_000
        assert long_row.find_element(By.CSS_SELECTOR, ".time").text == "0:00 / 20:00"

        # Played from 15 minutes in: the stems stream from there, none of them whole.
        seek = long_row.find_element(By.CSS_SELECTOR, "input.seek")
        browser.execute_script(
            "arguments[0].value = '900'; arguments[0].dispatchEvent(new Event('input'))", seek
        )
        long_row.find_element(By.CSS_SELECTOR, "button.play").click()
        positions = wait_position(browser, long_job, 903.0)
        assert spread(positions) < SYNC_S, positions
        print(f"20-minute track at {positions}; fetched {proxy.sent(long_stems)} bytes in all")
        for stem, size in sizes.items():
            fetched = proxy.sent(f"{long_stems}{stem}")
            assert 0 < fetched < size / 2, (stem, fetched, size)
        ranges = [r for method, path, r in proxy.requests if path.startswith(long_stems)]
        assert any(r.startswith("bytes=") and not r.startswith("bytes=0-") for r in ranges), ranges
        # Another result played: this one's streams are given up, its place kept.
        song_row = row(browser, "done", "song.wav")
        assert song_row is not None
        song_row.find_element(By.CSS_SELECTOR, "button.play").click()
        wait_position(browser, job, 0.5)
        assert mixer_call(browser, long_job, "m.attached()") is False
        assert 903 < mixer_call(browser, long_job, "m.position()") < 910

        ActionChains(browser).move_to_element(browser.find_element(By.TAG_NAME, "h1")).perform()
        shot = tmp_path / "page.png"
        assert browser.save_screenshot(str(shot))
        print(f"screenshot: {shot}")
        assert shot.stat().st_size > 10_000
    finally:
        if proxy is not None:
            proxy.stop()
        assert daemon.stop() == 0, daemon.log()


def daemon_job(daemon: Daemon, job: int) -> dict[str, Any]:
    with httpx.Client(base_url=http_url(daemon), timeout=30) as client:
        answer = client.get(f"/api/v1/jobs/{job}")
        answer.raise_for_status()
        body: dict[str, Any] = answer.json()
        return body


@pytest.mark.slow
def test_the_library_searches_pages_and_dismisses(
    tmp_path: Path, browser: WebDriver, instrumented_repo: Path
) -> None:
    env, _record = model_env(tmp_path)
    fail = tmp_path / "fail"
    env[FAIL_ENV] = str(fail)
    config = service_config(
        tmp_path,
        model=instrumented_model(instrumented_repo, PASSTHROUGH),
        source={"max_attempts": 1},
        http=EPHEMERAL,
    )
    daemon = Daemon(config, tmp_path, env=env).start()
    proxy: PrefixProxy | None = None
    try:
        url = http_url(daemon)
        proxy = PrefixProxy(url).start()
        daemon.wait_warm()
        names = ["Alpha.wav", "beta.wav", "gamma.wav"]
        inbox = tmp_path / "inbox"
        for n, name in enumerate(names):
            shutil.copy(make_tone(tmp_path / "src" / name, 1.0, frequency=300 + 50 * n), inbox)
            # one at a time: the jobs' ids follow the names
            wait_done(url, name)
        fail.touch()
        shutil.copy(make_tone(tmp_path / "src" / "broken.wav", 1.0, frequency=900), inbox)
        wait_done(url, "broken.wav", state="failed")
        fail.unlink()

        # The API: a search (any case) and pages.
        with httpx.Client(base_url=url, timeout=30) as client:
            found = client.get("/api/v1/jobs", params={"q": "ALPHA"}).json()
            assert [j["source"] for j in found["jobs"]] == ["Alpha.wav"]
            assert found["next_before"] is None
            first = client.get("/api/v1/jobs", params={"limit": 2}).json()
            assert [j["source"] for j in first["jobs"]] == ["broken.wav", "gamma.wav"]
            after = first["next_before"]
            second = client.get("/api/v1/jobs", params={"limit": 2, "before": after}).json()
            assert [j["source"] for j in second["jobs"]] == ["beta.wav", "Alpha.wav"]
            assert client.get("/api/v1/jobs", params={"q": "50%_"}).json()["jobs"] == []

        # The page, two jobs a page: the older ones come with the button.
        browser.get(proxy.url + "?page_size=2")
        wait = WebDriverWait(browser, WAIT_S)
        wait.until(lambda d: row(d, "done", "gamma.wav"))
        assert row(browser, "done", "beta.wav") is None
        browser.find_element(By.ID, "older").click()
        wait.until(lambda d: row(d, "done", "Alpha.wav"))
        assert row(browser, "done", "beta.wav") is not None
        assert browser.find_element(By.ID, "older").get_attribute("hidden") is not None
        # the source's name once: as the title, nowhere else in the row
        gamma = row(browser, "done", "gamma.wav")
        assert gamma is not None and gamma.text.count("gamma.wav") == 1

        # The search box: only what matches, then everything again.
        search = browser.find_element(By.ID, "search")
        search.send_keys("et")
        wait.until(lambda d: row(d, "done", "gamma.wav") is None)
        assert row(browser, "done", "beta.wav") is not None
        assert row(browser, "failed", "broken.wav") is None
        search.clear()
        search.send_keys(" ")  # an input event; a blank query is none
        wait.until(lambda d: row(d, "failed", "broken.wav"))

        # Upload choices: sent as form fields beside `file`, only those that differ
        # from the defaults (a plain upload sends none).
        def upload(name: str) -> dict[str, str]:
            proxy.bodies.clear()
            song = make_tone(tmp_path / "up" / name, 1.0, frequency=700 + len(name))
            browser.find_element(By.ID, "file-input").send_keys(str(song))
            wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, "#uploads li"))
            (path, body), *_ = proxy.bodies
            assert path == "/api/v1/jobs"
            return form_fields(body)

        assert upload("plain.wav") == {"file": "plain.wav"}
        Select(browser.find_element(By.ID, "mode")).select_by_value("two")
        Select(browser.find_element(By.ID, "two-stem")).select_by_value("drums")
        Select(browser.find_element(By.ID, "format")).select_by_value("mp3")
        assert upload("two.wav") == {"two_stems": "drums", "format": "mp3", "file": "two.wav"}
        Select(browser.find_element(By.ID, "mode")).select_by_value("all")
        Select(browser.find_element(By.ID, "format")).select_by_value("wav")  # the default
        for stem in ("bass", "other"):
            browser.find_element(By.CSS_SELECTOR, f"#stem-boxes input[value='{stem}']").click()
        assert upload("some.wav") == {"stems": "drums,vocals", "file": "some.wav"}

        # Dismiss a failure from the page (POST /api/v1/jobs/{id}/dismiss). The three
        # uploads pushed it off the newest page: found by the search box
        search = browser.find_element(By.ID, "search")
        search.clear()
        search.send_keys("broken")
        broken = wait.until(lambda d: row(d, "failed", "broken.wav"))
        broken.find_element(By.CSS_SELECTOR, "button.dismiss").click()
        wait.until(lambda d: row(d, "failed", "broken.wav") is None)
        browser.get(proxy.url)  # loaded anew: the server's list leaves it out too
        search = wait.until(lambda d: d.find_element(By.ID, "search"))
        search.send_keys("gamma")
        wait.until(lambda d: row(d, "done", "gamma.wav"))
        search.clear()
        search.send_keys("broken")
        wait.until(lambda d: row(d, "done", "gamma.wav") is None)  # the search applied
        assert row(browser, "failed", "broken.wav") is None  # gone for good
    finally:
        if proxy is not None:
            proxy.stop()
        assert daemon.stop() == 0, daemon.log()


def wait_done(url: str, source: str, state: str = "done") -> None:
    def ended() -> bool:
        with httpx.Client(base_url=url, timeout=30) as client:
            jobs = client.get("/api/v1/jobs", params={"q": source}).json()["jobs"]
        return any(j["source"] == source and j["state"] == state for j in jobs)

    wait_until(ended, WAIT_S, f"{source} to be {state}")


def form_fields(body: bytes) -> dict[str, str]:
    """A multipart body's fields, in order: name -> value (a file's: its file name)."""
    fields = {}
    boundary = body.split(b"\r\n", 1)[0]  # the body's first line: --BOUNDARY
    for part in body.split(boundary)[1:]:
        head, _, value = part.partition(b"\r\n\r\n")
        if b'name="' not in head:
            continue  # the closing "--", or the end of what the proxy kept
        value = value.removesuffix(b"\r\n")
        name = head.split(b'name="', 1)[1].split(b'"', 1)[0].decode()
        if b'filename="' in head:
            fields[name] = head.split(b'filename="', 1)[1].split(b'"', 1)[0].decode()
        else:
            fields[name] = value.decode()
    return fields
