"""BM25 view of the index: scores equal bm25s's own retrieval, filters, stemming, persistence, generations."""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path

import bm25s
import numpy as np
import pytest
import Stemmer

from store.lexical import LexicalIndex

WORDS = (
    "rabbit forest river bicycle deer moon yankee phone call music night city train bridge dog cat "
    "apple garden winter summer mountain ocean storm light shadow market"
).split()


def corpus(n: int, seed: int = 0) -> list[str]:
    rnd = random.Random(seed)
    return [" ".join(rnd.choice(WORDS) for _ in range(rnd.randint(3, 12))) for _ in range(n)]


def build(tmp_path: Path, texts: list[str], speech: list[bool] | None = None) -> LexicalIndex:
    idx = LexicalIndex(tmp_path / "lexical")
    n = len(texts)
    idx.build([f"p{i}" for i in range(n)], [i // 10 + 1 for i in range(n)], [i % 10 for i in range(n)], texts, speech)
    return idx


def test_scores_match_bm25s_retrieve(tmp_path: Path) -> None:
    texts = corpus(3000)
    idx = build(tmp_path, texts)
    stemmer = Stemmer.Stemmer("english")
    reference = bm25s.BM25()
    reference.index(bm25s.tokenize(texts, stopwords="en", stemmer=stemmer, show_progress=False), show_progress=False)
    rnd = random.Random(1)
    for _ in range(30):
        query = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(1, 4)))
        hits = idx.search(query, 20)
        docs, scores = reference.retrieve(
            bm25s.tokenize([query], stopwords="en", stemmer=stemmer, show_progress=False), k=20, show_progress=False
        )
        expected = [float(s) for s in scores[0] if s > 0]
        assert [h.score for h in hits] == pytest.approx(expected, rel=1e-5)
        # equal scores may come in any order in bm25s; compare the sets of documents per score
        got = {(round(h.score, 4), int(h.id[1:])) for h in hits}
        want = {(round(float(s), 4), int(d)) for d, s in zip(docs[0], scores[0]) if s > 0}
        top_score = min(s for s, _ in want)
        assert {x for x in got if x[0] > top_score} == {x for x in want if x[0] > top_score}
        assert hits == sorted(hits, key=lambda h: -h.score)


def test_filters_stemming_and_empty_queries(tmp_path: Path) -> None:
    texts = ["the dogs run by the river", "a cat sleeps", "dog and cat", "winter storm at night"] * 5
    speech = [i % 2 == 0 for i in range(len(texts))]
    idx = build(tmp_path, texts, speech)
    hits = idx.search("dog", 50)
    assert {h.id for h in hits} == {f"p{i}" for i, t in enumerate(texts) if "dog" in t}  # "dogs" stems to "dog"
    only_media_1 = idx.search("dog", 50, frozenset({1}))
    assert only_media_1 and all(h.media_id == 1 for h in only_media_1)
    spoken = idx.search("dog", 50, has_speech=True)
    assert spoken and all(int(h.id[1:]) % 2 == 0 for h in spoken)
    assert idx.search("dog", 50, frozenset({99})) == []
    assert idx.search("the and a", 5) == []  # stopwords only
    assert idx.search("zebra", 5) == []  # no document has it
    assert len(idx.search("cat", 3)) == 3
    with pytest.raises(ValueError, match="limit"):
        idx.search("cat", 0)


def test_reload_from_disk(tmp_path: Path) -> None:
    texts = corpus(500, seed=3)
    first = build(tmp_path, texts).search("moon river", 10)
    again = LexicalIndex(tmp_path / "lexical")
    assert again.count() == 500
    assert again.search("moon river", 10) == first
    assert LexicalIndex(tmp_path / "missing").search("moon", 5) == []
    assert np.all(np.diff([h.score for h in first]) <= 0)


def generation(k: int) -> tuple[list[str], list[int], list[int], list[str]]:
    """Build number ``k``'s documents: its own size, ids ``g<k>-<i>``, every text with "moon"."""
    n = 40 + 7 * (k % 6)
    texts = [f"moon {WORDS[(i + k) % len(WORDS)]} {WORDS[(3 * i) % len(WORDS)]}" for i in range(n)]
    return [f"g{k}-{i}" for i in range(n)], [i // 10 + 1 for i in range(n)], [i % 10 for i in range(n)], texts


def size(k: int) -> int:
    return len(generation(k)[0])


def whole_generation(hits: list, count: int | None = None) -> int:
    """The build all ``hits`` (every document, searched for "moon") came from; fails on a mix."""
    builds = {h.id.split("-")[0] for h in hits}
    assert len(builds) == 1, f"hits from several generations: {sorted(builds)}"
    k = int(builds.pop()[1:])
    assert len(hits) == size(k) and (count is None or count == size(k))
    return k


def test_refresh_picks_up_a_new_generation(tmp_path: Path) -> None:
    path = tmp_path / "lexical"
    writer = LexicalIndex(path)
    assert LexicalIndex(path).refresh() is False  # no index yet
    writer.build(*generation(1))
    reader = LexicalIndex(path)
    assert whole_generation(reader.search("moon", 1000), reader.count()) == 1
    assert reader.refresh() is False  # nothing new: only CURRENT was read
    writer.build(*generation(2))
    assert (path / "CURRENT").read_text() == "gen-000002"
    assert whole_generation(reader.search("moon", 1000), reader.count()) == 1  # not before refresh()
    assert reader.refresh() is True
    assert whole_generation(reader.search("moon", 1000), reader.count()) == 2
    assert reader.refresh() is False
    assert whole_generation(writer.search("moon", 1000), writer.count()) == 2  # the writer holds its own build
    writer.build([], [], [], [])  # an empty generation is a generation too
    assert reader.refresh() is True and reader.count() == 0 and reader.search("moon", 5) == []


def test_a_generation_swept_while_loading_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "lexical"
    writer = LexicalIndex(path)
    writer.build(*generation(1))
    reader = LexicalIndex(path)
    read = reader._read
    calls: list[str] = []

    def slow_read(gen: str):  # type: ignore[no-untyped-def]
        calls.append(gen)
        if len(calls) == 1:  # two builds land between reading CURRENT and loading: gen-000001 is swept
            writer.build(*generation(2))
            writer.build(*generation(3))
            assert not (path / gen).exists()
        return read(gen)

    reader._read = slow_read  # type: ignore[method-assign]
    assert reader.refresh() is True
    assert calls == ["gen-000001", "gen-000003"]
    assert whole_generation(reader.search("moon", 1000), reader.count()) == 3


def test_readers_never_fail_while_builds_run(tmp_path: Path) -> None:
    path = tmp_path / "lexical"
    LexicalIndex(path).build(*generation(0))
    reader = LexicalIndex(path)
    stop = threading.Event()
    errors: list[BaseException] = []
    built: list[int] = []

    def guard(body):  # type: ignore[no-untyped-def]
        def run() -> None:
            try:
                body()
            except BaseException as e:  # noqa: BLE001 - reported by the main thread
                errors.append(e)
                stop.set()
        return run

    @guard
    def builder() -> None:
        writer = LexicalIndex(path)
        k = 0
        while not stop.is_set():
            k += 1
            writer.build(*generation(k))
            built.append(k)

    @guard
    def searcher() -> None:  # shares the reader with the main thread, which swaps generations under it
        while not stop.is_set():
            whole_generation(reader.search("moon", 1000))
            time.sleep(0.0005)  # a spinning thread starves the builder's I/O of the GIL

    threads = [threading.Thread(target=builder), threading.Thread(target=searcher)]
    for t in threads:
        t.start()
    seen = {0}
    deadline = time.monotonic() + 2.0
    try:
        while time.monotonic() < deadline and not stop.is_set():
            reader.refresh()
            seen.add(whole_generation(reader.search("moon", 1000), reader.count()))
            assert (path / "CURRENT").is_file()  # switched in one rename: never missing
            time.sleep(0.0005)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors
    assert len(built) >= 3 and len(seen) >= 3, (len(built), seen)  # it did see builds land
    reader.refresh()
    assert whole_generation(reader.search("moon", 1000), reader.count()) == built[-1]


def test_old_generations_are_swept(tmp_path: Path) -> None:
    path = tmp_path / "lexical"
    idx = LexicalIndex(path)
    for k in range(1, 5):
        idx.build(*generation(k))
    (path / ".gen-000009.tmp-deadbeef").mkdir()  # left by a build that died while writing
    idx.build(*generation(5))
    assert sorted(p.name for p in path.iterdir()) == [".lock", "CURRENT", "gen-000004", "gen-000005"]
    assert whole_generation(LexicalIndex(path).search("moon", 1000)) == 5


def write_flat(path: Path, texts: list[str]) -> None:
    """The layout before generations, as the old build() wrote it: the files directly in ``path``."""
    path.mkdir(parents=True)
    n = len(texts)
    retriever = bm25s.BM25()
    retriever.index(
        bm25s.tokenize(texts, stopwords="en", stemmer=Stemmer.Stemmer("english"), show_progress=False),
        show_progress=False,
    )
    retriever.save(str(path / "bm25"))
    np.save(path / "media_ids.npy", np.asarray([i // 10 + 1 for i in range(n)], dtype=np.int64))
    np.save(path / "clip_indices.npy", np.asarray([i % 10 for i in range(n)], dtype=np.int64))
    np.save(path / "has_speech.npy", np.ones(n, dtype=bool))
    (path / "ids.json").write_text(json.dumps([f"p{i}" for i in range(n)]))


def test_old_flat_layout_is_read_then_migrated(tmp_path: Path) -> None:
    texts = corpus(300, seed=5)
    path = tmp_path / "old" / "lexical"
    write_flat(path, texts)
    reader = LexicalIndex(path)
    assert reader.count() == 300
    assert reader.search("moon river", 10) == build(tmp_path / "new", texts).search("moon river", 10)
    assert reader.refresh() is False
    writer = LexicalIndex(path)
    writer.build(*generation(1))  # the migration: the flat files stay, as the generation before
    assert (path / "CURRENT").read_text() == "gen-000001" and (path / "ids.json").is_file()
    assert reader.refresh() is True
    assert whole_generation(reader.search("moon", 1000), reader.count()) == 1
    writer.build(*generation(2))
    assert sorted(p.name for p in path.iterdir()) == [".lock", "CURRENT", "gen-000001", "gen-000002"]
    assert reader.refresh() is True
    assert whole_generation(reader.search("moon", 1000), reader.count()) == 2
