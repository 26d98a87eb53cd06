"""make_clips(): exact coverage, no overlap, ~clip_seconds clips, and kept shot cuts as clip boundaries."""

from __future__ import annotations

import math
import random
import subprocess
from pathlib import Path

import pytest

from indexer.clips import Clip, keep_cuts, make_clips
from indexer.decode import VideoDecoder
from indexer.media import ffmpeg_exe


def _check_tiling(clips: list[Clip], duration: float) -> None:
    assert clips[0].start == 0.0 and clips[-1].end == duration
    assert [c.index for c in clips] == list(range(len(clips)))
    for a, b in zip(clips, clips[1:]):
        assert a.end == b.start  # bit-identical edges: no gap, no overlap
        assert b.shot in (a.shot, a.shot + 1)
    assert all(c.end > c.start for c in clips)


def test_audio_only_no_cuts() -> None:
    clips = make_clips(10.0, [], 1.5)
    _check_tiling(clips, 10.0)
    assert len(clips) == 7  # round(10 / 1.5) = 7 clips of 1.43 s
    assert all(c.shot == 0 for c in clips)
    assert all(c.duration == pytest.approx(10 / 7) for c in clips)


def test_short_media_is_one_clip() -> None:
    assert make_clips(0.4, [], 1.5) == [Clip(index=0, start=0.0, end=0.4, shot=0)]


def test_cuts_are_boundaries() -> None:
    clips = make_clips(6.0, [2.0, 4.0], 1.0)
    _check_tiling(clips, 6.0)
    assert [(c.start, c.end, c.shot) for c in clips] == [
        (0.0, 1.0, 0), (1.0, 2.0, 0), (2.0, 3.0, 1), (3.0, 4.0, 1), (4.0, 5.0, 2), (5.0, 6.0, 2),
    ]  # fmt: skip


def test_half_clips_round_up_not_to_even() -> None:
    """3.75 s / 1.5 s = 2.5 clips -> 3 (Python's round() would give 2)."""
    assert len(make_clips(3.75, [], 1.5)) == 3
    assert len(make_clips(2.25, [], 1.5)) == 2


@pytest.mark.parametrize(
    ("cuts", "kept"),
    [
        ([0.3], []),  # too near the start
        ([9.8], []),  # too near the end
        ([4.0, 4.4], [4.0]),  # a flash: the second cut is too near the first kept one
        ([4.0, 4.4, 4.9], [4.0, 4.9]),  # measured from the last *kept* cut
        ([0.0, 10.0, -1.0, 12.0], []),  # outside the timeline
        ([6.0, 3.0], [3.0, 6.0]),  # order does not matter
    ],
)
def test_sliver_cuts_are_ignored(cuts: list[float], kept: list[float]) -> None:
    assert keep_cuts(10.0, cuts, 0.75) == kept
    clips = make_clips(10.0, cuts, 1.5)
    _check_tiling(clips, 10.0)
    shot_starts = [c.start for c in clips if c.index == 0 or c.shot != clips[c.index - 1].shot]
    assert shot_starts == [0.0, *kept]


def test_min_shot_can_be_set() -> None:
    assert len({c.shot for c in make_clips(10.0, [0.3], 1.5, min_shot=0.2)}) == 2
    assert len({c.shot for c in make_clips(10.0, [4.0, 4.4], 1.5, min_shot=0.0)}) == 3


def test_random_timelines_hold_every_promise() -> None:
    rng = random.Random(7)
    for _ in range(500):
        duration = rng.uniform(0.05, 600)
        cuts = [rng.uniform(-1, duration + 1) for _ in range(rng.randint(0, 40))]
        clip_seconds = rng.choice([0.5, 1.0, 1.5, 3.0])
        clips = make_clips(duration, cuts, clip_seconds)
        _check_tiling(clips, duration)
        kept = keep_cuts(duration, cuts, clip_seconds / 2)
        edges = {c.start for c in clips}
        assert all(k in edges for k in kept)
        assert clips[-1].shot == len(kept)
        bounds = [0.0, *kept, duration]
        for c in clips:
            shot_len = bounds[c.shot + 1] - bounds[c.shot]
            if shot_len >= 1.5 * clip_seconds:
                assert 0.75 * clip_seconds - 1e-9 <= c.duration <= 1.25 * clip_seconds + 1e-9
            else:  # one clip: the whole shot
                assert c.duration == pytest.approx(shot_len)
            assert c.duration >= min(clip_seconds / 2, duration) - 1e-9


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"duration": 0.0, "cuts": []}, "positive duration"),
        ({"duration": -3.0, "cuts": []}, "positive duration"),
        ({"duration": math.inf, "cuts": []}, "positive duration"),
        ({"duration": 5.0, "cuts": [], "clip_seconds": 0.0}, "clip_seconds"),
        ({"duration": 5.0, "cuts": [], "min_shot": -1.0}, "min_shot"),
        ({"duration": 5.0, "cuts": [float("nan")]}, "finite cut"),
    ],
)
def test_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_clips(**kwargs)


def test_with_detected_cuts(tmp_path: Path) -> None:
    """End to end: the decoder's scdet cuts on a generated three-shot video become clip boundaries."""
    video = tmp_path / "shots.mp4"
    subprocess.run(
        [
            ffmpeg_exe(), "-nostdin", "-v", "error", "-y",
            "-f", "lavfi", "-i", "color=c=red:s=160x120:r=25:d=3.1",
            "-f", "lavfi", "-i", "testsrc=s=160x120:r=25:d=2.6",
            "-f", "lavfi", "-i", "color=c=green:s=160x120:r=25:d=3",
            "-filter_complex", "[0:v][1:v][2:v]concat=n=3:v=1:a=0[v]", "-map", "[v]",
            "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(video),
        ],
        check=True,
        timeout=60,
    )  # fmt: skip
    decoder = VideoDecoder(video, fps=1.0)
    frames = list(decoder)
    assert len(frames) == 9
    assert decoder.cuts == [pytest.approx(3.1, abs=0.05), pytest.approx(5.7, abs=0.05)]
    clips = make_clips(decoder.info.duration, decoder.cuts, 1.5)
    _check_tiling(clips, decoder.info.duration)
    assert [c.shot for c in clips] == [0, 0, 1, 1, 2, 2]
    assert clips[2].start == decoder.cuts[0] and clips[4].start == decoder.cuts[1]
