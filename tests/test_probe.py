"""probe(): stream facts of generated and real media, and a one-line ValueError (never a hang) for bad input."""

from __future__ import annotations

import json
import os
import random
import struct
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from indexer.media import ffmpeg_exe
from indexer.probe import ProbeResult, probe

REAL_MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"


def _ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_exe(), "-nostdin", "-v", "error", "-y", *args], check=True, timeout=120)


def _within(seconds: float, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a daemon thread; fail the test if it has not finished in ``seconds`` (a hang)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed back to the test thread
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still running after {seconds} s"
    if "error" in box:
        raise box["error"]
    return box["value"]


@pytest.fixture(scope="module")
def gen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("probe-media")


@pytest.fixture(scope="module")
def three_shots(gen: Path) -> Path:
    """6 s, 320x240 at 25 fps: red, blue, testsrc (2 s each), with a 440 Hz sine on a mono AAC track."""
    out = gen / "three_shots.mp4"
    _ffmpeg(
        "-f", "lavfi", "-i", "color=c=red:s=320x240:r=25:d=2",
        "-f", "lavfi", "-i", "color=c=blue:s=320x240:r=25:d=2",
        "-f", "lavfi", "-i", "testsrc=s=320x240:r=25:d=2",
        "-f", "lavfi", "-i", "sine=f=440:d=6:sample_rate=44100",
        "-filter_complex", "[0:v][1:v][2:v]concat=n=3:v=1:a=0[v]",
        "-map", "[v]", "-map", "3:a", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
        "-c:a", "aac", "-t", "6", str(out),
    )  # fmt: skip
    return out


def test_video_with_audio(three_shots: Path) -> None:
    r = probe(three_shots)
    assert r.path == three_shots and r.size_bytes == three_shots.stat().st_size
    assert r.duration == pytest.approx(6.0, abs=0.1)
    assert "mp4" in r.format_name
    assert r.has_video and r.has_audio
    assert (r.video_codec, r.audio_codec) == ("h264", "aac")
    assert (r.width, r.height) == (320, 240) and r.display_size == (320, 240)
    assert r.fps == pytest.approx(25.0)
    assert (r.sample_rate, r.channels) == (44100, 1)
    assert [s["type"] for s in r.streams] == ["video", "audio"]
    assert (r.video_stream_index, r.audio_stream_index) == (0, 1)
    d = json.loads(json.dumps(r.to_dict()))  # the catalog stores it as JSON
    assert d["path"] == str(three_shots) and d["duration"] == r.duration and d["streams"][0]["codec"] == "h264"


def test_audio_only_wav(gen: Path) -> None:
    wav = gen / "tone.wav"
    _ffmpeg("-f", "lavfi", "-i", "sine=f=300:d=3:sample_rate=16000", str(wav))
    r = probe(wav)
    assert r.has_audio and not r.has_video
    assert r.format_name == "wav" and r.audio_codec == "pcm_s16le"
    assert r.duration == pytest.approx(3.0, abs=0.01)
    assert (r.sample_rate, r.channels) == (16000, 1)
    assert r.video_codec is None and r.width is None and r.height is None and r.fps is None
    assert r.display_size is None


def test_video_only(gen: Path) -> None:
    out = gen / "silent.mp4"
    _ffmpeg("-f", "lavfi", "-i", "testsrc2=s=160x120:r=10:d=3", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(out))
    r = probe(out)
    assert r.has_video and not r.has_audio
    assert r.audio_codec is None and r.sample_rate is None and r.channels is None
    assert (r.width, r.height, r.fps) == (160, 120, 10.0)
    assert r.duration == pytest.approx(3.0, abs=0.05)


def test_cover_art_is_not_video(gen: Path) -> None:
    """An mp3 with album art has a one-frame 'video' stream flagged attached_pic: still audio-only."""
    out = gen / "song.mp3"
    _ffmpeg(
        "-f", "lavfi", "-i", "sine=d=2", "-f", "lavfi", "-i", "color=c=red:s=64x64:d=1",
        "-map", "0", "-map", "1", "-c:a", "libmp3lame", "-c:v", "mjpeg", "-frames:v", "1",
        "-disposition:v", "attached_pic", str(out),
    )  # fmt: skip
    r = probe(out)
    assert any(s["type"] == "video" and s["attached_pic"] for s in r.streams)  # the art is there...
    assert r.has_audio and not r.has_video and r.video_codec is None  # ...and does not count


def test_rotation_swaps_display_size(gen: Path, three_shots: Path) -> None:
    out = gen / "rotated.mp4"
    _ffmpeg("-i", str(three_shots), "-c", "copy", "-metadata:s:v:0", "rotate=90", str(out))
    r = probe(out)
    assert (r.width, r.height) == (320, 240)
    assert r.rotation in (90, 270) and r.display_size == (240, 320)


def test_raw_stream_without_stated_duration(gen: Path) -> None:
    """An H.264 elementary stream has no container duration: the packet scan finds it."""
    out = gen / "raw.h264"
    _ffmpeg("-f", "lavfi", "-i", "testsrc=s=176x144:r=25:d=3", "-c:v", "libx264", "-f", "h264", str(out))
    r = probe(out)
    assert r.has_video and r.format_name == "h264"
    assert r.duration == pytest.approx(3.0, abs=0.1)


def _moov_only_mp4(source: Path, out: Path) -> Path:
    """A faststart mp4 cut off 16 bytes into its mdat: full headers, no frame data."""
    data = source.read_bytes()
    offset = 0
    while offset + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[offset : offset + 8])
        if kind == b"mdat":
            out.write_bytes(data[: offset + 24])
            return out
        offset += size
    raise AssertionError("no mdat atom found")


def test_headers_without_frames_probe_ok(gen: Path, tmp_path: Path) -> None:
    """Probing reads headers only; the decoder is the stage that rejects such a file (see test_decode)."""
    full = gen / "faststart.mp4"
    _ffmpeg("-f", "lavfi", "-i", "testsrc=s=320x240:r=25:d=3", "-c:v", "libx264", "-movflags", "+faststart", str(full))
    r = _within(20, lambda: probe(_moov_only_mp4(full, tmp_path / "moov_only.mp4")))
    assert r.has_video and r.duration == pytest.approx(3.0, abs=0.05)


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("missing", "no such file"),
        ("directory", "directory"),
        ("empty", "empty file"),
        ("text", "not a readable media file"),
        ("truncated", "not a readable media file"),
        ("random", "not a readable media file"),
        ("subtitles", "no audio or video stream"),
    ],
)
def test_bad_input_is_a_one_line_value_error(kind: str, message: str, tmp_path: Path, three_shots: Path) -> None:
    path = {
        "missing": tmp_path / "nope.mp4",
        "directory": tmp_path,
        "empty": tmp_path / "empty.mp4",
        "text": tmp_path / "notes.mp4",
        "truncated": tmp_path / "truncated.mp4",
        "random": tmp_path / "noise.mp4",
        "subtitles": tmp_path / "captions.srt",
    }[kind]
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not a video\n" * 50)
    elif kind == "truncated":
        path.write_bytes(three_shots.read_bytes()[:2048])  # moov is at the end: the header is unusable
    elif kind == "random":
        # Seeded: about one in a few hundred random buffers happens to parse as a subtitle stream.
        path.write_bytes(random.Random(0).randbytes(256 * 1024))
    elif kind == "subtitles":
        path.write_text("1\n00:00:01,000 --> 00:00:02,000\nhello\n\n2\n00:00:03,000 --> 00:00:04,000\nworld\n")
    with pytest.raises(ValueError, match=message) as info:
        _within(20, lambda: probe(path))
    text = str(info.value)
    assert "\n" not in text and path.name in text


@pytest.mark.parametrize(
    "header",
    [b"", b"ID3\x03\x00\x00\x00\x00\x00\x00", b"\x00\x00\x00\x18ftypisom", b"\x1aE\xdf\xa3", b"OggS\x00\x02", b"fLaC"],
    ids=["plain", "id3", "ftyp", "matroska", "ogg", "flac"],
)
def test_garbage_behind_a_media_signature_never_hangs(header: bytes, tmp_path: Path) -> None:
    """Random bytes after a real format's magic: either rejected with ValueError or probed; quickly, either way."""
    for seed in range(3):
        path = tmp_path / f"junk{seed}.bin"
        path.write_bytes(header + os.urandom(512 * 1024))
        try:
            r = _within(20, lambda: probe(path))  # noqa: B023 - called at once
        except ValueError:
            continue
        assert isinstance(r, ProbeResult) and r.duration > 0 and (r.has_audio or r.has_video)


def test_mpegts_sync_bytes_with_garbage_never_hangs(tmp_path: Path) -> None:
    """0x47 every 188 bytes makes the MPEG-TS prober bite; the payload is noise."""
    packets = bytearray()
    for _ in range(3000):
        packets += b"\x47" + os.urandom(187)
    path = tmp_path / "junk.ts"
    path.write_bytes(bytes(packets))
    try:
        _within(20, lambda: probe(path))
    except ValueError as e:
        assert path.name in str(e)


@pytest.fixture(scope="module")
def real_media() -> Path:
    if not REAL_MEDIA.is_dir():
        pytest.skip(f"real media folder not found at {REAL_MEDIA}")
    return REAL_MEDIA


@pytest.mark.integration
def test_big_buck_bunny(real_media: Path) -> None:
    r = probe(real_media / "big_buck_bunny_full.mp4")
    assert r.duration == pytest.approx(596.5, abs=0.1)
    assert (r.width, r.height, r.fps) == (1280, 720, 24.0)
    assert (r.video_codec, r.audio_codec) == ("h264", "aac")
    assert r.has_video and r.has_audio and r.rotation == 0


@pytest.mark.integration
def test_carphone_has_non_square_pixels(real_media: Path) -> None:
    r = probe(real_media / "carphone.mp4")
    assert (r.width, r.height) == (176, 144) and not r.has_audio
    assert r.fps == pytest.approx(30000 / 1001)
    # Stored with a 128:117 pixel aspect: shown 4:3-ish, 193x144.
    assert r.sample_aspect_ratio == pytest.approx(128 / 117)
    assert r.display_size == (193, 144)


@pytest.mark.integration
def test_wav_files(real_media: Path) -> None:
    r = probe(real_media / "jfk.wav")
    assert r.has_audio and not r.has_video and r.duration == pytest.approx(11.0, abs=0.01)
    assert (r.sample_rate, r.channels) == (16000, 1)
