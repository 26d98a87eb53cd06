"""Features stage: FrameEncoder on generated and real frames, pool_clips, concept names."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from indexer.backbone import FrameEncoder, center_square, load_backbone
from indexer.clip_features import ClipFeatures, imagenet_names, pool_clips

REPO = Path(__file__).resolve().parents[1]
MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"
_media_present = pytest.mark.skipif(not MEDIA.is_dir(), reason=f"real media folder not found at {MEDIA}")


def needs_media(test):  # the project's "integration" marker, skipped where ../shared/media is absent
    return pytest.mark.integration(_media_present(test))


def ffmpeg() -> str:
    exe = shutil.which("ffmpeg")
    if exe is None:
        try:
            import imageio_ffmpeg
        except ImportError:
            pytest.skip("no ffmpeg binary")
        exe = imageio_ffmpeg.get_ffmpeg_exe()
    return exe


def decode(args: list[str], width: int, height: int) -> np.ndarray:
    """Raw RGB frames from ffmpeg as a read-only uint8 (N,H,W,3), as a decoder would hand them over."""
    out = subprocess.run(
        [ffmpeg(), "-nostdin", "-v", "error", *args, "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        check=True, capture_output=True, timeout=60,
    ).stdout
    return np.frombuffer(out, np.uint8).reshape(-1, height, width, 3)


@pytest.fixture(scope="module")
def encoder() -> FrameEncoder:
    return FrameEncoder(batch_size=4)


@pytest.fixture(scope="module")
def testsrc_frames() -> np.ndarray:
    return decode(["-f", "lavfi", "-i", "testsrc=size=320x240:rate=10", "-t", "1"], 320, 240)


# -- FrameEncoder -------------------------------------------------------------------------------


def test_encode_generated_video(encoder: FrameEncoder, testsrc_frames: np.ndarray) -> None:
    assert testsrc_frames.shape == (10, 240, 320, 3) and not testsrc_frames.flags.writeable
    feats, probs = encoder.encode(testsrc_frames)
    assert feats.shape == (10, 1280) and probs.shape == (10, 1000)
    assert feats.dtype == np.float32 and probs.dtype == np.float32
    assert np.isfinite(feats).all() and np.isfinite(probs).all()
    assert feats.min() >= 0 and feats.max() <= 6 and feats.std() > 0.01  # pooled ReLU6, not constant
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    # Batching (4 + 4 + 2 here) does not change the numbers.
    one_by_one = np.concatenate([encoder.encode(testsrc_frames[i:i + 1])[0] for i in (0, 9)])
    np.testing.assert_allclose(one_by_one, feats[[0, 9]], atol=1e-4, rtol=1e-4)


def test_encode_any_frame_size(encoder: FrameEncoder) -> None:
    rng = np.random.default_rng(0)
    for shape in [(2, 300, 200, 3), (1, 40, 70, 3), (1, 224, 224, 3)]:  # portrait, upscaled, exact
        feats, probs = encoder.encode(rng.integers(0, 256, shape, dtype=np.uint8))
        assert feats.shape == (shape[0], 1280) and np.isfinite(feats).all()
    empty_f, empty_p = encoder.encode(np.zeros((0, 224, 224, 3), np.uint8))
    assert empty_f.shape == (0, 1280) and empty_p.shape == (0, 1000)
    with pytest.raises(ValueError):
        encoder.encode(np.zeros((1, 224, 224), np.uint8))
    with pytest.raises(ValueError):
        encoder.encode(np.zeros((1, 224, 224, 3), np.float32))
    with pytest.raises(ValueError):
        FrameEncoder(batch_size=0)


def test_center_square_crops_the_short_side() -> None:
    import torch

    frame = np.zeros((1, 224, 448, 3), np.uint8)
    frame[:, :, 112:336] = 200  # the centre square; the sides stay black
    out = center_square(torch.from_numpy(frame).permute(0, 3, 1, 2))
    assert out.shape == (1, 3, 224, 224) and out.dtype == torch.uint8 and (out == 200).all()
    tall = np.zeros((1, 896, 448, 3), np.uint8)
    tall[:, 224:672] = 200
    out = center_square(torch.from_numpy(tall).permute(0, 3, 1, 2))  # 448 square, resampled to 224
    assert out.shape == (1, 3, 224, 224) and (out == 200).all()


def test_backbone_is_cached_and_not_loaded_at_import(encoder: FrameEncoder) -> None:
    assert load_backbone("lite0", 0) is load_backbone("lite0", 0) is encoder.model
    code = "import indexer.backbone as f; assert f.load_backbone.cache_info().currsize == 0"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)


# -- pool_clips ---------------------------------------------------------------------------------


def one_hot_probs(classes: list[int]) -> np.ndarray:
    probs = np.zeros((len(classes), 1000), np.float32)
    probs[np.arange(len(classes)), classes] = 1.0
    return probs


def test_pool_clips_assigns_frames_to_half_open_clips() -> None:
    times = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 2.5])
    feats = np.arange(6, dtype=np.float32)[:, None].repeat(1280, axis=1)  # frame i has features == i
    probs = one_hot_probs([207, 207, 207, 1, 1, 1])
    out = pool_clips(times, feats, probs, [(0.0, 1.0), (1.0, 2.0), (2.0, 3.0)], top_k=2)
    assert isinstance(out, ClipFeatures)
    assert out.frame_counts.tolist() == [2, 2, 2]  # 1.0 and 2.0 start the next clip, not end this one
    np.testing.assert_array_equal(out.features[:, 0], [0.5, 2.5, 4.5])
    assert out.features.dtype == np.float16 and out.probs.dtype == np.float16
    assert out.features.shape == (3, 1280) and out.probs.shape == (3, 1000)
    assert out.concepts[0][0] == ("Golden Retriever", 1.0)
    # A tie (one frame each): the lower class id first.
    assert [(n, round(p, 3)) for n, p in out.concepts[1]] == [("goldfish", 0.5), ("Golden Retriever", 0.5)]
    assert out.concepts[2][0] == ("goldfish", 1.0)


def test_pool_clips_empty_clip_takes_nearest_frame() -> None:
    times = np.array([3.0, 0.0, 1.0])  # order does not matter
    feats = np.array([[3.0], [0.0], [1.0]], np.float32)
    probs = one_hot_probs([3, 0, 1])[:, :1000]
    clips = [(0.0, 0.4), (0.4, 0.6), (1.2, 1.9), (2.2, 2.6), (5.0, 6.0)]
    out = pool_clips(times, feats, probs, clips)
    assert out.frame_counts.tolist() == [1, 0, 0, 0, 0]  # 0 = borrowed a frame from outside
    # Middles 0.5 -> frame at 0.0 or 1.0 (tie: the earlier), 1.55 -> 1.0, 2.4 -> 3.0, 5.5 -> 3.0.
    np.testing.assert_array_equal(out.features[:, 0], [0.0, 0.0, 1.0, 3.0, 3.0])
    assert [c[0][0] for c in out.concepts] == ["tench", "tench", "goldfish", "tiger shark", "tiger shark"]


def test_pool_clips_concepts_sorted_by_probability() -> None:
    probs = np.full((2, 1000), 0.0005, np.float32)
    probs[0, [10, 20, 30]] = [0.2, 0.5, 0.3]
    probs[1, [10, 20, 30]] = [0.4, 0.1, 0.1]
    out = pool_clips(np.array([0.0, 0.5]), np.zeros((2, 1280), np.float32), probs, [(0.0, 1.0)], top_k=3)
    names = imagenet_names()
    concept_names = [name for name, _ in out.concepts[0]]
    scores = [p for _, p in out.concepts[0]]
    assert concept_names == [names[10], names[20], names[30]]  # mean 0.3, 0.3 (tie: lower id), 0.2
    assert scores == sorted(scores, reverse=True) and scores[0] == pytest.approx(0.3)
    assert all(isinstance(p, float) for p in scores)


def test_pool_clips_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        pool_clips(np.array([]), np.zeros((0, 1280)), np.zeros((0, 1000)), [(0.0, 1.0)])
    with pytest.raises(ValueError):
        pool_clips(np.array([0.0, 1.0]), np.zeros((1, 1280)), np.zeros((2, 1000)), [(0.0, 1.0)])
    out = pool_clips(np.array([0.0]), np.zeros((1, 1280)), np.zeros((1, 1000)), [])
    assert out.features.shape == (0, 1280) and out.concepts == [] and len(out.frame_counts) == 0


def test_imagenet_names_are_short_and_readable() -> None:
    names = imagenet_names()
    assert len(names) == 1000 and names[207] == "Golden Retriever" and names[457] == "bow tie"
    assert not any(n.startswith("n0") for n in names)
    assert imagenet_names() is names


# -- real media ---------------------------------------------------------------------------------


@needs_media
def test_real_clip_concepts(encoder: FrameEncoder) -> None:
    # A man in a suit and bow tie (176x144, upscaled) and a deer at 1080p (downscaled).
    car = decode(["-i", str(MEDIA / "carphone.mp4"), "-vf", "fps=1"], 176, 144)
    deer = decode(["-ss", "0.5", "-i", str(MEDIA / "deer.mp4"), "-frames:v", "1"], 1920, 1080)
    f_car, p_car = encoder.encode(car)
    f_deer, p_deer = encoder.encode(deer)
    times = np.concatenate([np.arange(len(car), dtype=float), [10.0]])
    out = pool_clips(times, np.concatenate([f_car, f_deer]), np.concatenate([p_car, p_deer]),
                     [(0.0, 10.0), (10.0, 11.0)])
    assert out.frame_counts.tolist() == [len(car), 1]
    assert out.concepts[0][0][0] == "bow tie" and out.concepts[0][0][1] > 0.3
    deer_tags = {name for name, _ in out.concepts[1]}
    assert deer_tags & {"impala (antelope)", "gazelle", "hartebeest"}, out.concepts[1]
