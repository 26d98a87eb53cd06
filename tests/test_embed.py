"""Embedding stage: transcript windows, ConSE concept vectors, label caching, embed_clips, real frames."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from indexer.embed import (
    DEFAULT_TEMPLATE,
    ClipEmbeddings,
    cached_label_embeddings,
    concept_vectors,
    embed_clips,
    label_embeddings,
    segments_to_words,
    speech_windows,
)
from indexer.backbone import FrameEncoder
from indexer.clip_features import imagenet_names
from indexer.media import ffmpeg_exe
from models.text_encoder import EMBED_DIM, TextEncoder, load_text_encoder


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return load_text_encoder()


@pytest.fixture(scope="module")
def names() -> tuple[str, ...]:
    return imagenet_names()


@pytest.fixture(scope="module")
def labels(encoder: TextEncoder, names: tuple[str, ...], tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    return cached_label_embeddings(encoder, names, tmp_path_factory.mktemp("labels"))


def one_hot_ish(names: tuple[str, ...], peaks: dict[str, float]) -> np.ndarray:
    """A probability row: the given classes get their mass, the rest is spread thinly over all classes."""
    row = np.full(len(names), (1.0 - sum(peaks.values())) / len(names), np.float32)
    for name, p in peaks.items():
        row[names.index(name)] += p
    return row


# -- speech windows -------------------------------------------------------------------------------

WORDS = [(0.0, 0.5, " a"), (0.5, 1.0, " b"), (2.0, 2.4, " c"), (3.5, 4.0, " d"), (5.0, 5.5, " e")]


def test_speech_windows_boundaries() -> None:
    # Clip [1.5, 3.0] with 0.5 s context covers [1.0, 3.5]: "b" ends exactly at 1.0 and "d" starts
    # exactly at 3.5, so neither overlaps; with 0.6 s both do.
    assert speech_windows([(1.5, 3.0)], WORDS, context=0.5) == ["c"]
    assert speech_windows([(1.5, 3.0)], WORDS, context=0.6) == ["b c d"]
    assert speech_windows([(1.5, 3.0)], WORDS, context=0.0) == ["c"]
    # A word that only partly overlaps counts; a clip in a silence gets "".
    assert speech_windows([(0.9, 1.2), (6.0, 7.5)], WORDS, context=0.0) == ["b", ""]
    assert speech_windows([(0.0, 6.0)], WORDS, context=0.0) == ["a b c d e"]


def test_speech_windows_order_and_edge_cases() -> None:
    shuffled = [WORDS[3], WORDS[0], WORDS[4], WORDS[2], WORDS[1]]
    assert speech_windows([(0.0, 6.0)], shuffled, context=0.0) == ["a b c d e"]
    assert speech_windows([(0.0, 1.5), (1.5, 3.0)], [], context=2.0) == ["", ""]
    assert speech_windows([], WORDS) == []
    # A zero-length word (Whisper emits some) counts where it sits, even on the window's edge.
    assert speech_windows([(1.0, 2.0)], [(1.0, 1.0, "x"), (2.0, 2.0, "y")], context=0.0) == ["x"]
    # Whitespace-only words are dropped rather than leaving double spaces.
    spaced = [(0.0, 0.3, " hi"), (0.3, 0.4, "  "), (0.4, 0.8, " there")]
    assert speech_windows([(0.0, 1.0)], spaced, context=0.0) == ["hi there"]
    # A long word that starts well before the window still overlaps it.
    assert speech_windows([(10.0, 11.0)], [(0.0, 20.0, "long"), (1.0, 2.0, "short")], context=0.0) == ["long"]
    with pytest.raises(ValueError):
        speech_windows([(0.0, 1.0)], WORDS, context=-1.0)


def test_segments_to_words_spreads_evenly() -> None:
    words = segments_to_words([(10.0, 12.0, " one two three four"), (12.0, 13.0, "  "), (13.0, 14.0, "five")])
    assert [w for _, _, w in words] == ["one", "two", "three", "four", "five"]
    np.testing.assert_allclose([s for s, _, _ in words], [10.0, 10.5, 11.0, 11.5, 13.0])
    np.testing.assert_allclose([e for _, e, _ in words], [10.5, 11.0, 11.5, 12.0, 14.0])
    assert speech_windows([(10.9, 11.1)], words, context=0.0) == ["two three"]


# -- label embeddings and ConSE -------------------------------------------------------------------


def test_label_embeddings_templates(encoder: TextEncoder) -> None:
    names = ["tabby cat", "sports car", "impala (antelope)"]
    one = label_embeddings(encoder, names)
    assert one.shape == (3, EMBED_DIM) and one.dtype == np.float32
    np.testing.assert_allclose(one, encoder.encode([DEFAULT_TEMPLATE.format(n) for n in names]), atol=1e-6)
    # Several templates: the renormalised mean of each template's vectors.
    two = label_embeddings(encoder, names, ["a photo of a {}.", "{}"])
    mean = encoder.encode([f"a photo of a {n}." for n in names]) + encoder.encode(names)
    np.testing.assert_allclose(two, mean / np.linalg.norm(mean, axis=1, keepdims=True), atol=1e-6)
    with pytest.raises(ValueError):
        label_embeddings(encoder, names, "no placeholder")
    with pytest.raises(ValueError):
        label_embeddings(encoder, [])


def test_cached_label_embeddings(encoder: TextEncoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    names = ["tabby cat", "sports car"]
    first = cached_label_embeddings(encoder, names, tmp_path / "cache")
    files = sorted((tmp_path / "cache").iterdir())
    assert len(files) == 1 and files[0].suffix == ".npy"  # no temp file left behind

    class NoEncode:  # a second call must not run the model at all
        path, dim = encoder.path, encoder.dim

        def encode(self, texts: object) -> np.ndarray:
            raise AssertionError("cache miss")

    again = cached_label_embeddings(NoEncode(), names, tmp_path / "cache")  # type: ignore[arg-type]
    np.testing.assert_array_equal(again, first)
    # Other names or another template: another key.
    cached_label_embeddings(encoder, names[:1], tmp_path / "cache")
    cached_label_embeddings(encoder, names, tmp_path / "cache", template="{}")
    assert len(list((tmp_path / "cache").iterdir())) == 3
    # A truncated cache file is recomputed and replaced, not trusted.
    files[0].write_bytes(files[0].read_bytes()[:100])
    np.testing.assert_allclose(cached_label_embeddings(encoder, names, tmp_path / "cache"), first, atol=1e-6)
    assert np.load(files[0]).shape == (2, EMBED_DIM)


def test_concept_vectors_hand_built_clips(encoder: TextEncoder, names: tuple[str, ...], labels: np.ndarray) -> None:
    assert labels.shape == (1000, EMBED_DIM)
    probs = np.stack([
        one_hot_ish(names, {"tabby cat": 0.6, "Egyptian Mau": 0.15, "Persian cat": 0.05}),
        one_hot_ish(names, {"sports car": 0.7, "convertible": 0.1}),
        one_hot_ish(names, {"pizza": 0.8}),
        one_hot_ish(names, {"Golden Retriever": 0.5, "Labrador Retriever": 0.3}),
        one_hot_ish(names, {"mountain bike": 0.5, "tandem bicycle": 0.2, "unicycle": 0.1}),
    ])
    vectors = concept_vectors(probs, labels)
    assert vectors.shape == (5, EMBED_DIM) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    for query, want in [("a cat", 0), ("a fast red car", 1), ("food", 2), ("a dog", 3), ("a bicycle", 4)]:
        scores = vectors @ encoder.encode([query])[0]
        assert int(np.argmax(scores)) == want, (query, scores.round(3))


def test_concept_vectors_maths(labels: np.ndarray) -> None:
    probs = np.zeros((3, 1000), np.float32)
    probs[0, 7] = 1.0
    probs[1, [3, 5, 9]] = [0.5, 0.3, 0.2]
    # Row 2: all zero (no frame), stays zero rather than NaN.
    v = concept_vectors(probs, labels, top_k=2)
    np.testing.assert_allclose(v[0], labels[7], atol=1e-6)  # one class: its own label vector
    want = 0.5 * labels[3] + 0.3 * labels[5]  # top-2 only: class 9 is left out
    np.testing.assert_allclose(v[1], want / np.linalg.norm(want), atol=1e-5)
    assert not v[2].any() and np.isfinite(v).all()
    # float16 probabilities (what pool_clips stores) work, and top_k beyond the class count is fine.
    np.testing.assert_allclose(concept_vectors(probs.astype(np.float16), labels, top_k=5000)[1],
                               concept_vectors(probs, labels, top_k=1000)[1], atol=1e-3)
    assert concept_vectors(np.zeros((0, 1000)), labels).shape == (0, EMBED_DIM)
    with pytest.raises(ValueError):
        concept_vectors(probs[:, :10], labels)
    with pytest.raises(ValueError):
        concept_vectors(probs, labels, top_k=0)


# -- the stage ------------------------------------------------------------------------------------

TRANSCRIPT = [
    (0.0, 3.0, "the chef chops onions and garlic in the kitchen"),
    (10.0, 13.0, "our team scored a goal in the final minute of the match"),
    (20.0, 23.0, "the stock market fell sharply this morning"),
]
CLIPS = [(i * 1.5, (i + 1) * 1.5) for i in range(17)]  # 0 .. 25.5 s


def test_embed_clips_audio_only(encoder: TextEncoder) -> None:
    out = embed_clips(CLIPS, segments_to_words(TRANSCRIPT), None, encoder, None)
    assert isinstance(out, ClipEmbeddings)
    n = len(CLIPS)
    assert out.speech.shape == out.visual.shape == (n, EMBED_DIM)
    assert out.speech.dtype == out.visual.dtype == np.float16
    assert out.has_speech.dtype == out.has_visual.dtype == np.bool_
    assert not out.has_visual.any() and not out.visual.any()
    assert len(out.speech_text) == n
    # Clips near speech have it; those in the silences (more than the context away) do not.
    assert out.has_speech.tolist() == [bool(t) for t in out.speech_text]
    assert out.has_speech[0] and out.has_speech[7] and out.has_speech[14]
    assert not out.has_speech[4] and not out.has_speech[11]
    assert not out.speech[~out.has_speech].any()
    np.testing.assert_allclose(np.linalg.norm(out.speech[out.has_speech].astype(np.float32), axis=1), 1.0, atol=2e-3)
    # A spoken-topic query lands on the right sentence, within the eval's 1 s tolerance (DESIGN.md
    # section 8): a clip just after a sentence still carries its last words in its window.
    for query, (start, end, _) in [("a football game", TRANSCRIPT[1]), ("cooking food", TRANSCRIPT[0]),
                                   ("finance news", TRANSCRIPT[2])]:
        best = int(np.argmax(out.speech.astype(np.float32) @ encoder.encode([query])[0]))
        assert CLIPS[best][0] <= end + 1 and CLIPS[best][1] >= start - 1, (query, CLIPS[best])


def test_embed_clips_encodes_each_window_once(encoder: TextEncoder, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    real = encoder.encode

    def spy(texts: list[str]) -> np.ndarray:
        seen.extend(texts)
        return real(texts)

    monkeypatch.setattr(encoder, "encode", spy)
    # One word lasting 10 s: every clip's window is the same text.
    out = embed_clips([(i * 1.5, (i + 1) * 1.5) for i in range(6)], [(0.0, 10.0, " hmm")], None, encoder, None)
    assert seen == ["hmm"]
    assert out.has_speech.all() and (out.speech == out.speech[0]).all()


def test_embed_clips_visual_and_errors(encoder: TextEncoder, names: tuple[str, ...], labels: np.ndarray) -> None:
    clips = [(0.0, 1.5), (1.5, 3.0)]
    probs = np.stack([one_hot_ish(names, {"tabby cat": 0.9}), np.zeros(1000, np.float32)]).astype(np.float16)
    out = embed_clips(clips, [], probs, encoder, labels)
    assert out.has_visual.tolist() == [True, False]  # a row with no probability mass has no concepts
    assert not out.has_speech.any() and out.speech_text == ["", ""]
    assert out.visual.dtype == np.float16
    with pytest.raises(ValueError):
        embed_clips(clips, [], probs[:1], encoder, labels)
    with pytest.raises(ValueError):
        embed_clips(clips, [], probs, encoder, None)
    empty = embed_clips([], [], None, encoder, None)
    assert empty.speech.shape == (0, EMBED_DIM) and empty.speech_text == []


# -- real media -----------------------------------------------------------------------------------


def frame_at(path: Path, seconds: float, height: int = 224) -> np.ndarray:
    """One RGB frame at `seconds`, scaled to `height` with the aspect kept: uint8 (1, height, W, 3)."""
    raw = subprocess.run(
        [ffmpeg_exe(), "-nostdin", "-v", "error", "-ss", str(seconds), "-i", str(path), "-frames:v", "1",
         "-vf", f"scale=-2:{height}", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        check=True, capture_output=True, timeout=60,
    ).stdout
    return np.frombuffer(raw, np.uint8).reshape(1, height, -1, 3)


@pytest.mark.integration
def test_real_frames_rank_first_for_their_query(shared_media: Path, encoder: TextEncoder, labels: np.ndarray) -> None:
    # deer.mp4 is 1 s long; bikes.mp4 shows a cyclist at 4.6 s; carphone.mp4 a man in suit and bow tie.
    frames = [frame_at(shared_media / "deer.mp4", 0.5), frame_at(shared_media / "bikes.mp4", 4.6),
              frame_at(shared_media / "carphone.mp4", 2.0)]
    fe = FrameEncoder(batch_size=1)
    probs = np.concatenate([fe.encode(f)[1] for f in frames])
    vectors = concept_vectors(probs, labels)
    # ImageNet has no "deer": the deer frame reads as impala/gazelle/fox, which ConSE maps near "a deer".
    # Measured margins over the runner-up frame: deer 0.17, bicycle 0.11, suit 0.26.
    for query, want in [("a deer", 0), ("a bicycle", 1), ("a man in a suit", 2)]:
        scores = vectors @ encoder.encode([query])[0]
        assert int(np.argmax(scores)) == want, (query, scores.round(3))
