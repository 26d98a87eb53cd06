"""Training: data prep on synthetic and tiny generated media, the activation rule, and one end-to-end train on real media."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from indexer.training.data import (
    HELDOUT,
    TRAIN,
    DataOptions,
    MediaItem,
    Sentence,
    assign_splits,
    build_examples,
    prepare,
    split_sentences,
    weak_text,
)
from indexer.training.loop import TrainingInterrupted, train_library
from indexer.training.metrics import auc, r1, recommend
from store.catalog import Clip, Job, Media, ModelVersion
from conftest import have

needs_media_tools = pytest.mark.skipif(not (have("ffmpeg") and have("espeak-ng")), reason="needs ffmpeg and espeak-ng")


# -- data prep on synthetic items -------------------------------------------------------------------


def test_split_sentences_cuts_at_punctuation_and_keeps_word_times() -> None:
    words = [[0.0, 0.4, " Hello"], [0.5, 0.9, " there."], [1.2, 1.5, " How"], [1.6, 1.9, " are"], [2.0, 2.4, " you?"],
             [3.0, 3.3, " Fine"]]
    out = split_sentences([(0.0, 3.5, "Hello there. How are you? Fine", words), (4.0, 6.0, " no words here ", None)])
    assert out == [Sentence(0.0, 0.9, "Hello there."), Sentence(1.2, 2.4, "How are you?"), Sentence(3.0, 3.3, "Fine"),
                   Sentence(4.0, 6.0, "no words here")]
    long = [[i * 0.1, i * 0.1 + 0.05, f" w{i}"] for i in range(10)]
    assert [s.text for s in split_sentences([(0, 1, "", long)], max_words=4)] == ["w0 w1 w2 w3", "w4 w5 w6 w7", "w8 w9"]


def test_weak_text_sums_concepts_over_clips() -> None:
    clips = [[["bicycle", 0.5], ["taxi", 0.2]], [["taxi", 0.6], ["crane (bird)", 0.3]], [["unlikely", 0.01]]]
    assert weak_text(clips, top=2) == "a video of a taxi and a bicycle"
    assert weak_text([[["crane (bird)", 0.9]]], top=2) == "a video of a crane bird"
    assert weak_text([[["x", 0.01]]], top=2, min_prob=0.05) == ""


def _item(key: str, n: int, video: bool, sentences: list[Sentence] = (), clip_s: float = 1.5) -> MediaItem:  # type: ignore[assignment]
    times = np.array([[i * clip_s, (i + 1) * clip_s] for i in range(n)], np.float32)
    feats = np.random.default_rng(0).normal(size=(n, 8)).astype(np.float16) if video else None
    concepts = [[["tabby", 0.6], ["lynx", 0.2]] if video else [] for _ in range(n)]
    return MediaItem(len(key), key, f"/m/{key}", times, feats, concepts, list(sentences))


def test_split_is_deterministic_by_block_and_always_holds_something_out() -> None:
    opts = DataOptions(split_block_seconds=30.0, heldout_fraction=0.2, seed=3)
    a = [_item("aa" * 8, 100, True), _item("bb" * 8, 10, True), _item("cc" * 8, 8, False)]
    b = [_item("aa" * 8, 100, True), _item("bb" * 8, 10, True), _item("cc" * 8, 8, False)]
    assign_splits(a, opts)
    assign_splits(list(reversed(b)), opts)  # order of the library does not matter
    for x, y in zip(a, b):
        assert (x.clip_split == y.clip_split).all()
    # Clips of one 30 s block (20 clips of 1.5 s) share a split.
    big = a[0].clip_split
    for start in range(0, 100, 20):
        assert len(set(big[start : start + 20].tolist())) == 1
    video = np.concatenate([a[0].clip_split, a[1].clip_split])
    assert HELDOUT in video and TRAIN in video


def test_build_examples_pairs_weak_text_sequences_and_text_only() -> None:
    opts = DataOptions(split_block_seconds=1000.0, heldout_fraction=0.0, weak_window_clips=4, sequence_clips=5)
    spoken = _item("aa" * 8, 12, True, [Sentence(1.6, 4.4, "a cat sits on the mat.")])
    audio = _item("bb" * 8, 4, False, [Sentence(0.5, 2.0, "hello world.")])
    data = build_examples([spoken, audio], opts)
    strong = [p for p in data.pairs if not p.weak]
    assert [(p.first, p.last, p.text) for p in strong] == [(1, 2, "a cat sits on the mat.")]
    weak = [p for p in data.pairs if p.weak]
    # Windows of 4 clips that hold no speech: [4..7] and [8..11]; [0..3] overlaps the sentence.
    assert [(p.first, p.last) for p in weak] == [(4, 7), (8, 11)]
    assert all(p.text == "a video of a tabby and a lynx" for p in weak)
    assert [(s.first, s.last) for s in data.sequences] == [(0, 4), (5, 9), (10, 11)]
    assert [(p.first, p.text) for p in data.texts] == [(-1, "hello world.")]
    assert data.features(strong[0]).shape == (2, 8)
    assert data.summary()["train_weak_pairs"] == 2


def test_no_example_mixes_training_and_heldout_clips() -> None:
    """Sentences running across 30 s block boundaries (into blocks of the other split) stay on one side."""
    opts = DataOptions(split_block_seconds=30.0, heldout_fraction=0.5, seed=1, max_pair_clips=16)
    # 200 clips of 1.5 s (10 blocks of 20 clips); a 12 s sentence every 5 s, so many straddle a block boundary.
    sentences = [Sentence(t, t + 12.0, f"sentence number {i} about a cat.") for i, t in enumerate(np.arange(0.0, 288.0, 5.0))]
    item = _item("dd" * 8, 200, True, sentences)
    data = build_examples([item, _item("ee" * 8, 40, True)], opts)
    blocks = np.floor(item.clip_times.mean(axis=1) / 30.0).astype(int)
    crossing = [s for s in sentences
                if len(set(item.clip_split[(item.clip_times[:, 1] > s.start) & (item.clip_times[:, 0] < s.end)])) > 1]
    assert crossing, "the test needs sentences that span both splits"
    strong = [p for p in data.pairs if not p.weak]
    assert len(strong) == len(sentences)
    for ex in [*data.pairs, *data.sequences]:
        m = data.media[ex.media]
        sides = set(m.clip_split[ex.first : ex.last + 1].tolist())
        assert sides == {ex.split}, (ex, sides)
        if m is item:
            assert len(set(blocks[ex.first : ex.last + 1].tolist())) == 1, ex
    assert {p.split for p in strong} == {TRAIN, HELDOUT}


# -- metrics and the activation rule --------------------------------------------------------------


def test_auc_and_r1() -> None:
    assert auc([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0]) == 1.0
    assert auc([0.5, 0.5], [1, 0]) == 0.5
    assert auc([0.1], [1]) is None
    sim = np.array([[0.9, 0.1], [0.8, 0.2]])
    assert r1(sim) == 0.5


def test_activation_rule() -> None:
    sizes = {"align_positives": 20, "align_negatives": 20, "retrieval_queries": 40}  # enough to judge
    base = {"conse_v2t_r1": 0.5, "conse_t2v_r1": 0.5, "align_auc": 0.7, **sizes}
    assert recommend({**base, "cbt_v2t_r1": 0.6, "cbt_t2v_r1": 0.6, "align_t2v_r1": 0.7}, "auto") == {"cbt": True, "videobert": True}
    # CBT loses, so the rerank is compared with the concept tags that stay live.
    assert recommend({**base, "cbt_v2t_r1": 0.4, "cbt_t2v_r1": 0.5, "align_t2v_r1": 0.55}, "auto") == {"cbt": False, "videobert": True}
    assert recommend({**base, "cbt_v2t_r1": 0.6, "cbt_t2v_r1": 0.6, "align_t2v_r1": 0.55}, "auto") == {"cbt": True, "videobert": False}
    assert recommend({**base, "align_auc": 0.5, "cbt_v2t_r1": None, "cbt_t2v_r1": None, "align_t2v_r1": 1.0}, "auto") == {"cbt": False, "videobert": False}
    assert recommend({}, "always") == {"videobert": True, "cbt": True}
    assert recommend(base, "never") == {"videobert": False, "cbt": False}


# -- data prep on tiny generated media --------------------------------------------------------------


@needs_media_tools
def test_prepare_on_generated_media(tmp_path: Path, cut_video: Path, speech_wav: Path) -> None:
    from vidx.app import App
    from vidx.cli import app as cli
    from vidx.settings import Settings

    data_dir = tmp_path / "lib"
    res = CliRunner().invoke(cli, ["ingest", str(cut_video), str(speech_wav), "--data-dir", str(data_dir)])
    assert res.exit_code == 0, res.output
    vapp = App(Settings(data_dir=data_dir))
    data = prepare(vapp.catalog, vapp.store, DataOptions(heldout_fraction=0.0))
    video = [m for m in data.media if m.features is not None]
    assert len(video) == 1 and video[0].features.shape[1] == 1280 and video[0].features.dtype == np.float16
    strong = [p for p in data.pairs if not p.weak]
    # espeak's sentence is spoken over the video's first seconds: a pair with the clips under it.
    assert strong and "fox" in strong[0].text.lower()
    first, last = strong[0].first, strong[0].last
    times = video[0].clip_times
    s = next(x for m in data.media for x in m.sentences if x.text == strong[0].text)
    assert times[first, 1] > s.start and times[last, 0] < s.end
    # The wav has no video: its sentence is text-only.
    assert any("fox" in p.text.lower() for p in data.texts)
    assert all(p.weak for p in data.pairs if p not in strong)


# -- one end-to-end train on real media -------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, shared_media: Path) -> Path:
    """A library of bikes.mp4 + world_night.mp4 + jfk.wav, trained with a tiny step budget (interrupted once)."""
    if not have("ffmpeg"):
        pytest.skip("needs ffmpeg")
    from vidx.app import App
    from vidx.cli import app as cli
    from vidx.settings import Settings

    data_dir = tmp_path_factory.mktemp("trained") / "lib"
    files = [shared_media / n for n in ("bikes.mp4", "world_night.mp4", "jfk.wav")]
    res = CliRunner().invoke(cli, ["ingest", *map(str, files), "--data-dir", str(data_dir)])
    assert res.exit_code == 0, res.output
    vapp = App(Settings(data_dir=data_dir))
    options = vapp.train_options(videobert_steps=4, cbt_steps=6, batch_size=8, videobert_layers=2, device="cpu",
                                 activate="never")
    calls = {"n": 0}

    def stop_in_videobert() -> bool:
        calls["n"] += 1
        return calls["n"] == 3  # the third step check: two VideoBERT steps are done

    with pytest.raises(TrainingInterrupted):
        train_library(vapp.catalog, vapp.store, vapp.embedder, vapp.models_root, options, should_stop=stop_in_videobert)
    run = vapp.models_root / "run-0001"
    state = json.loads((run / "state.json").read_text())
    assert not state["done"] and (run / "videobert.train.pt").is_file()
    with vapp.catalog.session() as session:
        job = session.get(Job, state["job_id"])
        assert job.kind == "train" and job.state == "failed" and "resume" in job.error
    result = train_library(vapp.catalog, vapp.store, vapp.embedder, vapp.models_root, options)
    assert result.resumed and result.run == "run-0001"
    return data_dir


def _cli(data_dir: Path, *args: str) -> str:
    from vidx.cli import app as cli

    res = CliRunner().invoke(cli, [*args, "--data-dir", str(data_dir)])
    assert res.exit_code == 0, res.output
    return res.output


def test_train_registers_checkpoints_versions_job_and_tokens(trained: Path) -> None:
    import torch

    from vidx.app import App
    from vidx.settings import Settings

    vapp = App(Settings(data_dir=trained))
    run = trained / "models" / "run-0001"
    for name in ("vocab.npz", "videobert.pt", "cbt.pt", "metrics.json", "token_concepts.json"):
        assert (run / name).is_file(), name
    assert not (run / "videobert.train.pt").exists()
    state = json.loads((run / "state.json").read_text())
    assert state["done"]
    with vapp.catalog.session() as session:
        rows = session.scalars(select(ModelVersion).order_by(ModelVersion.id)).all()
        assert [(r.kind, r.name, r.active) for r in rows] == [("videobert", "run-0001", False), ("cbt", "run-0001", False)]
        h = rows[0].metrics["heldout"]
        for key in ("visual_mlm_acc", "visual_mlm_baseline_acc", "text_mlm_acc", "align_auc", "cbt_r1"):
            assert key in h
        assert rows[0].metrics["steps"]["videobert"] == 4 and rows[0].metrics["peak_rss_mb"] > 0
        job = session.get(Job, state["job_id"])
        assert job.state == "done" and job.attempts == 2 and job.progress == 1.0
        video_clips = session.scalars(select(Clip).join(Media).where(Media.has_video.is_(True))).all()
        assert video_clips and all(c.visual_token is not None for c in video_clips)
    assert torch.load(run / "videobert.pt", weights_only=True)["extra"]["steps"] == 4


def test_chapters_follow_the_active_videobert_without_decoding(trained: Path) -> None:
    """Ingest made chapters without a model; switching a VideoBERT on makes them stale, and they are redone."""
    from indexer.training.registry import list_versions, set_active
    from store.queries import indexed_media_ids, stale_summary_ids
    from vidx.app import App
    from vidx.settings import Settings

    vapp = App(Settings(data_dir=trained))
    assert vapp.summarizer().surprise is None  # trained but not active: no surprise, chapters as ingested
    assert stale_summary_ids(vapp.catalog, vapp.summarizer().version) == []
    videobert = next(r for r in list_versions(vapp.catalog, vapp.models_root) if r.kind == "videobert")
    set_active(vapp.catalog, {"videobert": videobert.id})  # the catalog flip alone: the index is not involved
    try:
        summarizer = vapp.summarizer()
        assert summarizer.surprise is not None
        indexed = indexed_media_ids(vapp.catalog)
        assert set(stale_summary_ids(vapp.catalog, summarizer.version)) == indexed
        with vapp.catalog.session() as session:
            bikes = session.scalars(select(Media).where(Media.path.endswith("bikes.mp4"))).one()
            key = bikes.content_hash
        surprise = summarizer.surprise.surprise(vapp.store.load(key, "features"))
        assert len(surprise) == bikes.clip_count and np.isfinite(surprise[1:]).all() and (surprise[1:] >= 0).all()
        report = vapp.summarize()
        assert report.files == len(indexed) and not report.errors
        assert stale_summary_ids(vapp.catalog, summarizer.version) == []
    finally:
        set_active(vapp.catalog, {"videobert": None})


def test_activate_reindex_search_describe_deactivate(trained: Path) -> None:
    from vidx.app import App
    from vidx.settings import Settings

    out = _cli(trained, "models", "activate", "run-0001")
    assert "active: videobert" in out
    _cli(trained, "reindex")
    vapp = App(Settings(data_dir=trained))
    assert set(vapp.active_models()) == {"videobert", "cbt"}
    with vapp.catalog.session() as session:
        media = session.scalars(select(Media)).all()
        assert all("+cbt/" in (m.synced_version or "") for m in media)
        bikes = next(m for m in media if m.path.endswith("bikes.mp4"))
        key = bikes.content_hash
    # The index's visual vector of a clip is CBT's: searching with it finds that clip first.
    cbt = vapp.store.load(key, f"cbt_visual_{vapp.active_models()['cbt'].id}").astype(np.float32)
    with vapp.vectors(read_only=True) as vectors:
        hit = vectors.search("visual", cbt[2], 1)[0]
        assert hit.payload["media_id"] == bikes.id and hit.payload["clip_index"] == 2 and hit.score > 0.99
        assert "visual_token" in hit.payload
    found = json.loads(_cli(trained, "search", "bicycles and cars in a city street", "--json"))
    assert found
    videos = [m for m in found if m["media_path"].endswith(".mp4")]
    assert videos and all("align" in m["scores"] for m in videos[:1])
    out = _cli(trained, "describe", "bikes.mp4", "--at", "2")
    assert "[MASK] 1:" in out and "next clips predicted:" in out
    d = vapp.describe("bikes.mp4", 2.0, top_k=3)
    assert len(d.words) == 2 and len(d.words[0]) == 3 and d.next_tokens
    with pytest.raises(ValueError, match="no video"):
        vapp.describe("jfk.wav", 1.0)
    _cli(trained, "models", "deactivate")
    vapp = App(Settings(data_dir=trained))
    assert vapp.active_models() == {}
    with vapp.catalog.session() as session:
        assert all("+cbt/" not in (m.synced_version or "") for m in session.scalars(select(Media)).all())
    assert json.loads(_cli(trained, "search", "bicycles", "--json"))


def test_cli_train_fresh_run_activates_when_told(trained: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vidx.app import App
    from vidx.cli import app as cli
    from vidx.settings import Settings

    monkeypatch.setenv("VIDX_TRAIN_BATCH_SIZE", "8")
    monkeypatch.setenv("VIDX_TRAIN_VIDEOBERT_LAYERS", "1")
    res = CliRunner().invoke(cli, ["train", "--fresh", "--videobert-steps", "2", "--cbt-steps", "2", "--activate", "always",
                                   "--device", "cpu", "--json", "--data-dir", str(trained)])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["run"] == "run-0002" and report["activated"] == ["cbt", "videobert"]
    vapp = App(Settings(data_dir=trained))
    active = vapp.active_models()
    assert {k: r.name for k, r in active.items()} == {"videobert": "run-0002", "cbt": "run-0002"}
    with vapp.catalog.session() as session:
        assert all(m.synced_version.endswith(f"+cbt/{active['cbt'].id}") for m in session.scalars(select(Media)).all())
    out = _cli(trained, "models", "--json")
    assert [(r["name"], r["active"]) for r in json.loads(out)] == [("run-0001", False)] * 2 + [("run-0002", True)] * 2


def test_one_trainer_per_data_directory(tmp_path: Path) -> None:
    import fcntl
    import os

    from indexer.training.loop import TrainerBusyError

    root = tmp_path / "models"
    root.mkdir()
    fd = os.open(root / ".train.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another process's trainer, as far as flock can tell (a new open file)
    try:
        with pytest.raises(TrainerBusyError):
            train_library(None, None, None, root)  # type: ignore[arg-type]
    finally:
        os.close(fd)


def test_train_device_is_checked_with_one_line_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from indexer.training.loop import TrainOptions
    from indexer.training.registry import resolve_device
    from vidx.cli import app as cli

    with pytest.raises(ValueError, match="device must be auto, cpu or cuda, got 'gpu'"):
        TrainOptions(device="gpu")  # type: ignore[arg-type]
    data_dir = str(tmp_path / "lib")
    res = CliRunner().invoke(cli, ["train", "--device", "gpu", "--data-dir", data_dir])
    assert res.exit_code == 2 and "device must be auto, cpu or cuda" in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output
    assert not isinstance(res.exception, ValueError)  # handled: a typer exit, not the error itself
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA requested but torch sees no GPU"):
        resolve_device("cuda")
    assert resolve_device("auto") == "cpu"
    res = CliRunner().invoke(cli, ["train", "--device", "cuda", "--data-dir", data_dir])
    assert res.exit_code == 2 and "CUDA requested but torch sees no GPU" in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1
    monkeypatch.setenv("VIDX_TRAIN_DEVICE", "gpu")
    res = CliRunner().invoke(cli, ["train", "--data-dir", data_dir])
    assert res.exit_code == 2 and "bad setting VIDX_TRAIN_DEVICE" in res.output, res.output


def test_cli_train_when_the_index_is_busy_keeps_the_run_and_says_how_to_activate(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Training succeeded but another process holds the index's writer lock: a warning, not a traceback."""
    from types import SimpleNamespace

    import indexer.training.loop
    from store.vectors import IndexLockedError
    from vidx.app import App
    from vidx.cli import app as cli

    keys = ("visual_mlm_acc", "visual_mlm_baseline_acc", "text_mlm_acc", "align_auc", "cbt_v2t_r1", "cbt_t2v_r1",
            "conse_v2t_r1", "conse_t2v_r1", "align_t2v_r1")
    result = SimpleNamespace(run="run-0007", job_id=3, resumed=False, seconds=1.0, versions={"videobert": 5, "cbt": 6},
                             recommended={"videobert": True, "cbt": True}, metrics={"heldout": dict.fromkeys(keys, 0.5)})
    monkeypatch.setattr(indexer.training.loop, "train_library", lambda *a, **k: result)

    def locked(self: App, active: dict, **kw: object) -> None:
        raise IndexLockedError("index is open for writing by another process")

    monkeypatch.setattr(App, "switch_models", locked)
    res = CliRunner().invoke(cli, ["train", "--device", "cpu", "--json", "--data-dir", str(tmp_path / "lib")])
    assert res.exit_code == 0, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    assert ("trained and registered as run-0007; the index is busy: run `vidx models activate run-0007` later"
            in res.stderr)
    assert "Traceback" not in res.output
    report = json.loads(res.stdout)
    assert report["activated"] == [] and report["activation_pending"] == ["cbt", "videobert"]


def test_file_names_match_literally_not_as_like_patterns(tmp_path: Path) -> None:
    """`_` and `%` in a file name are characters, not LIKE wildcards (describe, search --media, --path-prefix)."""
    import migrations
    from search.engine import SearchEngine, SearchFilters
    from store.catalog import Catalog, MediaStatus
    from store.queries import resolve_media

    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    migrations.upgrade(catalog.engine)
    with catalog.session() as session:
        for i, path in enumerate(["/v/a_b.mp4", "/v/axb.mp4", "/v/100%.mp4", "/v/1000.mp4", "/d_x/c.mp4", "/dyx/c.mp4"]):
            session.add(Media(path=path, content_hash=f"{i:02d}" * 32, status=MediaStatus.INDEXED))
    with catalog.session() as session:
        ids = {m.path: m.id for m in session.scalars(select(Media))}
    assert resolve_media(catalog, "a_b.mp4").path == "/v/a_b.mp4"
    assert resolve_media(catalog, "100%.mp4").path == "/v/100%.mp4"
    engine = SearchEngine(catalog, None, None, None, None)  # type: ignore[arg-type]
    assert engine.resolve_filters(SearchFilters(media=("a_b.mp4",))) == {ids["/v/a_b.mp4"]}
    assert engine.resolve_filters(SearchFilters(media=("100%.mp4",))) == {ids["/v/100%.mp4"]}
    assert engine.resolve_filters(SearchFilters(path_prefix="/d_x")) == {ids["/d_x/c.mp4"]}
