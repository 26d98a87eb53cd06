"""VideoDecoder: frame sampling, sizes and times, scene cuts, cleanup and errors, on generated and real media."""

from __future__ import annotations

import shutil
import struct
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import indexer.decode as decode_module
from indexer.clips import make_clips
from indexer.decode import Frame, VideoDecoder, output_size, parse_cuts
from indexer.media import ffmpeg_exe
from indexer.probe import probe

REAL_MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"
# Where ffmpeg's scdet finds the hard cuts of bikes.mp4 (640x272, 25 fps); each one was checked by eye on the
# frames either side (a bicycle seen from above -> a man by a car at 1.20 s, -> a taxi sign at 3.04 s, -> a cyclist
# behind a car at 5.48 s, -> a street behind railings at 7.48 s, -> a parked bicycle at 9.68 s).
BIKES_CUTS = [1.20, 3.04, 5.48, 7.48, 9.68]


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


def _binaries() -> list[str]:
    """The ffmpeg binaries ffmpeg_exe() may pick: the system one and imageio-ffmpeg's (different versions)."""
    found: list[str] = []
    system = shutil.which("ffmpeg")
    if system:
        found.append(system)
    try:
        import imageio_ffmpeg

        bundled = imageio_ffmpeg.get_ffmpeg_exe()
        if bundled not in found:
            found.append(bundled)
    except Exception:  # noqa: BLE001 - simply not available here
        pass
    return found


@pytest.fixture(params=_binaries(), ids=lambda p: Path(p).name)
def binary(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(decode_module, "ffmpeg_exe", lambda: request.param)
    return str(request.param)


@pytest.fixture(scope="module")
def gen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("decode-media")


@pytest.fixture(scope="module")
def three_shots(gen: Path) -> Path:
    """6 s, 320x240 at 25 fps: red, blue, testsrc (2 s each; hard cuts at 2 and 4 s), with a sine track."""
    out = gen / "three_shots.mp4"
    _ffmpeg(
        "-f", "lavfi", "-i", "color=c=red:s=320x240:r=25:d=2",
        "-f", "lavfi", "-i", "color=c=blue:s=320x240:r=25:d=2",
        "-f", "lavfi", "-i", "testsrc=s=320x240:r=25:d=2",
        "-f", "lavfi", "-i", "sine=f=440:d=6",
        "-filter_complex", "[0:v][1:v][2:v]concat=n=3:v=1:a=0[v]",
        "-map", "[v]", "-map", "3:a", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
        "-c:a", "aac", "-t", "6", str(out),
    )  # fmt: skip
    return out


@pytest.fixture(scope="module")
def counter(gen: Path) -> Path:
    """3 s at 10 fps, losslessly coded; frame n is a flat grey of level 16 + 7n, so every frame is identifiable."""
    out = gen / "counter.mp4"
    _ffmpeg(
        "-f", "lavfi", "-i", "color=c=black:s=64x48:r=10:d=3,format=gray,geq=lum='16+7*N'",
        "-c:v", "libx264", "-qp", "0", "-preset", "ultrafast", "-pix_fmt", "yuv444p", str(out),
    )  # fmt: skip
    return out


def _colour(frame: Frame) -> np.ndarray:
    return frame.rgb.reshape(-1, 3).mean(axis=0)


def test_three_shots(three_shots: Path, binary: str) -> None:
    with VideoDecoder(three_shots, fps=1.0, short_side=224) as d:
        assert (d.width, d.height) == (298, 224)  # 320x240 is 4:3: 298.7 rounded to even
        frames = list(d)
    assert d.frames_total_estimate == 6 and len(frames) == 6
    assert [f.index for f in frames] == list(range(6))
    assert [f.time for f in frames] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    for f in frames:
        assert f.rgb.shape == (224, 298, 3) and f.rgb.dtype == np.uint8
        assert f.rgb.flags.writeable and f.rgb.flags.c_contiguous  # torch.from_numpy takes it as is
    red, blue = np.array([255, 0, 0]), np.array([0, 0, 255])
    assert all(np.abs(_colour(f) - red).max() < 12 for f in frames[:2])
    assert all(np.abs(_colour(f) - blue).max() < 12 for f in frames[2:4])
    assert all(f.rgb.std() > 40 for f in frames[4:])  # testsrc: a busy pattern, not a flat colour
    assert len(d.cuts) == 2
    assert d.cuts[0] == pytest.approx(2.0, abs=0.1) and d.cuts[1] == pytest.approx(4.0, abs=0.1)
    clips = make_clips(6.0, d.cuts, 1.5)
    edges = {c.start for c in clips} | {c.end for c in clips}
    assert all(cut in edges for cut in d.cuts)
    assert [(c.start, c.end, c.shot) for c in clips] == [
        (0.0, d.cuts[0], 0), (d.cuts[0], d.cuts[1], 1), (d.cuts[1], 6.0, 2),
    ]  # fmt: skip


@pytest.mark.parametrize("fps", [3.0, 2.5, 1.0, 0.7])
def test_frame_k_is_the_source_frame_on_screen_at_k_over_fps(counter: Path, fps: float, binary: str) -> None:
    """The documented time contract: frame k shows the last source frame whose timestamp is <= k / fps."""
    reference = [f.rgb.astype(np.int16) for f in VideoDecoder(counter, fps=10.0, short_side=48)]
    assert len(reference) == 30
    frames = list(VideoDecoder(counter, fps=fps, short_side=48))
    assert len(frames) == int(np.ceil(3.0 * fps - 1e-9))
    for f in frames:
        shown = int(np.argmin([np.abs(f.rgb.astype(np.int16) - r).mean() for r in reference]))
        assert f.time == pytest.approx(f.index / fps)
        assert shown == int(np.floor(f.time * 10 + 1e-6)), f"frame {f.index} at {f.time:.3f} s shows source {shown}"


def test_late_video_start_is_padded_from_zero(gen: Path, counter: Path) -> None:
    """A video stream that starts 0.5 s after the audio: times stay on the file's clock (0 = container start)."""
    out = gen / "late.mp4"
    _ffmpeg(
        "-itsoffset", "0.5", "-i", str(counter), "-f", "lavfi", "-i", "sine=d=3.5",
        "-map", "0:v", "-map", "1:a", "-c:v", "copy", "-c:a", "aac", str(out),
    )  # fmt: skip
    reference = [f.rgb.astype(np.int16) for f in VideoDecoder(counter, fps=10.0, short_side=48)]
    frames = list(VideoDecoder(out, fps=2.0, short_side=48))
    shown = [int(np.argmin([np.abs(f.rgb.astype(np.int16) - r).mean() for r in reference])) for f in frames]
    # t = 0 and 0.5 show the first frame; after that source frame n is on screen from 0.5 + n / 10 s.
    assert shown[:4] == [0, 0, 5, 10]
    assert [f.time for f in frames[:4]] == [0.0, 0.5, 1.0, 1.5]


def test_odd_frame_size_gives_even_output_with_aspect_kept(gen: Path) -> None:
    out = gen / "odd.mp4"
    _ffmpeg("-f", "lavfi", "-i", "testsrc=s=175x97:r=10:d=1", "-c:v", "libx264", "-pix_fmt", "yuv444p", str(out))
    frames = list(VideoDecoder(out, short_side=224))
    h, w, _ = frames[0].rgb.shape
    assert (w, h) == (404, 224) and w % 2 == 0
    assert w / h == pytest.approx(175 / 97, rel=0.01)


def test_portrait_output_size() -> None:
    assert output_size(1080, 1920, 224) == (224, 398)
    assert output_size(1280, 720, 224) == (398, 224)
    assert output_size(176, 144, 224) == (274, 224)
    with pytest.raises(ValueError, match="positive frame size"):
        output_size(0, 10, 224)


def test_rotated_video_is_decoded_upright(gen: Path) -> None:
    """Rotation metadata: ffmpeg turns the picture, and the frame size follows (no stretching, no pipe desync)."""
    plain = gen / "halves.mp4"
    _ffmpeg(
        "-f", "lavfi", "-i", "color=c=black:s=320x240:r=10:d=1,drawbox=x=0:y=0:w=160:h=240:c=white:t=fill",
        "-c:v", "libx264", "-pix_fmt", "yuv420p", str(plain),
    )  # fmt: skip
    rotated = gen / "halves_rotated.mp4"
    _ffmpeg("-i", str(plain), "-c", "copy", "-metadata:s:v:0", "rotate=90", str(rotated))
    upright = list(VideoDecoder(plain, short_side=224))[0].rgb.mean(axis=2)
    assert upright.shape == (224, 298)
    assert upright[:, :140].mean() > 200 and upright[:, -140:].mean() < 50  # white left half, black right half
    turned = list(VideoDecoder(rotated, short_side=224))[0].rgb.mean(axis=2)
    assert turned.shape == (298, 224)
    top, bottom = turned[:140].mean(), turned[-140:].mean()
    assert {top > 200, bottom > 200} == {True, False} and min(top, bottom) < 50  # the halves are now rows


def test_video_without_audio(gen: Path) -> None:
    out = gen / "silent.mp4"
    _ffmpeg("-f", "lavfi", "-i", "testsrc2=s=160x120:r=10:d=3", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(out))
    frames = list(VideoDecoder(out, fps=2.0))
    assert len(frames) == 6 and frames[0].rgb.shape == (224, 298, 3)


def test_audio_only_is_rejected(gen: Path) -> None:
    wav = gen / "tone.wav"
    _ffmpeg("-f", "lavfi", "-i", "sine=d=2", str(wav))
    with pytest.raises(ValueError, match="no video stream"):
        VideoDecoder(wav)


def test_headers_but_no_frames(gen: Path, tmp_path: Path) -> None:
    """A faststart mp4 cut off just after its moov atom: probe succeeds, the decoder finds no frames."""
    full = gen / "faststart.mp4"
    _ffmpeg("-f", "lavfi", "-i", "testsrc=s=320x240:r=25:d=3", "-c:v", "libx264", "-movflags", "+faststart", str(full))
    data = full.read_bytes()
    offset = 0
    while struct.unpack(">I4s", data[offset : offset + 8])[1] != b"mdat":
        offset += struct.unpack(">I", data[offset : offset + 4])[0]
    broken = tmp_path / "moov_only.mp4"
    broken.write_bytes(data[: offset + 24])
    info = probe(broken)
    assert info.has_video and info.duration > 2
    with pytest.raises(ValueError, match=r"no decodable video frames in .*moov_only\.mp4: \S") as caught:
        _within(30, lambda: list(VideoDecoder(broken, info=info)))
    assert "\n" not in str(caught.value)


def test_truncated_file_keeps_what_decodes(gen: Path, tmp_path: Path) -> None:
    full = gen / "faststart_long.mp4"
    _ffmpeg("-f", "lavfi", "-i", "testsrc=s=320x240:r=25:d=4", "-c:v", "libx264", "-movflags", "+faststart", str(full))
    half = tmp_path / "half.mp4"
    half.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    frames = _within(30, lambda: list(VideoDecoder(half)))
    assert 1 <= len(frames) < 4


@pytest.mark.parametrize("kind", ["missing", "directory", "empty", "text", "random"])
def test_bad_input_fails_at_construction(kind: str, tmp_path: Path) -> None:
    path = {"missing": tmp_path / "x.mp4", "directory": tmp_path, "empty": tmp_path / "e.mp4",
            "text": tmp_path / "t.mp4", "random": tmp_path / "r.mp4"}[kind]  # fmt: skip
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("not a video\n" * 100)
    elif kind == "random":
        path.write_bytes(np.random.default_rng(1).integers(0, 256, 200_000, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match=path.name):
        _within(20, lambda: VideoDecoder(path))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"fps": 0}, "fps > 0"), ({"fps": float("nan")}, "fps > 0"), ({"scene_threshold": 101}, "scene_threshold"),
     ({"threads": -1}, "threads"), ({"short_side": 1}, "short_side")],
)  # fmt: skip
def test_bad_arguments(three_shots: Path, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        VideoDecoder(three_shots, **kwargs)


def test_early_break_kills_ffmpeg_and_cleans_up(
    three_shots: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with VideoDecoder(three_shots, fps=5.0) as d:
        for frame in d:
            proc = d._proc
            assert proc is not None and proc.poll() is None
            break
        assert list(tmp_path.glob("vidx-decode-*"))  # still iterating: its temp dir exists
    assert proc.returncode is not None  # killed and reaped by __exit__
    assert not list(tmp_path.glob("vidx-decode-*"))
    assert d.cuts == []  # incomplete runs report no cuts rather than some of them


def test_exception_in_consumer_kills_ffmpeg(three_shots: Path) -> None:
    procs: list[subprocess.Popen[bytes]] = []
    with pytest.raises(RuntimeError, match="boom"):
        with VideoDecoder(three_shots, fps=5.0) as d:
            for _ in d:
                procs.append(d._proc)  # type: ignore[arg-type]
                raise RuntimeError("boom")
    assert procs and procs[0].returncode is not None


def test_iterating_twice_starts_over(three_shots: Path) -> None:
    d = VideoDecoder(three_shots)
    first = [f.time for f in d]
    second = [f.time for f in d]
    assert first == second == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert len(d.cuts) == 2


def test_awkward_paths(three_shots: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Colons, commas, quotes and brackets in the input path and the temp dir must not break the filter graph."""
    weird = tmp_path / "a:b, c'd [x];e"
    weird.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(weird))
    src = weird / "clip:1, 'take' [2].mp4"
    shutil.copy(three_shots, src)
    d = VideoDecoder(src)
    assert len(list(d)) == 6 and len(d.cuts) == 2


def test_no_cut_detection(three_shots: Path) -> None:
    d = VideoDecoder(three_shots, detect_cuts=False)
    assert "scdet" not in d.filter_graph()
    assert len(list(d)) == 6 and d.cuts == []


def test_skip_nonref_still_finds_cuts(three_shots: Path) -> None:
    d = VideoDecoder(three_shots, skip_nonref=True)
    assert len(list(d)) == 6
    assert [round(c) for c in d.cuts] == [2, 4]


def test_parse_cuts() -> None:
    text = (
        "frame:50   pts:25600   pts_time:2\nlavfi.scd.time=2\n"
        "frame:100  pts:51200   pts_time:4.04\nlavfi.scd.time=4.04\nlavfi.scd.score=12.5\n"
        "lavfi.scd.time=2\nlavfi.scd.time=garbage\n"
    )
    assert parse_cuts(text) == [2.0, 4.04]
    assert parse_cuts("") == []


@pytest.fixture(scope="module")
def real_media() -> Path:
    if not REAL_MEDIA.is_dir():
        pytest.skip(f"real media folder not found at {REAL_MEDIA}")
    return REAL_MEDIA


@pytest.mark.integration
def test_bikes_cuts(real_media: Path) -> None:
    d = VideoDecoder(real_media / "bikes.mp4")
    frames = list(d)
    assert len(frames) == 10 and frames[0].rgb.shape == (224, 528, 3)  # 640x272
    assert len(d.cuts) == len(BIKES_CUTS)
    for found, expected in zip(d.cuts, BIKES_CUTS):
        assert found == pytest.approx(expected, abs=0.1)
    clips = make_clips(d.info.duration, d.cuts, 1.5)
    starts = [c.start for c in clips]
    # The last cut leaves only 0.32 s (no sampled frame of its own at 1 fps): make_clips folds that sliver into
    # the previous shot; every other cut starts a clip.
    for cut in BIKES_CUTS[:-1]:
        assert min(abs(s - cut) for s in starts) < 0.1
    assert min(abs(s - BIKES_CUTS[-1]) for s in starts) > 0.3
    assert clips[-1].end == d.info.duration and len({c.shot for c in clips}) == len(BIKES_CUTS)


@pytest.mark.integration
def test_carphone_aspect(real_media: Path) -> None:
    """176x144 stored with 128:117 pixels: shown at 1408:1053 (about 4:3), so 300x224, not the naive 274x224."""
    d = VideoDecoder(real_media / "carphone.mp4")
    frames = list(d)
    assert len(frames) == 5 and d.frames_total_estimate == 5
    h, w, _ = frames[0].rgb.shape
    assert (w, h) == (300, 224)
    assert w / h == pytest.approx(1408 / 1053, rel=0.01)


@pytest.mark.integration
def test_deer_video_starts_after_audio(real_media: Path) -> None:
    """deer.mp4's video starts 83 ms after its audio: frame 0 is the first picture, times stay on k / fps."""
    frames = list(VideoDecoder(real_media / "deer.mp4", fps=2.0))
    assert [f.time for f in frames] == [0.0, 0.5, 1.0]
    assert frames[0].rgb.shape == (224, 398, 3)


@pytest.mark.integration
@pytest.mark.slow
def test_big_buck_bunny_full_decode(real_media: Path) -> None:
    """596 s of 720p H.264: one frame a second at 398x224 and its ~120 hard cuts, streamed, in one pass."""
    d = VideoDecoder(real_media / "big_buck_bunny_full.mp4", fps=1.0)
    count = 0
    for f in d:
        assert f.index == count and f.rgb.shape == (224, 398, 3)
        count += 1
    assert count == d.frames_total_estimate == 597
    assert 100 <= len(d.cuts) <= 150  # 124 with ffmpeg 5.1's scdet at threshold 10
    assert d.cuts == sorted(d.cuts) and 0 < d.cuts[0] and d.cuts[-1] < d.info.duration
