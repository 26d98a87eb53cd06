"""BM25 view of the index: scores equal bm25s's own retrieval, filters, stemming, persistence."""

from __future__ import annotations

import random
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
