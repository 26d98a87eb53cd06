"""Fusion, moment merging and evaluation metrics on hand-built inputs with known answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from search.evaluate import evaluate, load_manifest, metrics
from search.fusion import Candidate, reciprocal_rank, weighted_sum
from search.moments import merge_moments


def test_rrf_rewards_agreement_between_sources() -> None:
    lists = {
        "lexical": [Candidate((1, 5), 9.0), Candidate((2, 0), 3.0)],
        "speech": [Candidate((2, 0), 0.8), Candidate((1, 5), 0.7), Candidate((3, 1), 0.6)],
    }
    fused = reciprocal_rank(lists, {"lexical": 1.0, "speech": 1.0}, k=60)
    assert fused[(1, 5)] == pytest.approx(1 / 61 + 1 / 62)
    assert fused[(2, 0)] == pytest.approx(1 / 62 + 1 / 61)
    assert fused[(3, 1)] == pytest.approx(1 / 63)
    # A zero weight silences a source.
    only_lexical = reciprocal_rank(lists, {"lexical": 1.0, "speech": 0.0})
    assert max(only_lexical, key=only_lexical.get) == (1, 5)


def test_weighted_sum_calibrates_each_source() -> None:
    lists = {
        "lexical": [Candidate((1, 0), 20.0), Candidate((1, 1), 10.0)],
        "visual": [Candidate((1, 1), 0.55), Candidate((2, 0), 0.1)],
    }
    fused = weighted_sum(lists, {"lexical": 1.0, "visual": 1.0}, floors={"visual": 0.1})
    assert fused[(1, 0)] == pytest.approx(1.0)
    assert fused[(1, 1)] == pytest.approx(0.5 + 0.5)
    assert fused[(2, 0)] == pytest.approx(0.0)


def test_merge_moments_joins_strong_neighbours_only() -> None:
    scores = {(1, 4): 1.0, (1, 5): 0.9, (1, 6): 0.3, (1, 8): 0.8, (2, 0): 0.95}
    moments = merge_moments(scores, max_gap=1, min_ratio=0.5)
    first = moments[0]
    assert (first.media_id, first.first_clip, first.last_clip, first.best_clip) == (1, 4, 5, 4)
    assert first.score == 1.0
    assert [(m.media_id, m.first_clip, m.last_clip) for m in moments[1:]] == [(2, 0, 0), (1, 8, 8), (1, 6, 6)]
    # With a gap of two, clip 8 is reachable from the seed through the missing 7 only if 6 joined first.
    wide = merge_moments(scores, max_gap=2, min_ratio=0.2)
    assert (wide[0].first_clip, wide[0].last_clip) == (4, 8)


def test_merge_moments_caps_length() -> None:
    scores = {(1, i): 1.0 - i * 0.001 for i in range(50)}
    moments = merge_moments(scores, max_clips=10)
    assert all(m.last_clip - m.first_clip + 1 <= 10 for m in moments)
    assert sum(m.last_clip - m.first_clip + 1 for m in moments) == 50


@pytest.fixture()
def manifest(tmp_path: Path) -> Path:
    (tmp_path / "a.mp4").write_bytes(b"")
    (tmp_path / "b.wav").write_bytes(b"")
    path = tmp_path / "m.json"
    path.write_text(json.dumps({
        "name": "t",
        "media": [{"id": "a", "path": "a.mp4"}, {"id": "b", "path": "b.wav"}],
        "queries": [
            {"id": "q1", "text": "x", "kind": "spoken", "relevant": [{"media": "b", "start": 10, "end": 12}]},
            {"id": "q2", "text": "y", "kind": "visual", "relevant": [{"media": "a"}]},
            {"id": "q3", "text": "z", "kind": "visual", "relevant": [{"media": "a"}]},
        ],
    }))
    return path


def test_evaluate_ranks_tolerance_and_kinds(manifest: Path, tmp_path: Path) -> None:
    spec = load_manifest(manifest)
    a, b = str(tmp_path / "a.mp4"), str(tmp_path / "b.wav")
    results = {
        # Overlaps [10, 12] only thanks to the 1 s tolerance; rank 2.
        "q1": [{"media_path": b, "start": 0.0, "end": 5.0}, {"media_path": b, "start": 12.5, "end": 14.0}],
        "q2": [{"media_path": a, "start": 3.0, "end": 4.5}],
        "q3": [{"media_path": b, "start": 0.0, "end": 1.0}] * 12 + [{"media_path": a, "start": 0, "end": 1}],
    }
    report = evaluate(spec, results)
    assert report["queries"]["q1"] == {"kind": "spoken", "rank": 2, "start_error_s": 2.5}
    assert report["queries"]["q2"]["rank"] == 1 and report["queries"]["q3"]["rank"] is None
    visual = report["metrics"]["visual"]
    assert (visual["R@1"], visual["R@10"], visual["MRR"]) == (0.5, 0.5, 0.5)
    overall = report["metrics"]["overall"]
    assert overall["queries"] == 3 and overall["MRR"] == pytest.approx((0.5 + 1.0) / 3, abs=1e-4)
    assert report["metrics"]["spoken"]["median_start_error_s"] == 2.5


def test_manifest_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no such manifest"):
        load_manifest(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"media": [{"id": "a", "path": "a.mp4"}], "queries": [{"id": "q", "text": "t", "relevant": [{"media": "zzz"}]}]}')
    with pytest.raises(ValueError, match="unknown media 'zzz'"):
        load_manifest(bad)
    assert metrics([], []) == {"queries": 0}
