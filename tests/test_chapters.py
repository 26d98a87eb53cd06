"""Chapter boundaries: synthetic timelines with known changes, and tiny generated media ingested for real."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from indexer.chapters import ChapterOptions, ChapterSpan, Timeline, boundary_scores, find_chapters
from conftest import REPO, espeak, run_ffmpeg

CLIP = 1.5


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _times(n: int) -> np.ndarray:
    t = np.arange(n + 1) * CLIP
    return np.stack([t[:-1], t[1:]], 1)


def _speech_timeline(topics: list[int], seed: int = 0, spans: bool = True) -> Timeline:
    """One clip per entry of ``topics``: speech vectors scattered around that topic's direction, speech throughout."""
    rng = np.random.default_rng(seed)
    centres = _unit(rng.standard_normal((max(topics) + 1, 384)))
    speech = _unit(centres[topics] + 0.9 * _unit(rng.standard_normal((len(topics), 384))))
    n = len(topics)
    # Sentences of ~4 s with short breaths between them, as a transcript gives.
    sentence = [(s, min(s + 3.7, n * CLIP)) for s in np.arange(0.0, n * CLIP, 4.0)] if spans else []
    return Timeline(duration=n * CLIP, clip_times=_times(n), speech=speech.astype(np.float16),
                    has_speech=np.ones(n, bool), speech_spans=sentence)


def _check_contiguous(chapters: list[ChapterSpan], tl: Timeline) -> None:
    assert chapters[0].start == 0.0 and chapters[0].first_clip == 0 and chapters[0].score == 0.0
    assert chapters[-1].end == pytest.approx(tl.duration) and chapters[-1].end_clip == len(tl.clip_times)
    for a, b in zip(chapters, chapters[1:]):
        assert a.end == b.start and a.end_clip == b.first_clip
        assert b.start == pytest.approx(tl.clip_times[b.first_clip, 0])


def test_two_topics_give_one_boundary_at_the_change() -> None:
    tl = _speech_timeline([0] * 50 + [1] * 50)  # 150 s, the topic changes at 75 s
    chapters = find_chapters(tl, ChapterOptions())
    _check_contiguous(chapters, tl)
    assert [round(c.start) for c in chapters[1:]] == [75]
    assert chapters[1].signals["topic"] > 0.5 and chapters[1].score >= ChapterOptions().threshold


def test_one_topic_throughout_stays_one_chapter() -> None:
    tl = _speech_timeline([0] * 100)
    assert len(find_chapters(tl, ChapterOptions())) == 1


def test_topic_depth_peaks_at_the_change_and_scores_lie_in_unit_range() -> None:
    tl = _speech_timeline([0] * 40 + [1] * 40)
    scores = boundary_scores(tl, ChapterOptions())
    assert set(scores) == {"topic", "visual", "audio"}  # no surprise given: no surprise score
    for s in scores.values():
        assert s.shape == (80,) and s.min() >= 0.0 and s.max() <= 1.0 and s[0] == 0.0
    assert abs(int(np.argmax(scores["topic"])) - 40) <= 1
    assert not scores["visual"].any()  # no video


def _montage(scenes: list[int], looks_per_scene: int = 3, clips_per_shot: int = 2, seed: int = 1) -> Timeline:
    """45 s per scene, a cut every shot, its shots cycling through the scene's looks (a street: bikes, cars, a taxi)."""
    rng = np.random.default_rng(seed)
    # Pooled ReLU features: non-negative; the looks of one scene share most of their activations.
    base = rng.random((max(scenes) + 1, 1280)) ** 4
    looks = base[:, None, :] + 0.6 * rng.random((max(scenes) + 1, looks_per_scene, 1280)) ** 4
    rows, cuts = [], []
    for scene in scenes:
        for k in range(30 // clips_per_shot):
            if rows:
                cuts.append(len(rows) * CLIP)
            rows += [looks[scene, k % looks_per_scene]] * clips_per_shot
    feats = np.asarray(rows) + 0.01 * rng.random((len(rows), 1280))
    return Timeline(duration=len(rows) * CLIP, clip_times=_times(len(rows)), features=feats.astype(np.float32),
                    cuts=cuts)


def test_a_cut_rich_montage_changes_chapter_only_where_its_scenes_change() -> None:
    tl = _montage([0, 1, 0])  # 3 x 45 s, a cut every 3 s
    chapters = find_chapters(tl, ChapterOptions())
    _check_contiguous(chapters, tl)
    assert len(tl.cuts) == 44
    assert [round(c.start) for c in chapters[1:]] == [45, 90]
    # Shot cuts alone would start a chapter every 3 s.
    assert chapters[1].signals["visual"] > 0.5


def test_speech_stopping_is_a_boundary() -> None:
    n = 60  # 90 s: speech for the first 45 s, then silence (and no speech vectors there)
    tl = _speech_timeline([0] * n)
    tl.has_speech[30:] = False
    tl.speech_spans = [(a, b) for a, b in tl.speech_spans if b <= 45.0]
    chapters = find_chapters(tl, replace(ChapterOptions(), signals=("audio",)))
    assert len(chapters) == 2 and abs(chapters[1].start - 45.0) <= 3.0


def test_surprise_peak_is_a_boundary_and_is_ignored_when_switched_off() -> None:
    tl = _speech_timeline([0] * 80, spans=False)
    rng = np.random.default_rng(3)
    tl.surprise = rng.normal(2.0, 0.2, 80)
    tl.surprise[0] = np.nan
    tl.surprise[50] = 8.0  # the model did not see clip 50 coming
    chapters = find_chapters(tl, ChapterOptions())
    assert [c.first_clip for c in chapters[1:]] == [50] and chapters[1].signals["surprise"] > 0.6
    off = replace(ChapterOptions(), signals=("topic", "visual", "audio"))
    assert len(find_chapters(tl, off)) == 1


def test_a_file_shorter_than_a_minute_is_one_chapter() -> None:
    tl = _speech_timeline([0] * 19 + [1] * 19)  # 57 s with a clear change at 28.5 s
    chapters = find_chapters(tl, ChapterOptions())
    assert [(c.start, c.end, c.first_clip, c.end_clip) for c in chapters] == [(0.0, tl.duration, 0, 38)]
    shorter = replace(ChapterOptions(), single_below=0.0)
    assert [round(c.start, 1) for c in find_chapters(tl, shorter)] == [0.0, 28.5]


def test_min_and_max_lengths_hold_on_busy_and_on_empty_timelines() -> None:
    opts = ChapterOptions()
    busy = _speech_timeline([k // 4 for k in range(800)])  # 1200 s, a new topic every 6 s
    quiet = Timeline(duration=1000.0, clip_times=_times(667)[:, :] * (1000.0 / (667 * CLIP)))  # nothing to go by
    for tl in (busy, quiet):
        chapters = find_chapters(tl, opts)
        _check_contiguous(chapters, tl)
        lengths = [c.end - c.start for c in chapters]
        assert min(lengths) >= opts.min_seconds - 1e-9 and max(lengths) <= opts.max_seconds + 1e-9
    quiet_chapters = find_chapters(quiet, opts)
    # An undivided stretch is cut evenly, not at its first allowed clip.
    assert len(quiet_chapters) == 4 and max(c.end - c.start for c in quiet_chapters) < 260


def test_no_clips_and_bad_input() -> None:
    assert [(c.start, c.end) for c in find_chapters(Timeline(0.0, np.zeros((0, 2))), ChapterOptions())] == [(0.0, 0.0)]
    with pytest.raises(ValueError, match="one row per clip"):
        find_chapters(Timeline(100.0, _times(10), features=np.zeros((9, 4))), ChapterOptions())
    with pytest.raises(ValueError, match="signals among"):
        ChapterOptions(signals=("topic", "colour"))
    with pytest.raises(ValueError, match="min_seconds <= max_seconds"):
        ChapterOptions(min_seconds=100.0, max_seconds=50.0)


def test_version_names_every_field() -> None:
    assert ChapterOptions().version() == ChapterOptions().version()
    assert len(ChapterOptions().version()) == 12
    assert ChapterOptions(min_seconds=20.0).version() != ChapterOptions().version()
    assert replace(ChapterOptions(), signals=("topic",)).version() != ChapterOptions().version()


def test_chapters_import_no_torch() -> None:
    code = "import sys, indexer.chapters, indexer.surprise; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_surprise_model_scores_each_clip_against_its_past(tmp_path: Path) -> None:
    """A tiny VideoBERT and vocabulary on disk: one loss per clip, NaN for the first, equal to scoring each clip alone."""
    import torch

    from indexer.surprise import SurpriseModel
    from models.videobert import VideoBERT, VideoBertConfig, save_checkpoint
    from models.videobert_inputs import build_inputs
    from models.visual_vocab import VisualVocab, VocabConfig

    rng = np.random.default_rng(0)
    centres = rng.random((4, 64)).astype(np.float32)
    vocab = VisualVocab.fit(centres[rng.integers(0, 4, 200)] + 0.01 * rng.random((200, 64)).astype(np.float32),
                            VocabConfig(branching=4, max_depth=1, min_clips_per_leaf=1))
    torch.manual_seed(0)
    config = VideoBertConfig(visual_vocab_size=4, text_vocab_size=1040, first_word_id=1000, hidden=32, layers=1,
                             heads=2, intermediate=64, max_text_len=8, max_visual_len=6, dropout=0.0)
    model = VideoBERT(config).eval()
    with open(tmp_path / "videobert.pt", "wb") as f:
        save_checkpoint(f, model, config)
    with open(tmp_path / "vocab.npz", "wb") as f:
        vocab.save(f)
    # Two long shots and a short one: repeated contexts (computed once) and changes.
    features = centres[[0] * 12 + [1] * 3 + [2] * 10]
    sm = SurpriseModel(tmp_path / "videobert.pt", tmp_path / "vocab.npz")
    assert sm.version == SurpriseModel(tmp_path / "videobert.pt", tmp_path / "other.npz").version
    losses = sm.surprise(features)
    tokens = vocab.assign(features).tolist()
    assert losses.shape == (25,) and np.isnan(losses[0]) and np.isfinite(losses[1:]).all()
    for i in (1, 5, 12, 13, 15, 24):
        ctx = tokens[max(0, i - 5):i]
        batch = build_inputs(None, [ctx + [0]], config)
        ids = batch["input_ids"].clone()
        ids[0, 2 + len(ctx)] = config.visual_mask_id
        with torch.no_grad():
            logits = model.visual_logits(model(ids, batch["token_type_ids"], batch["attention_mask"])[0, 2 + len(ctx)])
        expected = -torch.log_softmax(logits, -1)[tokens[i]].item()
        assert losses[i] == pytest.approx(expected, abs=1e-4)
    with pytest.raises(ValueError, match="missing"):
        SurpriseModel(tmp_path / "none.pt", tmp_path / "vocab.npz").surprise(features)


# -- real media ----------------------------------------------------------------------------------

SPACE = ("The rocket lifted off from the launch pad and climbed into orbit around the earth. "
         "Astronauts on the space station watched the planets and the distant stars. "
         "The moon landing was the greatest journey of the space program. "
         "Telescopes in orbit photograph galaxies, comets and the rings of Saturn. "
         "Engineers design the spacecraft, its engines, its heat shield and its fuel tanks. "
         "Rovers drive across the red deserts of Mars and send their pictures back to mission control.")
COOKING = ("To bake bread, mix flour, water, salt and yeast in a large bowl. "
           "Knead the dough for ten minutes, then let it rise in a warm kitchen. "
           "Slice the onions and garlic, and fry them in butter in a hot pan. "
           "Add tomatoes, pepper and fresh basil, and let the sauce simmer. "
           "Serve the pasta with grated cheese and a glass of red wine for dinner. "
           "For dessert, whisk eggs, sugar and cream, and bake the cake in the oven for half an hour.")


@pytest.fixture(scope="module")
def two_topic_video(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """Two espeak-ng passages (space, then cooking) over two lavfi scenes (a moving test card, then colour
    bars); returns the file and the join time."""
    d = tmp_path_factory.mktemp("chapters")
    a, b = espeak(SPACE, d / "space.wav"), espeak(COOKING, d / "cooking.wav")
    dur_a = float(subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0",
                                  str(a)], capture_output=True, text=True, check=True).stdout)
    dur_b = float(subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0",
                                  str(b)], capture_output=True, text=True, check=True).stdout)
    assert dur_a + dur_b >= 60.0, "the passages must make a file of at least single_below seconds"
    out = d / "two_topics.mp4"
    run_ffmpeg(
        "-f", "lavfi", "-i", f"testsrc2=s=320x240:r=10:d={dur_a}",
        "-f", "lavfi", "-i", f"smptebars=s=320x240:r=10:d={dur_b}",
        "-i", str(a), "-i", str(b),
        "-filter_complex", "[0:v][2:a][1:v][3:a]concat=n=2:v=1:a=1[v][a]",
        "-map", "[v]", "-map", "[a]", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", str(out),
    )
    return out, dur_a


def test_generated_media_gets_a_boundary_at_the_join(two_topic_video: tuple[Path, float], data_dir: Path) -> None:
    from indexer.summaries import load_file
    from indexer.wiring import Layout
    from store import queries
    from store.catalog import Catalog
    from store.features import FeatureStore

    video, join = two_topic_video
    env = dict(os.environ, VIDX_DATA_DIR=str(data_dir))
    subprocess.run([str(REPO / ".venv" / "bin" / "vidx"), "ingest", str(video)], env=env, cwd=REPO, check=True,
                   capture_output=True, timeout=600)
    catalog = Catalog(f"sqlite:///{data_dir / 'catalog.sqlite'}")
    try:
        media = queries.resolve_media(catalog, str(video), indexed_only=True)
        data = load_file(catalog, FeatureStore(Layout(data_dir).features), media.id)
    finally:
        catalog.dispose()
    tl = Timeline(duration=data.duration, clip_times=data.clip_times, speech=data.speech, has_speech=data.has_speech,
                  features=data.features, cuts=data.cuts,
                  speech_spans=[(s, e) for s, e, text, _ in data.segments if text.strip()])
    for signals in (ChapterOptions().signals, ("topic", "audio")):  # all signals; and the words alone
        chapters = find_chapters(tl, replace(ChapterOptions(), signals=signals))
        starts = [c.start for c in chapters[1:]]
        assert len(starts) == 1 and abs(starts[0] - join) <= 3.0, (signals, join, [(c.start, c.signals) for c in chapters])
