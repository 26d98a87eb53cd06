"""Search end to end on generated media: ingest, index sync, hybrid queries, filters, bad queries; both backends."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from conftest import espeak, run_ffmpeg
from indexer.pipeline import ingest_file
from search.engine import MAX_QUERY_CHARS, SearchFilters, SearchOptions
from store.catalog import Media
from vidx.app import App
from vidx.settings import Settings

LINES = {
    "weather.wav": "tomorrow the weather will be sunny with a light breeze from the west",
    "recipe.wav": "first you whisk three eggs with sugar and then fold in the flour",
}


@pytest.fixture(scope="module")
def spoken_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("spoken")
    files = {}
    for name, text in LINES.items():
        raw = espeak(text, root / f"raw-{name}")
        # Two seconds of silence first, so the speech starts at a known time.
        out = root / name
        run_ffmpeg("-f", "lavfi", "-i", "anullsrc=r=22050:cl=mono", "-i", str(raw), "-filter_complex",
                   "[0:a]atrim=0:2[s];[s][1:a]concat=n=2:v=0:a=1[a]", "-map", "[a]", str(out))
        files[name] = out
    return files


@pytest.fixture(scope="module", params=["faiss", "qdrant"])
def library(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, spoken_files, cut_video: Path):
    data = tmp_path_factory.mktemp(f"lib-{request.param}")
    app = App(Settings(data_dir=data, vector_backend=request.param))
    for path in [*spoken_files.values(), cut_video]:
        result = ingest_file(path, app.catalog, app.store, app.ingest_options(), embedder=app.embedder)
        assert result.status == "indexed", result.reason
    report = app.sync()
    assert report.upserted_media == 3 and not report.errors
    engine = app.engine(app.vectors(read_only=request.param == "faiss"))
    yield app, engine
    engine.vectors.close()


def test_spoken_phrase_finds_its_file_and_time(library, spoken_files) -> None:
    app, engine = library
    moments = engine.search("whisk three eggs with sugar", SearchOptions(limit=5))
    assert moments, "no results"
    top = moments[0]
    assert Path(top.media_path) == spoken_files["recipe.wav"].resolve()
    assert top.start >= 1.0 and top.start <= 5.0  # the speech starts at 2 s
    assert "eggs" in top.matched and "lexical" in top.scores and "speech" in top.scores
    assert top.link.startswith("file://") and "#t=" in top.link
    paraphrase = engine.search("a forecast of tomorrow's weather", SearchOptions(limit=3, sources=("speech",)))
    assert Path(paraphrase[0].media_path) == spoken_files["weather.wav"].resolve()


def test_visual_source_finds_silent_shots(library, cut_video: Path) -> None:
    _, engine = library
    moments = engine.search("a test pattern", SearchOptions(limit=5, sources=("visual",)))
    assert moments and all(Path(m.media_path) == cut_video.resolve() for m in moments)
    assert all(m.thumbnail and Path(m.thumbnail).is_file() for m in moments)


def test_filters_restrict_results(library, spoken_files) -> None:
    app, engine = library
    only = engine.search("eggs sugar weather", SearchOptions(limit=10), SearchFilters(media=("weather.wav",)))
    assert only and {Path(m.media_path).name for m in only} == {"weather.wav"}
    longer = engine.search("eggs", SearchOptions(limit=10), SearchFilters(min_duration=6.5))
    assert all(Path(m.media_path).name != "cuts.mp4" for m in longer)
    silent = engine.search("red", SearchOptions(limit=10), SearchFilters(has_speech=False))
    with app.catalog.session() as s:
        audio_only = {m.id for m in s.scalars(select(Media).where(Media.has_video.is_(False)))}
    assert all(m.media_id not in audio_only for m in silent)
    with pytest.raises(ValueError, match="no indexed media matches"):
        engine.search("eggs", SearchOptions(), SearchFilters(media=("nonexistent.mp4",)))


def test_bad_queries(library) -> None:
    _, engine = library
    for empty in ("", "   ", "?!", "\n"):
        with pytest.raises(ValueError, match="empty query"):
            engine.search(empty)
    long = "eggs " * 5000
    moments = engine.search(long, SearchOptions(limit=3))
    assert moments and Path(moments[0].media_path).name == "recipe.wav"
    assert len(long) > MAX_QUERY_CHARS
    with pytest.raises(ValueError, match="limit"):
        engine.search("eggs", SearchOptions(limit=0))


def test_cli_search_json_and_empty_library(tmp_path: Path, spoken_files) -> None:
    env = dict(os.environ, VIDX_DATA_DIR=str(tmp_path / "d"))

    def vidx(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "vidx", *args], capture_output=True, text=True, env=env, timeout=300)

    empty = vidx("search", "anything", "--json")
    assert empty.returncode == 0 and json.loads(empty.stdout) == [] and "library is empty" in empty.stderr
    assert vidx("ingest", str(spoken_files["weather.wav"]), str(spoken_files["recipe.wav"])).returncode == 0
    found = vidx("search", "sunny with a light breeze", "--limit", "2", "--json")
    assert found.returncode == 0, found.stderr
    results = json.loads(found.stdout)
    assert results[0]["media_path"] == str(spoken_files["weather.wav"].resolve())
    assert {"media_path", "start", "end", "score", "text"} <= set(results[0])
    table = vidx("search", "sunny breeze")
    assert "weather.wav" in table.stdout
    bad = vidx("search", "   ")
    assert bad.returncode == 2 and "empty query" in bad.stderr and "Traceback" not in bad.stderr
    unknown = vidx("search", "eggs", "--media", "nope.mp4")
    assert unknown.returncode == 2 and "no indexed media matches" in unknown.stderr
    again = vidx("reindex")
    assert again.returncode == 0, again.stderr
    assert json.loads(vidx("search", "sunny with a light breeze", "--limit", "2", "--json").stdout)[0]["media_path"] == results[0]["media_path"]


def test_rebuild_that_dies_half_way_loses_nothing(library, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full rebuild killed after its first file: the next plain sync restores the whole index."""
    import indexer.sync

    app, engine = library
    before = [(m.media_path, m.start, m.end) for m in engine.search("whisk eggs", SearchOptions(limit=5))]
    count = engine.vectors.count()
    engine.vectors.close()
    real = indexer.sync._sync_media
    calls = []

    def dies_on_second(*args, **kw):  # type: ignore[no-untyped-def]
        calls.append(args[4])
        if len(calls) == 2:
            raise RuntimeError("killed")
        return real(*args, **kw)

    monkeypatch.setattr(indexer.sync, "_sync_media", dies_on_second)
    with pytest.raises(RuntimeError, match="killed"):
        app.sync(full=True)
    monkeypatch.setattr(indexer.sync, "_sync_media", real)
    with app.catalog.session() as session:
        assert all(m.synced_at is None for m in session.scalars(select(Media)))
    report = app.sync()
    assert report.upserted_media == 3 and not report.errors
    engine.vectors = app.vectors(read_only=app.settings.vector_backend == "faiss")
    assert engine.vectors.count() == count
    assert [(m.media_path, m.start, m.end) for m in engine.search("whisk eggs", SearchOptions(limit=5))] == before


def test_reindex_rebuilds_the_same_index(library) -> None:
    """Runs last in this module: it swaps the engine's index for the rebuilt one."""
    app, engine = library
    before = [(m.media_path, m.start, m.end) for m in engine.search("whisk eggs", SearchOptions(limit=5))]
    engine.vectors.close()  # a single writer: the reader steps aside while the index is rebuilt
    report = app.sync(full=True)
    assert report.upserted_media == 3 and report.upserted_points > 0
    engine.vectors = app.vectors(read_only=app.settings.vector_backend == "faiss")
    assert engine.vectors.count() == report.upserted_points
    after = [(m.media_path, m.start, m.end) for m in engine.search("whisk eggs", SearchOptions(limit=5))]
    assert before == after
