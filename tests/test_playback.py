"""vidx.server.playback on real generated media: byte ranges, what a browser plays, moment clips."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

from conftest import run_ffmpeg
from indexer.probe import ProbeResult, probe
from vidx.server import playback
from vidx.server.playback import browser_playable, clip_media_type, file_response, mime_type, moment_clip

VIDEO = ["-f", "lavfi", "-i", "testsrc=s=160x120:r=10:d=3", "-f", "lavfi", "-i", "sine=f=440:d=3"]
AUDIO = ["-f", "lavfi", "-i", "sine=f=440:d=3"]

# name -> (ffmpeg arguments after the inputs, playable in Chromium)
KINDS: dict[str, tuple[list[str], list[str], bool]] = {
    "h264_aac.mp4": (VIDEO, ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac"], True),
    # libx264 keeps testsrc's RGB as 4:4:4 unless told: High 4:4:4, which hardware decoders refuse.
    "h264_444.mp4": (VIDEO, ["-c:v", "libx264", "-c:a", "aac"], False),
    "vp8_vorbis.webm": (VIDEO, ["-c:v", "libvpx", "-c:a", "libvorbis"], True),
    "mpeg4_mp3.avi": (
        ["-f", "lavfi", "-i", "testsrc=s=161x121:r=10:d=3", *AUDIO], ["-c:v", "mpeg4", "-c:a", "libmp3lame"], False,
    ),
    "mpeg2_mp2.vob": (
        ["-f", "lavfi", "-i", "testsrc=s=1920x1080:r=25:d=3", *AUDIO],
        ["-c:v", "mpeg2video", "-c:a", "mp2", "-f", "vob"], False,
    ),
    "tone.mp2": (AUDIO, ["-c:a", "mp2"], False),
    "tone.wav": (AUDIO, ["-c:a", "pcm_s16le"], True),
    "tone.mp3": (AUDIO, ["-c:a", "libmp3lame"], True),
    "tone.aiff": (AUDIO, [], False),
}


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ProbeResult]:
    """Each kind of file, made once and probed as ingestion would (the codec names the catalog holds)."""
    root = tmp_path_factory.mktemp("playback")
    made = {}
    for name, (inputs, codecs, _) in KINDS.items():
        run_ffmpeg(*inputs, *codecs, "-t", "3", str(root / name))
        made[name] = probe(root / name)
    return made


@pytest.mark.parametrize("name", sorted(KINDS))
def test_playable_flags(media: dict[str, ProbeResult], name: str) -> None:
    assert browser_playable(media[name]) is KINDS[name][2], (name, media[name].format_name, media[name].video_codec)


def test_mime_types(media: dict[str, ProbeResult]) -> None:
    assert mime_type(media["h264_aac.mp4"]) == "video/mp4"
    assert mime_type(media["vp8_vorbis.webm"]) == "video/webm"
    assert mime_type(media["mpeg4_mp3.avi"]) == "video/x-msvideo"
    assert mime_type(media["mpeg2_mp2.vob"]) == "video/mpeg"
    assert mime_type(media["tone.wav"]) == "audio/wav"
    assert mime_type(media["tone.mp3"]) == "audio/mpeg"
    assert mime_type(media["tone.mp2"]) == "audio/mpeg"
    assert clip_media_type(True) == "video/mp4" and clip_media_type(False) == "audio/mp4"


def test_catalog_rows_and_odd_inputs() -> None:
    class Row:  # what store.catalog.Media holds: a str path, decoder names, maybe no streams
        def __init__(self, fmt: str | None, v: str | None, a: str | None, streams: list | None = None) -> None:
            self.path, self.format_name, self.video_codec, self.audio_codec = "/x/y.m4a", fmt, v, a
            self.has_video, self.streams = v is not None, streams

    assert browser_playable(Row("mov,mp4,m4a,3gp,3g2,mj2", None, "aac"))
    assert mime_type(Row("mov,mp4,m4a,3gp,3g2,mj2", None, "aac")) == "audio/mp4"
    assert browser_playable(Row("matroska,webm", "libvpx-vp9", "libopus"))
    assert not browser_playable(Row("matroska,webm", "h264", "aac"))  # MKV with H.264: not promised
    assert not browser_playable(Row("mov,mp4,m4a,3gp,3g2,mj2", "hevc", "aac"))
    assert not browser_playable(Row("mov,mp4,m4a,3gp,3g2,mj2", "h264", "ac3"))
    assert not browser_playable(Row("mov,mp4,m4a,3gp,3g2,mj2", None, "amrnb"))  # 3GP voice memo
    assert not browser_playable(Row("mpegts", "h264", "aac"))
    assert not browser_playable(Row("asf", "wmv2", "wmav2"))
    assert not browser_playable(Row("ogg", "theora", "vorbis"))
    assert not browser_playable(Row(None, None, None))
    assert mime_type(Row(None, None, None)) == "audio/mp4"  # from the file name
    pix = [{"type": "video", "attached_pic": False, "pix_fmt": "yuv420p10le"}]
    assert not browser_playable(Row("mov,mp4,m4a,3gp,3g2,mj2", "h264", "aac", pix))  # High 10
    assert browser_playable(Row("matroska,webm", "vp9", "opus", pix))


# -- byte ranges ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def blob(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ranges") / "blob.mp4"
    path.write_bytes(bytes(range(256)) * 1000)  # 256000 bytes: several 64 KiB chunks
    return path


@pytest.fixture(scope="module")
def client(blob: Path) -> TestClient:
    def serve(request: Request) -> Response:
        return file_response(blob, request.headers.get("range"), "video/mp4")

    return TestClient(Starlette(routes=[Route("/f", serve, methods=["GET", "HEAD"])]))


def test_whole_file(client: TestClient, blob: Path) -> None:
    r = client.get("/f")
    assert r.status_code == 200 and r.content == blob.read_bytes()
    assert r.headers["accept-ranges"] == "bytes" and r.headers["content-type"] == "video/mp4"
    assert r.headers["content-length"] == str(blob.stat().st_size)
    assert r.headers["cache-control"].startswith("private") and r.headers["etag"] and r.headers["last-modified"]
    again = client.get("/f", headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304 and again.content == b""


@pytest.mark.parametrize(
    ("header", "first", "last"),
    [
        ("bytes=0-0", 0, 0),
        ("bytes=100-199", 100, 199),
        ("bytes=70000-200000", 70000, 200000),  # spans chunk boundaries
        ("bytes=250000-999999", 250000, 255999),  # the end clipped to the file
        ("bytes=100-", 100, 255999),  # open
        ("bytes=-500", 255500, 255999),  # suffix
        ("bytes=-999999", 0, 255999),  # a suffix longer than the file
        ("BYTES = 5-9", 5, 9),
    ],
)
def test_ranges(client: TestClient, blob: Path, header: str, first: int, last: int) -> None:
    r = client.get("/f", headers={"Range": header})
    assert r.status_code == 206
    assert r.content == blob.read_bytes()[first : last + 1]
    assert r.headers["content-range"] == f"bytes {first}-{last}/256000"
    assert r.headers["content-length"] == str(last - first + 1)
    assert r.headers["accept-ranges"] == "bytes" and r.headers["content-type"] == "video/mp4"


@pytest.mark.parametrize("header", ["bytes=256000-", "bytes=300000-300010", "bytes=-0"])
def test_unsatisfiable_range(client: TestClient, header: str) -> None:
    r = client.get("/f", headers={"Range": header})
    assert r.status_code == 416
    assert r.headers["content-range"] == "bytes */256000"
    assert set(r.json()) == {"error"}


@pytest.mark.parametrize("header", ["bytes=0-9,20-29", "bytes=9-0", "items=0-9", "bytes=abc", "bytes=-", "garbage"])
def test_ranges_not_served_get_the_whole_file(client: TestClient, blob: Path, header: str) -> None:
    r = client.get("/f", headers={"Range": header})
    assert r.status_code == 200 and r.content == blob.read_bytes()


def test_head_and_if_range(client: TestClient, blob: Path) -> None:
    head = client.head("/f", headers={"Range": "bytes=10-19"})
    assert head.status_code == 206 and head.headers["content-length"] == "10" and head.content == b""
    etag = head.headers["etag"]
    assert client.get("/f", headers={"Range": "bytes=10-19", "If-Range": etag}).status_code == 206
    assert client.get("/f", headers={"Range": "bytes=10-19", "If-Range": '"stale"'}).status_code == 200


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        file_response(tmp_path / "gone.mp4", None, "video/mp4")
    with pytest.raises(FileNotFoundError):
        file_response(tmp_path, None, "video/mp4")


# -- moment clips -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "size"), [("mpeg4_mp3.avi", (160, 120)), ("mpeg2_mp2.vob", (1280, 720)), ("tone.mp2", None)]
)
def test_moment_clip_plays_in_a_browser(
    media: dict[str, ProbeResult], tmp_path: Path, name: str, size: tuple[int, int] | None
) -> None:
    src = media[name]
    clip = moment_clip(src.path, 0.5, 2.5, tmp_path, has_video=src.has_video, ffmpeg="ffmpeg")
    out = probe(clip)
    assert out.format_name.startswith("mov,mp4") and out.audio_codec == "aac"
    assert abs(out.duration - 2.0) < 0.25, out.duration
    if size is None:
        assert not out.has_video
    else:
        assert out.video_codec == "h264" and (out.width, out.height) == size  # odd 161x121 made even
        assert out.streams[out.video_stream_index or 0]["pix_fmt"] == "yuv420p"
    assert browser_playable(out)
    assert clip.read_bytes()[4:8] == b"ftyp" and clip.read_bytes().find(b"moov") < clip.read_bytes().find(b"mdat")
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".lock", ".mp4"]  # no temporaries left


def test_moment_clip_is_cached_and_made_once(
    media: dict[str, ProbeResult], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = media["mpeg4_mp3.avi"].path
    runs: list[list[str]] = []
    real_run = subprocess.run

    def counting(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[bytes]:
        runs.append(cmd)
        return real_run(cmd, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(playback.subprocess, "run", counting)
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(
            moment_clip(src, 1.0, 2.0, tmp_path, has_video=True, ffmpeg="ffmpeg")))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and len(set(results)) == 1 and len(runs) == 1
    # Within 0.1 s it is the same clip; the cached one is returned without ffmpeg.
    assert moment_clip(src, 1.04, 1.96, tmp_path, has_video=True, ffmpeg="ffmpeg") == results[0]
    assert len(runs) == 1
    other = moment_clip(src, 1.0, 2.2, tmp_path, has_video=True, ffmpeg="ffmpeg")
    assert other != results[0] and len(runs) == 2


@pytest.mark.parametrize(
    ("start", "end"),
    [(-1.0, 2.0), (2.0, 2.0), (2.0, 1.0), (float("nan"), 1.0), (0.0, float("inf")), ("a", 1.0)],
)
def test_moment_clip_bad_window(media: dict[str, ProbeResult], tmp_path: Path, start: float, end: float) -> None:
    with pytest.raises(ValueError) as err:
        moment_clip(media["tone.mp2"].path, start, end, tmp_path, has_video=False, ffmpeg="ffmpeg")
    assert "\n" not in str(err.value)
    assert not list(tmp_path.iterdir())


def test_moment_clip_window_capped(media: dict[str, ProbeResult], tmp_path: Path) -> None:
    src = media["tone.mp2"]
    with pytest.raises(ValueError, match="past the end"):
        moment_clip(src.path, 5.0, 6.0, tmp_path, has_video=False, ffmpeg="ffmpeg", duration=src.duration)
    with pytest.raises(ValueError, match="nothing to play"):  # no duration given: ffmpeg finds nothing there
        moment_clip(src.path, 50.0, 60.0, tmp_path, has_video=False, ffmpeg="ffmpeg")
    clip = moment_clip(src.path, 2.0, 5000.0, tmp_path, has_video=False, ffmpeg="ffmpeg", duration=src.duration)
    assert abs(probe(clip).duration - 1.0) < 0.2
    assert playback._clip_window(10.0, 5000.0, None) == (10.0, 610.0)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_moment_clip_failures_leave_nothing(media: dict[str, ProbeResult], tmp_path: Path) -> None:
    junk = tmp_path / "junk.avi"
    junk.write_bytes(b"not a video at all\n" * 100)
    cache = tmp_path / "cache"
    with pytest.raises(RuntimeError) as err:
        moment_clip(junk, 0.0, 1.0, cache, has_video=True, ffmpeg="ffmpeg")
    assert "\n" not in str(err.value) and "junk.avi" in str(err.value)
    with pytest.raises(RuntimeError, match="longer than"):
        moment_clip(media["mpeg2_mp2.vob"].path, 0.0, 3.0, cache, has_video=True, ffmpeg="ffmpeg", timeout=0.01)
    with pytest.raises(RuntimeError, match="could not run ffmpeg"):
        moment_clip(junk, 0.0, 1.0, cache, has_video=True, ffmpeg=str(tmp_path / "no-ffmpeg"))
    with pytest.raises(FileNotFoundError):
        moment_clip(tmp_path / "gone.avi", 0.0, 1.0, cache, has_video=True, ffmpeg="ffmpeg")
    assert not [p for p in cache.iterdir() if p.suffix != ".lock"]
