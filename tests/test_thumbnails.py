"""Thumbnails: nearest-to-middle frame per clip, small JPEGs, and the streaming collector on decoded frames."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from indexer.clips import Clip, make_clips
from indexer.decode import Frame, VideoDecoder
from indexer.media import ffmpeg_exe
from indexer.thumbnails import ThumbnailCollector, encode_jpeg, pick_keyframes


def _clip(start: float, end: float, index: int = 0) -> Clip:
    return Clip(index=index, start=start, end=end, shot=0)


def _decode_jpeg(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "JPEG"
        return np.asarray(im.convert("RGB"))


def test_pick_nearest_to_middle() -> None:
    times = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    clips = [_clip(0.0, 1.5), _clip(1.5, 3.0), _clip(3.0, 4.5), _clip(4.5, 9.0), _clip(0.0, 0.2)]
    # middles 0.75 -> 1.0, 2.25 -> 2.0, 3.75 -> 4.0, 6.75 -> last frame, 0.1 -> 0.0
    assert pick_keyframes(times, clips) == [1, 2, 4, 4, 0]


def test_pick_tie_goes_to_earlier_frame() -> None:
    assert pick_keyframes(np.array([0.0, 1.0, 2.0]), [_clip(0.0, 1.0), _clip(1.0, 2.0)]) == [0, 1]


def test_pick_before_first_frame_and_single_frame() -> None:
    assert pick_keyframes(np.array([0.5]), [_clip(0.0, 0.2), _clip(5.0, 6.0)]) == [0, 0]
    assert pick_keyframes(np.array([2.0, 3.0]), [_clip(0.0, 1.0)]) == [0]


def test_pick_rejects_bad_times() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        pick_keyframes(np.array([]), [_clip(0, 1)])
    with pytest.raises(ValueError, match="increasing"):
        pick_keyframes(np.array([1.0, 0.0]), [_clip(0, 1)])


def test_encode_jpeg_shrinks_keeping_aspect() -> None:
    rgb = np.zeros((224, 398, 3), dtype=np.uint8)
    rgb[:, :199] = (255, 0, 0)  # red left half, black right half
    data = encode_jpeg(rgb, max_width=192, quality=80)
    assert data[:2] == b"\xff\xd8" and len(data) < 8000
    out = _decode_jpeg(data)
    assert out.shape == (108, 192, 3)  # 224 * 192 / 398 = 108
    assert out[:, :90].mean(axis=(0, 1)) == pytest.approx([255, 0, 0], abs=12)
    assert out[:, 102:].max() < 20


def test_encode_jpeg_never_enlarges() -> None:
    out = _decode_jpeg(encode_jpeg(np.full((50, 80, 3), 128, dtype=np.uint8), max_width=192))
    assert out.shape == (50, 80, 3)


def test_encode_jpeg_accepts_views() -> None:
    big = np.random.default_rng(0).integers(0, 256, (100, 300, 3), dtype=np.uint8)
    out = _decode_jpeg(encode_jpeg(big[:, ::2], max_width=100))  # a non-contiguous view
    assert out.shape == (67, 100, 3)


@pytest.mark.parametrize(
    ("rgb", "kwargs", "message"),
    [
        (np.zeros((10, 10), dtype=np.uint8), {}, "uint8 RGB"),
        (np.zeros((10, 10, 4), dtype=np.uint8), {}, "uint8 RGB"),
        (np.zeros((10, 10, 3), dtype=np.float32), {}, "uint8 RGB"),
        (np.zeros((10, 10, 3), dtype=np.uint8), {"max_width": 0}, "max_width"),
        (np.zeros((10, 10, 3), dtype=np.uint8), {"quality": 0}, "quality"),
    ],
)
def test_encode_jpeg_rejects(rgb: np.ndarray, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        encode_jpeg(rgb, **kwargs)


def test_collector_rules() -> None:
    collector = ThumbnailCollector(max_width=64)
    assert collector.for_clips([]) == []
    with pytest.raises(ValueError, match="no frames collected"):
        collector.for_clips([_clip(0, 1)])
    collector.add(Frame(index=0, time=1.0, rgb=np.zeros((32, 48, 3), dtype=np.uint8)))
    with pytest.raises(ValueError, match="time order"):
        collector.add(Frame(index=1, time=0.5, rgb=np.zeros((32, 48, 3), dtype=np.uint8)))
    assert len(collector) == 1


def test_collector_on_decoded_shots(tmp_path: Path) -> None:
    """Red, blue and green shots of 3 s: each clip's thumbnail shows its own shot's colour."""
    video = tmp_path / "rgb.mp4"
    subprocess.run(
        [
            ffmpeg_exe(), "-nostdin", "-v", "error", "-y",
            "-f", "lavfi", "-i", "color=c=red:s=320x180:r=25:d=3",
            "-f", "lavfi", "-i", "color=c=blue:s=320x180:r=25:d=3",
            "-f", "lavfi", "-i", "color=c=lime:s=320x180:r=25:d=3",
            "-filter_complex", "[0:v][1:v][2:v]concat=n=3:v=1:a=0[v]", "-map", "[v]",
            "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(video),
        ],
        check=True,
        timeout=60,
    )  # fmt: skip
    collector = ThumbnailCollector(max_width=96)
    with VideoDecoder(video, fps=2.0) as decoder:
        for frame in decoder:
            collector.add(frame)
        cuts = decoder.cuts
    assert len(collector) == 18
    clips = make_clips(9.0, cuts, 1.5)
    assert len(clips) == 6 and [c.shot for c in clips] == [0, 0, 1, 1, 2, 2]
    thumbs = collector.for_clips(clips)
    assert len(thumbs) == len(clips)
    expected = {0: (255, 0, 0), 1: (0, 0, 255), 2: (0, 255, 0)}
    for clip, data in zip(clips, thumbs):
        img = _decode_jpeg(data)
        assert img.shape == (54, 96, 3)
        assert img.reshape(-1, 3).mean(axis=0) == pytest.approx(expected[clip.shot], abs=15)
