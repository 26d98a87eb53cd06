"""Visual vocabulary: depth from library size, hierarchical tokens, determinism, small nodes, save/load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.visual_vocab import VisualVocab, VocabConfig, choose_depth, normalize_features


def two_level_data(seed: int = 0, per: int = 12, dim: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """4 well-separated groups of 4 subgroups each: (features, group, subgroup)."""
    rng = np.random.default_rng(seed)
    tops = rng.normal(size=(4, dim)) * 10
    feats, group, sub = [], [], []
    for g in range(4):
        subs = tops[g] + rng.normal(size=(4, dim)) * 2
        for s in range(4):
            feats.append(subs[s] + rng.normal(size=(per, dim)) * 0.05)
            group += [g] * per
            sub += [g * 4 + s] * per
    return np.concatenate(feats).astype(np.float32), np.array(group), np.array(sub)


def test_choose_depth() -> None:
    assert choose_depth(0) == 1
    assert choose_depth(100) == 1
    assert choose_depth(12**2 * 6 - 1, 12, 4, 6) == 1
    assert choose_depth(12**2 * 6, 12, 4, 6) == 2
    assert choose_depth(12**3 * 6, 12, 4, 6) == 3
    assert choose_depth(10**9, 12, 4, 6) == 4
    assert choose_depth(10**9, 12, 3, 6) == 3
    assert choose_depth(100, 4, 4, 6) == 2  # 16 leaves * 6 <= 100 < 64 * 6
    with pytest.raises(ValueError, match="branching >= 2"):
        choose_depth(10, branching=1)


def test_fit_tokens_follow_the_hierarchy() -> None:
    x, group, sub = two_level_data()
    vocab = VisualVocab.fit(x, VocabConfig(branching=4, max_depth=2, min_clips_per_leaf=1, niter=25))
    assert (vocab.depth, vocab.size) == (2, 16)
    tokens = vocab.assign(x)
    assert tokens.dtype == np.int64 and tokens.shape == (len(x),)
    assert tokens.min() >= 0 and tokens.max() < vocab.size
    # Each true subgroup lands on exactly one token, distinct subgroups on distinct tokens...
    mapping = {s: set(tokens[sub == s].tolist()) for s in range(16)}
    assert all(len(t) == 1 for t in mapping.values())
    assert len({next(iter(t)) for t in mapping.values()}) == 16
    # ...and the first digit of the path (the top-level cluster) is shared by exactly the true groups.
    top = tokens // 4
    for g in range(4):
        assert len(set(top[group == g].tolist())) == 1
    assert len(set(top.tolist())) == 4
    assert vocab.path(int(tokens[0])) == (int(tokens[0]) // 4, int(tokens[0]) % 4)
    assert vocab.counts.sum() == len(x) and vocab.n_used == 16
    # Leaf centroids are the mean directions of their clips.
    xn = normalize_features(x)
    cents = vocab.centroids()
    assert cents.shape == (16, 16) and vocab.centroids(level=1).shape == (4, 16)
    t0 = int(tokens[0])
    np.testing.assert_allclose(cents[t0], xn[tokens == t0].mean(0), atol=1e-3)


def test_depth_is_chosen_from_n_and_scale_does_not_matter() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(100, 8)).astype(np.float32)
    vocab = VisualVocab.fit(x, VocabConfig(branching=4, max_depth=4, min_clips_per_leaf=6))
    assert vocab.depth == 2 and vocab.size == 16
    # L2-normalised inside: a clip's token does not depend on its feature's magnitude.
    np.testing.assert_array_equal(vocab.assign(x * 7.5), vocab.assign(x))
    np.testing.assert_array_equal(vocab.assign(x.astype(np.float16)), vocab.assign(x.astype(np.float16) * 2))


def test_deterministic_for_a_seed() -> None:
    x, _, _ = two_level_data(seed=3, per=20)
    x = x + np.random.default_rng(9).normal(size=x.shape).astype(np.float32) * 3  # overlapping clusters
    cfg = VocabConfig(branching=5, max_depth=3, min_clips_per_leaf=2, seed=7)
    a, b = VisualVocab.fit(x, cfg), VisualVocab.fit(x, cfg)
    np.testing.assert_array_equal(a.assign(x), b.assign(x))
    np.testing.assert_array_equal(a.centroids(), b.centroids())
    np.testing.assert_array_equal(a.counts, b.counts)
    other = VisualVocab.fit(x, VocabConfig(branching=5, max_depth=3, min_clips_per_leaf=2, seed=8))
    assert not np.array_equal(other.centroids(), a.centroids())


def test_small_nodes_get_fewer_children_or_stay_leaves() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(5, 6)).astype(np.float32)
    vocab = VisualVocab.fit(x, VocabConfig(branching=12, max_depth=2, depth=2))
    tokens = vocab.assign(x)
    assert vocab.size == 144
    # 5 points: the root splits into 5 children of one point each; those are leaves, padded with zeros.
    assert len(set(tokens.tolist())) == 5
    assert (tokens % 12 == 0).all() and tokens.max() < 144
    # All points the same: nothing to split, one token for all.
    same = VisualVocab.fit(np.ones((20, 6), np.float32), VocabConfig(branching=4, max_depth=3, depth=3))
    assert set(same.assign(np.ones((3, 6), np.float32)).tolist()) == {0}
    assert same.counts[0] == 20


def test_save_load_round_trip(tmp_path: Path) -> None:
    x, _, _ = two_level_data(seed=4)
    vocab = VisualVocab.fit(x, VocabConfig(branching=3, max_depth=3, min_clips_per_leaf=2, seed=5))
    path = tmp_path / "vocab.npz"
    with path.open("wb") as f:
        vocab.save(f)
    loaded = VisualVocab.load(path)
    assert (loaded.branching, loaded.depth, loaded.dim, loaded.size) == (vocab.branching, vocab.depth, vocab.dim,
                                                                         vocab.size)
    assert loaded.config == vocab.config
    np.testing.assert_array_equal(loaded.assign(x), vocab.assign(x))
    np.testing.assert_array_equal(loaded.centroids(), vocab.centroids())
    np.testing.assert_array_equal(loaded.counts, vocab.counts)
    assert loaded.most_frequent_token == vocab.most_frequent_token
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="not a visual vocabulary"):
        VisualVocab.load(tmp_path / "other.npz")


def test_bad_input() -> None:
    x, _, _ = two_level_data()
    vocab = VisualVocab.fit(x, VocabConfig(branching=4, max_depth=1))
    with pytest.raises(ValueError, match=r"\[N, 16\]"):
        vocab.assign(np.zeros((3, 8), np.float32))
    with pytest.raises(ValueError, match="finite"):
        vocab.assign(np.full((2, 16), np.nan, np.float32))
    with pytest.raises(ValueError, match="shape"):
        VisualVocab.fit(np.zeros((0, 16), np.float32))
    with pytest.raises(ValueError, match="token in"):
        vocab.path(vocab.size)
    with pytest.raises(ValueError, match="branching"):
        VocabConfig(branching=1)
