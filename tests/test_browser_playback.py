"""Every file of ../shared/media, and generated AVI / MPEG-PS / MP2 files, play at a moment in headless Chromium through `vidx serve`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_ffmpeg
from test_page import chromium, serve  # the one Chromium and server harness of the browser tests

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Plays the given URL in a fresh <video> (or <audio>), seeks, and reports what the element did.
_PLAY = """
const [src, seek, isVideo, done] = arguments;
const el = document.createElement(isVideo ? "video" : "audio");
el.muted = true; el.preload = "auto";
const finish = (ok, why) => done({ok, why, t: el.currentTime, ready: el.readyState,
                                  error: el.error ? el.error.code : null});
const timer = setTimeout(() => finish(false, "timeout"), 25000);
el.addEventListener("error", () => { clearTimeout(timer); finish(false, "error"); });
el.addEventListener("loadedmetadata", () => { el.currentTime = seek; }, {once: true});
el.addEventListener("seeked", () => {
  el.play().then(() => setTimeout(() => { clearTimeout(timer); finish(!el.paused && el.readyState >= 2, "played"); }, 400),
                 (e) => { clearTimeout(timer); finish(false, "play() refused: " + e); });
}, {once: true});
document.body.appendChild(el);
el.src = src;
"""


def _generated(folder: Path) -> list[Path]:
    folder.mkdir()
    avi, vob, mp2 = folder / "scene.avi", folder / "scene.vob", folder / "tone.mp2"
    src = ["-f", "lavfi", "-i", "testsrc=s=320x240:r=25:d=6", "-f", "lavfi", "-i", "sine=f=440:d=6"]
    run_ffmpeg(*src, "-c:v", "mpeg4", "-c:a", "libmp3lame", "-t", "6", str(avi))
    run_ffmpeg(*src, "-c:v", "mpeg2video", "-c:a", "mp2", "-f", "vob", "-t", "6", str(vob))
    run_ffmpeg("-f", "lavfi", "-i", "sine=f=330:d=6", "-c:a", "mp2", str(mp2))
    return [avi, vob, mp2]


def test_every_file_plays_at_a_moment(shared_media: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    files = sorted(p for p in shared_media.rglob("*") if p.suffix in (".mp4", ".wav")) + _generated(tmp_path / "gen")
    ingest = subprocess.run([sys.executable, "-m", "vidx", "ingest", *map(str, files)], capture_output=True, text=True,
                            timeout=1200, env=dict(os.environ, VIDX_DATA_DIR=str(data)))
    assert ingest.returncode == 0, ingest.stderr[-2000:]
    with serve(data) as base, chromium(tmp_path / "chromium") as driver:
        import urllib.request

        driver.get(base + "/")
        media = json.load(urllib.request.urlopen(base + "/api/v1/media?limit=500"))["items"]
        assert len(media) == len(files)
        failures = []
        clipped = []
        for m in media:
            detail = json.load(urllib.request.urlopen(f"{base}/api/v1/media/{m['id']}"))
            at = max(0.0, min(detail["duration"] / 2, detail["duration"] - 2.0))
            if detail["playable"]:
                src, seek = detail["file_url"], at
            else:
                src, seek = f"/api/v1/media/{m['id']}/clip?start={at:.2f}&end={at + 3:.2f}", 0.0
                clipped.append(m["name"])
            got = driver.execute_async_script(_PLAY, src, seek, detail["video"])
            if not (got["ok"] and abs(got["t"] - seek) < 1.0):
                failures.append((m["name"], detail["playable"], got))
        assert not failures, failures
        # The generated files are the ones a browser cannot play as they are: they went through clips.
        assert {"scene.avi", "scene.vob", "tone.mp2"} <= set(clipped), clipped
