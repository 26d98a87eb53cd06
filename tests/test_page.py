"""The web page of `vidx serve` in headless Chromium (Selenium): search, play the moment, chapters, summary, overview, library, jobs; screenshots."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO, espeak, run_ffmpeg

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SPOKEN = "seven silver boats sail past the old lighthouse"
QUERY = "sail past the old lighthouse"
TOKEN = "page-test-token-7f3a"
# Speech starts this far into the test video, so a moment at 0 s could not pass for a seek.
SPEECH_AT = 5.0
AVI_SPOKEN = "a purple elephant walks through the snow"

pytestmark = [pytest.mark.slow]


# ---------- the server ----------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ingest(data: Path, *paths: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "vidx", "ingest", *map(str, paths)], capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, VIDX_DATA_DIR=str(data)))
    assert proc.returncode == 0, proc.stderr


@contextmanager
def serve(data: Path, log: Path | None = None, **env: str) -> Iterator[str]:
    """`python -m vidx serve` on DATA on a free port; yields its base URL once /healthz answers (shared by the browser tests)."""
    log = log or data.parent / f"{data.name}-serve.log"
    port = _free_port()
    # A token in the caller's environment must not turn auth on for a test that runs without one.
    full_env = {k: v for k, v in os.environ.items() if k != "VIDX_API_TOKEN"}
    full_env.update(VIDX_DATA_DIR=str(data), **env)
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "vidx", "serve", "--port", str(port)], env=full_env,
                                stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vidx serve exited {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{base}/healthz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vidx serve did not answer /healthz in 90 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# ---------- the browser ----------


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[Any, str], Path]]:
    """save(driver, name): a PNG under a pytest tmp dir, copied to $VIDX_SCREENSHOTS when that is set."""
    folder = tmp_path_factory.mktemp("screenshots")
    copy_to = os.environ.get("VIDX_SCREENSHOTS")

    def save(driver: Any, name: str) -> Path:
        path = folder / f"{name}.png"
        assert driver.save_screenshot(str(path)), f"screenshot {name} failed"
        if copy_to:
            Path(copy_to).mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, Path(copy_to) / path.name)
        return path

    yield save
    print(f"\nscreenshots: {folder}" + (f" (copied to {copy_to})" if copy_to else ""))


@contextmanager
def chromium(profile: Path) -> Iterator[Any]:
    """Headless Debian Chromium with a fresh profile dir, 1280x800; nothing is downloaded (no Selenium Manager)."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        # A failure, not a skip: a machine without them would silently test no page at all.
        pytest.fail(f"{CHROMIUM} and {CHROMEDRIVER} are needed: apt-get install chromium chromium-driver (.ci/run does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--autoplay-policy=no-user-gesture-required", "--hide-scrollbars", "--window-size=1280,800",
                f"--user-data-dir={profile}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    with pytest.MonkeyPatch.context() as mp:
        # Selenium Manager stays offline and silent even if something asks it.
        mp.setenv("SE_OFFLINE", "true")
        mp.setenv("SE_AVOID_STATS", "true")
        service = Service(executable_path=str(CHROMEDRIVER), log_output=str(profile.parent / f"{profile.name}-chromedriver.log"))
        driver = webdriver.Chrome(service=service, options=options)
    try:
        driver.set_page_load_timeout(60)
        _viewport(driver, 1280, 800)
        yield driver
    finally:
        driver.quit()


@pytest.fixture()
def browser(tmp_path: Path) -> Iterator[Any]:
    with chromium(tmp_path / "chromium-profile") as driver:
        yield driver


def _viewport(driver: Any, width: int, height: int, *, mobile: bool = False) -> None:
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile})


def _color_scheme(driver: Any, scheme: str) -> None:
    driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": scheme}]})


def _wait(driver: Any, what: Callable[[Any], Any], timeout: float = 30, message: str = "") -> Any:
    """what(driver) once it is truthy; on time-out, an AssertionError with the page's error line."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.05).until(what)
    except TimeoutException:
        raise AssertionError(f"{message or 'timed out'} after {timeout:.0f} s; error line: {_error_line(driver)!r}") from None


def _css(driver: Any, selector: str) -> Any:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, selector)


def _all(driver: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def _visible(selector: str) -> Callable[[Any], Any]:
    def check(driver: Any) -> Any:
        found = [e for e in _all(driver, selector) if e.is_displayed()]
        return found[0] if found else False

    return check


def _search(driver: Any, query: str) -> list[Any]:
    from selenium.webdriver.common.keys import Keys

    box = _wait(driver, _visible("#q"), message="no search box")
    box.clear()
    box.send_keys(query, Keys.ENTER)
    _wait(driver, _visible(".result"), timeout=90, message=f"no result for {query!r}")
    return _all(driver, ".result")


def _error_line(driver: Any) -> str:
    found = [e.text for e in _all(driver, "#error") if e.is_displayed()]
    return found[0] if found else ""


PLAYER = "const p = document.querySelector('#player'); return p && {tag: p.tagName, paused: p.paused, t: p.currentTime, ready: p.readyState, src: p.currentSrc};"


def _playing(driver: Any) -> dict[str, Any]:
    """Waits until #player plays; returns its state at the first sample that shows it playing."""

    def check(d: Any) -> Any:
        s = d.execute_script(PLAYER)
        return s if s and not s["paused"] and s["ready"] >= 2 else False

    try:
        return _wait(driver, check, timeout=30, message="the player never played")
    except AssertionError as e:
        raise AssertionError(f"{e}; player: {driver.execute_script(PLAYER)}") from None


def _advances(driver: Any) -> None:
    before = driver.execute_script(PLAYER)["t"]
    _wait(driver, lambda d: d.execute_script(PLAYER)["t"] > before + 0.1, timeout=10, message="currentTime does not advance")


def _moment_start(href: str) -> float:
    query = urllib.parse.urlsplit(urllib.parse.urlsplit(href).fragment).query
    return float(urllib.parse.parse_qs(query)["t"][0])


def _page_errors(driver: Any) -> list[str]:
    """Script errors and CSP refusals from the console (HTTP 4xx lines are expected where the test asks for them)."""
    bad = ("Content Security Policy", "Uncaught", "TypeError", "ReferenceError", "SyntaxError")
    return [e["message"] for e in driver.get_log("browser") if any(b in e["message"] for b in bad)]


def _single_column(driver: Any) -> None:
    lefts = {round(e.rect["x"]) for e in _all(driver, ".result")}
    assert len(lefts) == 1, f"cards in more than one column at phone width: {lefts}"
    overflow = driver.execute_script("return document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, f"the page scrolls sideways by {overflow}px at phone width"


# ---------- media and servers ----------


@pytest.fixture(scope="module")
def spoken_library(tmp_path_factory: pytest.TempPathFactory, gen_dir: Path) -> dict[str, Path]:
    """A library root with a 10 s MP4 whose speech starts at 5 s and an AVI (MPEG-4 Part 2 + MP3), ingested."""
    root = tmp_path_factory.mktemp("page-library")
    data = tmp_path_factory.mktemp("page-data")
    video = root / "harbour_walk.mp4"
    run_ffmpeg(
        "-f", "lavfi", "-i", "smptebars=s=640x360:r=25:d=5",
        "-f", "lavfi", "-i", "testsrc2=s=640x360:r=25:d=5",
        "-i", str(espeak(SPOKEN, gen_dir / "boats.wav")),
        "-filter_complex", f"[0:v][1:v]concat=n=2:v=1:a=0[v];[2:a]adelay={int(SPEECH_AT * 1000)}:all=1,apad=whole_dur=10[a]",
        "-map", "[v]", "-map", "[a]", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-t", "10",
        str(video),
    )
    avi = root / "talk.avi"
    run_ffmpeg("-f", "lavfi", "-i", "testsrc=s=320x240:r=25:d=6", "-i", str(espeak(AVI_SPOKEN, gen_dir / "elephant.wav")),
               "-filter_complex", "[1:a]adelay=2000:all=1,apad=whole_dur=6[a]", "-map", "0:v", "-map", "[a]",
               "-c:v", "mpeg4", "-c:a", "libmp3lame", "-t", "6", str(avi))
    _ingest(data, video, avi)
    return {"root": root, "data": data, "video": video, "avi": avi}


@pytest.fixture(scope="module")
def server(spoken_library: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`vidx serve` on the spoken library with a token set, so the page must sign in and use the session cookie."""
    env = {"VIDX_API_TOKEN": TOKEN, "VIDX_LIBRARY_ROOTS": str(spoken_library["root"])}
    with serve(spoken_library["data"], tmp_path_factory.mktemp("serve") / "serve.log", **env) as base:
        yield base


def _login(driver: Any, base: str) -> None:
    from selenium.webdriver.common.keys import Keys

    driver.get(f"{base}/")
    _wait(driver, _visible("#token"), message="no login form although the server wants a token").send_keys(TOKEN, Keys.ENTER)
    _wait(driver, _visible("#q"), message="signing in failed")
    _wait(driver, lambda d: not _all(d, "#view-login:not([hidden])"), message="the login form stays")


# ---------- tests ----------


def test_a_wrong_token_is_one_error_line_then_the_right_one_signs_in(browser: Any, server: str) -> None:
    from selenium.webdriver.common.keys import Keys

    browser.get(f"{server}/")
    token = _wait(browser, _visible("#token"), message="no login form although the server wants a token")
    token.send_keys("wrong-token", Keys.ENTER)
    _wait(browser, lambda d: _error_line(d), message="a wrong token showed no error")
    assert _all(browser, "#view-login:not([hidden])")
    token.clear()
    token.send_keys(TOKEN, Keys.ENTER)
    _wait(browser, lambda d: _all(d, "#view-search:not([hidden])"), message="signing in failed")
    assert not _error_line(browser)
    assert not _page_errors(browser), _page_errors(browser)


def test_search_plays_the_moment_and_the_transcript_follows(browser: Any, server: str, shots: Callable[[Any, str], Path]) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    _login(browser, server)
    first = _search(browser, QUERY)[0]
    assert first.tag_name in ("a", "button")
    assert "harbour_walk.mp4" in first.text
    assert _all(browser, ".result mark"), "no matched word is highlighted in the snippet"
    assert _all(browser, ".result .chip"), "no per-source score is shown"
    _wait(browser, lambda d: d.execute_script("const i = document.querySelector('.result img'); return i && i.complete && i.naturalWidth > 0;"),
          message="the thumbnail did not load (is the session cookie sent with images?)")
    start = _moment_start(first.get_attribute("href"))
    assert start > SPEECH_AT - 2.5, f"the moment starts at {start}s, before the speech"
    shots(browser, "speech-search")

    first.click()
    state = _playing(browser)
    assert state["tag"] == "VIDEO" and "/file" in state["src"], state
    assert abs(state["t"] - start) < 1.0, f"playing at {state['t']}s, the moment starts at {start}s"
    _advances(browser)
    assert "#/watch/" in browser.current_url and "t=" in browser.current_url, browser.current_url
    _wait(browser, lambda d: _all(d, "#transcript li.current"), message="the transcript does not follow playback")
    assert "lighthouse" in _css(browser, "#transcript").text.lower()
    assert _all(browser, "#tags .tag"), "no concept tags for the clip"
    time.sleep(0.6)
    shots(browser, "speech-watch")

    # The timeline seeks where it is clicked (near its start here), and a transcript line seeks to its start.
    timeline = _css(browser, "#timeline")
    ActionChains(browser).move_to_element_with_offset(timeline, -timeline.rect["width"] / 2 + 4, 0).click().perform()
    _wait(browser, lambda d: d.execute_script(PLAYER)["t"] < start - 1.5, timeout=10, message="clicking the timeline did not seek")
    _css(browser, "#transcript li:first-child button").click()
    _wait(browser, lambda d: abs(d.execute_script(PLAYER)["t"] - start) < 1.5, timeout=10, message="clicking a line did not seek")

    # The URL names the moment: loaded afresh (no search behind it), it plays the same moment.
    browser.refresh()
    state = _playing(browser)
    assert abs(state["t"] - start) < 1.0, f"the shared link plays at {state['t']}s, not {start}s"
    assert not _page_errors(browser), _page_errors(browser)


def test_a_file_the_browser_cannot_play_plays_as_a_clip(browser: Any, server: str) -> None:
    _login(browser, server)
    cards = _search(browser, "purple elephant snow")
    assert "talk.avi" in cards[0].text
    start = _moment_start(cards[0].get_attribute("href"))
    cards[0].click()
    state = _playing(browser)
    assert "/clip?" in state["src"], state
    # The clip starts at the moment, so its own clock starts near 0.
    assert state["t"] < 1.0, f"the clip of the moment at {start}s plays from {state['t']}s"
    _advances(browser)
    assert not _error_line(browser)
    assert not _page_errors(browser), _page_errors(browser)


def test_library_and_jobs_pages(browser: Any, server: str, spoken_library: dict[str, Path], shots: Callable[[Any, str], Path]) -> None:
    _login(browser, server)
    browser.get(f"{server}/#/library")
    _wait(browser, lambda d: len([r for r in _all(d, "#library .media") if r.is_displayed()]) == 2, message="the library does not list both files")
    text = _css(browser, "#library").text
    assert "harbour_walk.mp4" in text and "talk.avi" in text and "indexed" in text
    shots(browser, "speech-library")

    browser.get(f"{server}/#/jobs")
    job = _wait(browser, _visible("#jobs .job"), message="the jobs page lists nothing")
    assert _all(browser, "#jobs .job .bar")
    assert "harbour_walk.mp4" in _css(browser, "#jobs").text, job.text
    # A path outside the library roots: one error line, nothing queued.
    before = len(_all(browser, "#jobs .job"))
    paths = _css(browser, "#ingest-paths")
    paths.send_keys("/etc/passwd")
    _css(browser, "#ingest-form button[type=submit]").click()
    _wait(browser, lambda d: _error_line(d), message="a refused ingest path showed no error")
    assert len(_all(browser, "#jobs .job")) == before
    # A file of the library again: a new job appears and the page follows it to its end.
    paths.clear()
    paths.send_keys(str(spoken_library["video"]))
    _css(browser, "#ingest-form button[type=submit]").click()
    _wait(browser, lambda d: len(_all(d, "#jobs .job")) > before, timeout=30, message="the queued job is not listed")
    assert not _error_line(browser)
    _wait(browser, lambda d: not _all(d, '#jobs .job[data-state="queued"], #jobs .job[data-state="running"]'),
          timeout=180, message="the new job did not finish on the page")
    shots(browser, "speech-jobs")
    assert not _page_errors(browser), _page_errors(browser)


def test_phone_width_is_one_column(browser: Any, server: str, shots: Callable[[Any, str], Path]) -> None:
    _viewport(browser, 390, 844, mobile=True)
    _login(browser, server)
    browser.get(f"{server}/#/?{urllib.parse.urlencode({'q': 'lighthouse elephant', 'per_media': 2})}")
    _wait(browser, lambda d: len(_all(d, ".result")) >= 2, timeout=60, message="fewer than two results at phone width")
    _single_column(browser)
    shots(browser, "speech-phone")
    for page in ("library", "jobs"):
        browser.get(f"{server}/#/{page}")
        _wait(browser, _visible(f"#{page} > *"))
        overflow = browser.execute_script("return document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, f"#/{page} scrolls sideways by {overflow}px at phone width"


def test_samples_play_in_the_page(browser: Any, tmp_path_factory: pytest.TempPathFactory, shots: Callable[[Any, str], Path]) -> None:
    """The README's library without a token: audio-only Opus plays at its moment; the README's screenshots come from here."""
    from selenium.webdriver.common.action_chains import ActionChains

    data = tmp_path_factory.mktemp("samples-data")
    _ingest(data, REPO / "samples")
    with serve(data, tmp_path_factory.mktemp("serve") / "serve.log") as base:
        browser.get(f"{base}/")
        _wait(browser, _visible("#search-empty"), message="no start screen")
        cards = _search(browser, "ask not what your country can do for you")
        assert "jfk_inaugural.opus" in cards[0].text
        start = _moment_start(cards[0].get_attribute("href"))
        cards[0].click()
        state = _playing(browser)
        assert state["tag"] == "AUDIO", state
        assert abs(state["t"] - start) < 1.0, f"playing at {state['t']}s, the moment starts at {start}s"
        _advances(browser)
        _wait(browser, lambda d: _all(d, "#transcript li.current"), message="the transcript does not follow playback")
        shots(browser, "samples-listen")

        browser.get(f"{base}/#/?{urllib.parse.urlencode({'q': 'rabbit', 'per_media': 3})}")
        _wait(browser, _visible(".result img"), timeout=60, message="no video result for rabbit")
        _wait(browser, lambda d: d.execute_script(
            "return [...document.querySelectorAll('.result img')].every(i => i.complete && i.naturalWidth > 0);"))
        # The README's picture: no pointer hovering a card, and no empty page below the cards.
        ActionChains(browser).move_to_element(_css(browser, "#search-summary")).perform()
        _viewport(browser, 1280, 520)
        shots(browser, "samples-search")
        _viewport(browser, 1280, 800)
        cards = _all(browser, ".result")
        start = _moment_start(cards[0].get_attribute("href"))
        cards[0].click()
        state = _playing(browser)
        assert state["tag"] == "VIDEO" and abs(state["t"] - start) < 1.0, state
        _wait(browser, lambda d: _all(d, "#tags .tag"), message="no concept tags for the clip")
        browser.execute_script("document.querySelector('#player').pause()")
        shots(browser, "samples-watch")
        _color_scheme(browser, "dark")
        time.sleep(0.3)
        shots(browser, "samples-watch-dark")
        _color_scheme(browser, "light")

        _viewport(browser, 390, 844, mobile=True)
        browser.get(f"{base}/#/?{urllib.parse.urlencode({'q': 'rabbit', 'per_media': 3})}")
        _wait(browser, _visible(".result"), timeout=60)
        _single_column(browser)
        shots(browser, "samples-phone")
        assert not _page_errors(browser), _page_errors(browser)


# ---------- chapters, summary, overview ----------


@pytest.fixture(scope="module")
def chapter_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """`vidx serve` (with a token) over the two-topic video and the README samples; chapters as ingest computed them."""
    from test_api_summaries import two_topic_video

    root = tmp_path_factory.mktemp("chapter-library")
    data = tmp_path_factory.mktemp("chapter-data")
    video, join = two_topic_video(root)
    _ingest(data, video, REPO / "samples")
    env = {"VIDX_API_TOKEN": TOKEN, "VIDX_LIBRARY_ROOTS": str(root)}
    with serve(data, tmp_path_factory.mktemp("serve") / "serve.log", **env) as base:
        media = _api(base, "/api/v1/media")["items"]
        vid = next(m["id"] for m in media if m["name"] == "two_topics.mp4")
        chapters = _api(base, f"/api/v1/media/{vid}/chapters")
        assert len(chapters) >= 2, f"ingest left the two-topic video with {len(chapters)} chapters"
        yield {"base": base, "id": vid, "join": join, "chapters": chapters}


def _api(base: str, path: str) -> Any:
    import json

    request = urllib.request.Request(f"{base}{path}", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=30) as r:
        return json.loads(r.read())


def _chapter_rows(driver: Any) -> list[Any]:
    return [r for r in _all(driver, "#chapters li.chapter") if r.is_displayed()]


def _current_chapter(driver: Any) -> int | None:
    found = _all(driver, "#chapters li.chapter.current")
    return int(found[0].get_attribute("data-index")) if found else None


def test_the_watch_view_shows_chapters_and_the_summary(browser: Any, chapter_server: dict[str, Any],
                                                       shots: Callable[[Any, str], Path]) -> None:
    base, chapters = chapter_server["base"], chapter_server["chapters"]
    _login(browser, base)
    cards = _search(browser, "locomotive carriages platform")
    hit = _api(base, f"/api/v1/search?{urllib.parse.urlencode({'q': 'locomotive carriages platform'})}")["results"][0]
    assert hit["chapter"] in {c["title"] for c in chapters}
    line = cards[0].find_element("css selector", ".chapter-line")
    assert line.get_attribute("textContent") == f"Chapter: {hit['chapter']}", "the result card does not name its chapter"
    start = _moment_start(cards[0].get_attribute("href"))
    cards[0].click()
    _playing(browser)

    # The list beside the player, the markers on the timeline, and the WebVTT chapters track the browser parsed.
    _wait(browser, lambda d: len(_chapter_rows(d)) == len(chapters), message="the chapter list is not shown")
    titles = [r.find_element("css selector", ".ch-title").text for r in _chapter_rows(browser)]
    assert [t.removesuffix("edited").strip() for t in titles] == [c["title"] for c in chapters]
    assert len(_all(browser, "#tl-chapters .tl-chapter")) == len(chapters)
    cues = _wait(browser, lambda d: d.execute_script(
        "const t = document.querySelector('#player').textTracks[0];"
        "return t && t.kind === 'chapters' && t.cues && t.cues.length ? [...t.cues].map(c => [c.startTime, c.text]) : null;"),
        message="the chapters track did not load")
    assert [round(c[0]) for c in cues] == [round(c["start"]) for c in chapters]
    inside = max(c["index"] for c in chapters if c["start"] <= start + 0.5)
    _wait(browser, lambda d: _current_chapter(d) == inside, message=f"chapter {inside} is not highlighted at {start}s")
    assert f"Chapter {inside} of {len(chapters)}" in _css(browser, "#watch-chapter").text
    assert _css(browser, f"#tl-chapters .tl-chapter[data-index='{inside}']").get_attribute("class").endswith("current")

    # Clicking a chapter seeks to its start, and it becomes the current one.
    _chapter_rows(browser)[0].find_element("css selector", ".ch-seek").click()
    _wait(browser, lambda d: d.execute_script(PLAYER)["t"] < 1.5, timeout=10, message="clicking chapter 1 did not seek")
    _wait(browser, lambda d: _current_chapter(d) == 1, message="chapter 1 is not highlighted after seeking to it")

    # The file's summary: transcript sentences, highlights that seek, what is on screen, the share of speech.
    summary = _api(base, f"/api/v1/media/{chapter_server['id']}/summary")
    block = _wait(browser, _visible("#summary-block"), message="no summary on the media page")
    sentences = [s.text for s in _all(browser, "#summary-block .sum-sentence .sum-words")]
    assert sentences == [s["text"] for s in summary["sentences"]]
    assert f"{round(summary['speech_share'] * 100)}%" in block.text
    assert len(_all(browser, "#summary-block .tag")) >= len(summary["concepts"])
    # Highlights in time order: the last one is far from chapter 1's start.
    far = max(summary["highlights"], key=lambda h: h["start"])
    assert far["start"] > 3.0
    highlights = _all(browser, "#summary-block .hl")
    assert len(highlights) == len(summary["highlights"]) and far["text"] in highlights[-1].text
    highlights[-1].click()
    _wait(browser, lambda d: abs(d.execute_script(PLAYER)["t"] - far["start"]) < 1.5, timeout=10,
          message="clicking a highlight did not seek")
    browser.execute_script("document.querySelector('#player').pause()")
    assert not _page_errors(browser), _page_errors(browser)


def test_a_chapter_title_edited_on_the_page_survives_a_reload(browser: Any, chapter_server: dict[str, Any],
                                                              shots: Callable[[Any, str], Path]) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    base, vid, chapters = chapter_server["base"], chapter_server["id"], chapter_server["chapters"]
    _login(browser, base)
    browser.get(f"{base}/#/watch/{vid}?t=0")
    _wait(browser, lambda d: len(_chapter_rows(d)) == len(chapters), message="the chapter list is not shown")
    _chapter_rows(browser)[0].find_element("css selector", ".ch-rename").click()
    box = _wait(browser, _visible("#chapters .ch-input"), message="the pencil opened no title field")
    assert browser.switch_to.active_element == box
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys("Growing tomatoes", Keys.ENTER)
    _wait(browser, lambda d: "Growing tomatoes" in _chapter_rows(d)[0].text, message="the new title is not shown")
    assert "edited" in _chapter_rows(browser)[0].text
    assert browser.switch_to.active_element.get_attribute("class").endswith("ch-rename"), "focus is lost after saving"
    assert _api(base, f"/api/v1/media/{vid}/chapters")[0]["title"] == "Growing tomatoes"
    # Escape leaves the title as it was.
    _chapter_rows(browser)[1].find_element("css selector", ".ch-rename").click()
    _wait(browser, _visible("#chapters .ch-input")).send_keys("never saved", Keys.ESCAPE)
    _wait(browser, lambda d: not _all(d, "#chapters .ch-input"), message="Escape did not close the title field")
    assert chapters[1]["title"] in _chapter_rows(browser)[1].text

    browser.refresh()
    _playing(browser)
    _wait(browser, lambda d: len(_chapter_rows(d)) == len(chapters))
    assert "Growing tomatoes" in _chapter_rows(browser)[0].text, "the edited title did not survive a reload"
    _wait(browser, _visible("#summary-block"))
    browser.execute_script("const p = document.querySelector('#player'); p.pause(); p.currentTime = 0.5;")
    _wait(browser, lambda d: _current_chapter(d) == 1)
    ActionChains(browser).move_to_element(_css(browser, "#watch-title")).perform()
    _viewport(browser, 1280, 1080)  # the summary under the player in the picture too
    time.sleep(0.4)
    shots(browser, "chapters")
    _viewport(browser, 1280, 800)

    # "Use computed" gives the computed title back.
    _chapter_rows(browser)[0].find_element("css selector", ".ch-rename").click()
    _wait(browser, _visible("#chapters .ch-edit")).find_element("xpath", ".//button[text()='Use computed']").click()
    _wait(browser, lambda d: chapters[0]["title"] in _chapter_rows(d)[0].text, message="the computed title did not come back")
    assert not _api(base, f"/api/v1/media/{vid}/chapters")[0]["edited"]
    assert not _page_errors(browser), _page_errors(browser)


def test_the_overview_page_lists_topics_whose_moments_open_the_player(browser: Any, chapter_server: dict[str, Any],
                                                                     shots: Callable[[Any, str], Path]) -> None:
    base = chapter_server["base"]
    overview = _api(base, "/api/v1/library/overview")
    _login(browser, base)
    _css(browser, ".nav a[data-route='overview']").click()
    _wait(browser, lambda d: len(_all(d, "#topics .topic")) == len(overview["topics"]) > 0, message="the overview lists no topics")
    assert _css(browser, ".nav a[data-route='overview']").get_attribute("aria-current") == "page"
    totals = _css(browser, "#overview-totals").text.lower().split("\n")
    assert totals[:2] == ["files", str(overview["files"])] and "speech" in totals
    first = overview["topics"][0]
    card = _all(browser, "#topics .topic")[0]
    assert first["name"] in card.text and all(k in card.text for k in first["keywords"][:3])
    links = card.find_elements("css selector", ".moment")
    assert [link.find_element("css selector", ".m-title").text for link in links] == [m["title"] for m in first["moments"]]
    browser.execute_script("window.scrollTo(0, 0)")
    shots(browser, "overview")

    moment = first["moments"][-1]
    links[-1].click()
    state = _playing(browser)
    offset = 0.0 if "/clip?" in state["src"] else moment["start"]
    assert abs(state["t"] - offset) < 1.0, f"the moment at {moment['start']}s plays from {state['t']}s"
    assert "#/watch/" in browser.current_url
    assert not _page_errors(browser), _page_errors(browser)
